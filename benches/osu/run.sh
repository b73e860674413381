#!/usr/bin/env bash
# The OSU micro-benchmarks on Toro MPI side by side with Open MPI and MPICH.
#
#   bash benches/osu/run.sh [--quick] [--out DIR] [--only BENCH,...]
#
# Builds the Toro image (benches/osu, one image, benchmark name as argument),
# the same source natively with rsmpi against Debian's Open MPI and MPICH
# (benches/osu/host), then runs every benchmark, interleaved (benchmark-major,
# so load changes hit every system alike), on:
#   Toro:    np=2 and np=4 in one VM, 2 VMs x 1 rank, 8 ranks on 2 host cores;
#   Open MPI and MPICH: np=2 and np=4 over shared memory and over TCP loopback,
#            np=8 oversubscribed (shared memory).
# Point-to-point benchmarks run at np=2 only (as in OMB). The host is small and
# shared, so the whole np=2 set is run OSU_REPS (3) times, rounds interleaved,
# and the report takes the median of each size. Iterations (every system
# alike): osu_latency -i 1000 -x 100; osu_bw/osu_bibw OMB's defaults (100/20
# iterations, window 64); collectives -i 100 -x 10 at np=2, and at np=4/8 once,
# -i 50 -x 5, each benchmark stopped after OSU_TIMEOUT_NP4 (20 s) keeping the
# sizes it finished: 4 and 8 ranks on 2 cores are oversubscribed, and MPICH's
# spinning ranks then take tens of ms per call. Toro across 2 VMs is stopped after
# OSU_TIMEOUT_2VM (60 s) per benchmark likewise (its bandwidth is tens of MB/s).
# --quick: sizes up to 64 KiB, -i 100 -x 10, one round. --report-only: no
# runs, rebuild runs.tsv and the report from DIR/raw (e.g. after an interrupted run).
# OSU_RUNS=REGEX keeps only the runs whose id matches (e.g. 'toro|shm-np2').
# Writes DIR/raw/<run>/<bench>.txt, DIR/runs.tsv, DIR/machine.md, then
# DIR/REPORT.md and DIR/osu_<bench>.png (osu-report). DIR defaults to
# benches/osu/results. A run that fails keeps its reason in runs.tsv (e.g. the
# 2-VM rows before the inter-VM transport is in the image).
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

quick=0
report_only=0
out="$repo/benches/osu/results"
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; OSU_REPS=1 ;;
        --report-only) report_only=1 ;;
        --out) out="$2"; shift ;;
        --only) only="$2"; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | grep '^#'; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$report_only" = 1 ] && ! [ -d "$out/raw" ]; then
    echo "run.sh: --report-only: no results to report in $out/raw (run without --report-only first)" >&2
    exit 2
fi
out="$(mkdir -p "$out" && cd "$out" && pwd)"

benches="latency bw bibw barrier bcast reduce allreduce gather scatter allgather alltoall"
[ -n "$only" ] && benches="${only//,/ }"
timeout_np2=${OSU_TIMEOUT:-600}
timeout_np4=${OSU_TIMEOUT_NP4:-20}
# Across VMs Toro moves tens of MB/s (issue 6): osu_latency alone would take over 10 minutes.
timeout_2vm=${OSU_TIMEOUT_2VM:-60}
reps=${OSU_REPS:-3}
runs_re=${OSU_RUNS:-.}
accel=${TORO_ACCEL:-auto}
T="${CARGO_TARGET_DIR:-$repo/target}"

need() { command -v "$1" >/dev/null 2>&1; }
image="$repo/target/toro/toro-osu.elf"
mpirun_toro="$T/release/toro-mpirun"
osu_ompi="$T/ompi/release/osu"
osu_mpich="$T/mpich/release/osu"
report="$T/ompi/release/osu-report"
# The host moves this VM's two vCPUs between near cores (a cache line crosses in ~20 ns)
# and far ones (~190 ns), minutes apart: before each np=2 run the line's one-way time is
# recorded (raw/<run>/<bench>.<round>.line), and the report shows which runs saw which.
line_probe="$T/release/examples/pingpong"
if [ "$report_only" = 1 ]; then
    (cd benches/osu/host && CARGO_TARGET_DIR="$T/ompi" cargo build -q --release -p osu-report) || exit 1
else
if ! need mpirun.openmpi || ! need mpirun.mpich || ! need mpicc.mpich || ! [ -e /usr/lib/llvm-14/lib/libclang.so ] && ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
    echo "run.sh: installing Open MPI, MPICH and libclang (Debian packages)" >&2
    apt-get install -y openmpi-bin libopenmpi-dev mpich libmpich-dev libclang-dev clang >/dev/null || exit 2
fi

echo "== build" >&2
cargo run -q -p toro-image --bin toro-build -- toro-osu --bin toro-osu -o "$image" || exit 1
CARGO_TARGET_DIR="$T" cargo build -q --release -p toro-launcher --bin toro-mpirun || exit 1
CARGO_TARGET_DIR="$T" cargo build -q --release -p intra-vbus --example pingpong || exit 1
(cd benches/osu/host &&
    MPICC=mpicc.openmpi CARGO_TARGET_DIR="$T/ompi" cargo build -q --release -p osu-rsmpi &&
    MPICC=mpicc.mpich CARGO_TARGET_DIR="$T/mpich" cargo build -q --release -p osu-rsmpi &&
    CARGO_TARGET_DIR="$T/ompi" cargo build -q --release -p osu-report) || exit 1
fi

root_flag=""
[ "$(id -u)" = 0 ] && root_flag="--allow-run-as-root"
ompi() { # np btl
    echo "mpirun.openmpi $root_flag --oversubscribe -np $1 --mca pml ob1 --mca btl self,$2 $( [ "$2" = tcp ] && echo --mca btl_tcp_if_include lo ) $osu_ompi"
}
mpich_tcp="env MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp,self UCX_NET_DEVICES=lo"
toro() { # np [more launcher options]
    local np=$1; shift
    echo "$mpirun_toro -np $np $* --accel $accel --mem 1G --no-tag-output $image"
}

# id | label | np | kind | command
runs=(
    "toro-np2|Toro np=2 (1 VM)|2|toro|$(toro 2)"
    "toro-2vm|Toro 2 VMs×1|2|toro|$(toro 2 --vms 2)"
    "ompi-shm-np2|Open MPI shm|2|ompi|$(ompi 2 vader)"
    "ompi-tcp-np2|Open MPI tcp|2|ompi|$(ompi 2 tcp)"
    "mpich-shm-np2|MPICH shm|2|mpich|mpirun.mpich -np 2 $osu_mpich"
    "mpich-tcp-np2|MPICH tcp|2|mpich|$mpich_tcp mpirun.mpich -np 2 $osu_mpich"
    "toro-np4|Toro np=4 (1 VM)|4|toro|$(toro 4)"
    "ompi-shm-np4|Open MPI shm|4|ompi|$(ompi 4 vader)"
    "ompi-tcp-np4|Open MPI tcp|4|ompi|$(ompi 4 tcp)"
    "mpich-shm-np4|MPICH shm|4|mpich|mpirun.mpich -np 4 $osu_mpich"
    "mpich-tcp-np4|MPICH tcp|4|mpich|$mpich_tcp mpirun.mpich -np 4 $osu_mpich"
    "toro-np8|Toro np=8 (1 VM, 2 vCPUs)|8|toro|$(toro 8)"
    "ompi-np8|Open MPI shm, oversubscribed|8|ompi|$(ompi 8 vader)"
    "mpich-np8|MPICH shm, oversubscribed|8|mpich|mpirun.mpich -np 8 $osu_mpich"
)

if [ "$report_only" = 0 ]; then
rm -rf "$out/raw"
mkdir -p "$out/raw"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
for rep in $(seq 1 "$reps"); do
for bench in $benches; do
    for entry in "${runs[@]}"; do
        IFS='|' read -r id label np kind cmd <<<"$entry"
        case "$bench" in latency|bw|bibw) [ "$np" = 2 ] || continue ;; esac
        [[ "$id" =~ $runs_re ]] || continue
        [ "$np" = 2 ] || [ "$rep" = 1 ] || continue
        timeout_s=$timeout_np2
        [ "$np" = 2 ] || timeout_s=$timeout_np4
        [ "$id" = toro-2vm ] && timeout_s=$timeout_2vm
        if [ "$quick" = 1 ]; then
            args="-m 65536 -i 100 -x 10"
        else
            case "$bench:$np" in
                latency:*) args="-i 1000 -x 100" ;;
                bw:*|bibw:*) args="" ;;
                *:2) args="-i 100 -x 10" ;;
                *) args="-i 50 -x 5" ;;
            esac
        fi
        dir="$out/raw/$id"
        mkdir -p "$dir"
        base="$dir/$bench.$rep"
        if [ "$np" = 2 ]; then
            timeout 60 "$line_probe" --line | sed -n 's/^cache-line ping-pong one-way: \([0-9.]*\) ns.*/\1/p' >"$base.line"
        fi
        t0=$(date +%s.%N)
        # shellcheck disable=SC2086
        timeout -k 5 "$timeout_s" $cmd $bench $args >"$base.out" 2>"$base.err" </dev/null
        status=$?
        t1=$(date +%s.%N)
        # Rank 0's OSU lines only (the launcher's and the guest's system lines are not OSU output).
        grep -E '^(#|[0-9]+ +[0-9.]+$| +[0-9.]+$)' "$base.out" >"$base.txt"
        printf '%s\t%s\t%s\t%s\t%.1f\n' "$rep" "$bench" "$id" "$status" "$(echo "$t1 - $t0" | bc)" | tee -a "$out/raw/log.tsv" >&2
        if [ "$status" != 0 ]; then
            reason=$(grep -h -E 'toro-mpirun:|MPI error|rror' "$base.err" "$base.out" | tail -1)
            [ "$status" = 124 ] && reason="stopped after ${timeout_s} s (sizes finished by then are kept)"
            echo "$reason" >"$base.fail"
        fi
    done
done
done
end=$(date +%s)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
fi

: >"$out/runs.tsv"
for entry in "${runs[@]}"; do
    IFS='|' read -r id label np kind cmd <<<"$entry"
    note=""
    [ -d "$out/raw/$id" ] || continue
    failed=$(ls "$out/raw/$id"/*.fail 2>/dev/null | wc -l)
    if [ "$failed" -gt 0 ]; then
        first=$(ls "$out/raw/$id"/*.fail | head -1)
        reason=$(head -c 200 "$first" | tr '\t\n|' '   ')
        note="$failed run(s) not completed — $(basename "$first" .fail): $reason"
        case "$reason" in *"no inter-VM transport"*) note="not yet (inter-VM transport not in the image): $reason" ;; esac
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$label" "$np" "$kind" "$note" >>"$out/runs.tsv"
done

[ "$report_only" = 1 ] || {
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
         "$(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r); /dev/kvm: KVM PVM (nested in a cloud VM); shared with other engineers' builds."
    echo
    echo "Software: $(qemu-system-x86_64 --version | head -1); Open MPI $(mpirun.openmpi --version 2>/dev/null | head -1 | awk '{print $NF}');" \
         "MPICH $(mpichversion 2>/dev/null | awk -F'\t' '/Version/{print $2}' | tr -d ' ') (ch4:ucx); $(rustc --version); rsmpi (mpi crate) 0.8; commit $(git rev-parse --short HEAD)."
    echo
    echo "Command: \`bash benches/osu/run.sh$( [ "$quick" = 1 ] && echo ' --quick')\`, started $(date -u -d "@$start" '+%Y-%m-%d %H:%M UTC'), $((end - start)) s;" \
         "Toro accelerator: $accel; load average (1/5/15 min) $load_before before, $load_after after."
    echo
    echo "Iterations: $( [ "$quick" = 1 ] && echo 'quick mode, sizes up to 64 KiB, -i 100 -x 10 everywhere' || echo "point-to-point with OMB's defaults (latency 10000/1000 iterations for small/large messages, bandwidth 100/20 with a window of 64); collectives -i 200 -x 20 at np=2, -i 50 -x 5 at np=4/8, each benchmark stopped after ${timeout_np4} s there (the sizes it finished are kept)")." \
         "np=2: median per size of ${reps} rounds; np=4/8: one round. Benchmark-major order, so that every system sees the same load."
} >"$out/machine.md"

"$report" "$out"
echo "run.sh: report in $out/REPORT.md" >&2
