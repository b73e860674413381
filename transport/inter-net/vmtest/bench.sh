#!/bin/bash
# inter-net between 2 VMs (1 rank each, the vmtest app's `bench`) against Open MPI over TCP
# loopback on the host (benches/osu/quick/osu.c, `--mca btl self,tcp`), in interleaved rounds
# so every system sees the same minutes of a shared host. Prints, per figure, the median
# over rounds (and the range) of each system, and the load average before and after.
#
#   bash transport/inter-net/vmtest/bench.sh [ROUNDS] [ITERS]     (default 3 rounds, 200 iterations)
#   BASE_MPIRUN=old/toro-mpirun BASE_IMAGE=old/ip.elf bash ...     (also an older build, column "base")
#   NET_MTU=1500 bash ...                                          (also the current build at this MTU)
#   HALT=1 bash ...                    (waiting ranks block on the network as MPI ranks do: `bench halt`)
#   NO_TCG=1 bash ...                  (KVM columns only)
set -euo pipefail
cd "$(dirname "$0")/../../.."
rounds=${1:-3}
iters=${2:-200}
out=target/inter-net-bench
mkdir -p "$out"
rm -f "$out"/*.txt

cargo build -q --release -p toro-launcher
cargo run -q -p toro-image --bin toro-build -- inter-net-vmtest --bin internet-pingpong -o "$out/ip.elf"
mpicc.openmpi -O2 -Wno-stringop-overflow -o "$out/osu-openmpi" benches/osu/quick/osu.c

# One VM job; keeps rank 0's lines (sender) and rank 1's exit counts (receiver).
toro() { # MPIRUN IMAGE ACCEL [ENV...]
    local mpirun=$1 image=$2 accel=$3
    shift 3
    local env=()
    for e in "$@"; do env+=(-x "$e"); done
    timeout 600 "$mpirun" -np 2 --vms 2 --accel "$accel" -x NET_PEER_TIMEOUT_MS=30000 "${env[@]}" \
        "$image" bench "iters=$iters" ${HALT:+halt} 2>&1 | grep -E '^\[rank [01]\] bench ' || echo "failed" >&2
}
accels=(kvm tcg)
[ -n "${NO_TCG:-}" ] && accels=(kvm)
systems=("${accels[@]}")
[ -n "${BASE_MPIRUN:-}" ] && systems+=("${accels[@]/#/base-}")
[ -n "${NET_MTU:-}" ] && systems+=("${accels[@]/#/mtu-}")
systems+=(openmpi)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/load.txt"
for round in $(seq "$rounds"); do
    for s in "${systems[@]}"; do
        case $s in
            kvm|tcg) toro target/release/toro-mpirun "$out/ip.elf" "$s" ;;
            base-*) toro "$BASE_MPIRUN" "$BASE_IMAGE" "${s#base-}" ;;
            mtu-*) toro target/release/toro-mpirun "$out/ip.elf" "${s#mtu-}" "NET_MTU=$NET_MTU" ;;
            openmpi) timeout 600 mpirun.openmpi --allow-run-as-root --oversubscribe --mca btl self,tcp -np 2 \
                         "$out/osu-openmpi" 2000 | grep -E '^osu: (latency|bandwidth)' ;;
        esac >> "$out/$s.txt"
    done
    echo "round $round of $rounds done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/load.txt"

# "<figure>|<value>" lines, then the median (min–max) per figure.
figures() {
    awk '
    /^\[rank 0\] bench latency/ { n = $5; v = $7; print "latency " n " B (us)|" v; x = $10; print "exits/msg latency " n " B|" x }
    /^\[rank 0\] bench bandwidth/ { n = $5; v = $7; print "bandwidth " n " B (MB/s)|" v; x = $9; print "exits/msg sender " n " B|" x }
    /^\[rank 1\] bench bandwidth/ { n = $5; x = $9; print "exits/msg receiver " n " B|" x }
    /^osu: latency/ { print "latency " $3 " B (us)|" $5 }
    /^osu: bandwidth/ { n = $3 * 1024; print "bandwidth " n " B (MB/s)|" $5 * 1000 }
    ' "$1" | tr -d ':,'
}
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.4g (%.4g–%.4g)", m, v[1], v[NR] }'
}
for s in "${systems[@]}"; do figures "$out/$s.txt" > "$out/$s.fig"; done
names=$(cat "$out"/*.fig | cut -d'|' -f1 | sort -u)
printf '| figure |'; for s in "${systems[@]}"; do printf ' %s |' "$s"; done; echo
printf '|---|'; for s in "${systems[@]}"; do printf -- '---:|'; done; echo
while IFS= read -r name; do
    printf '| %s |' "$name"
    for s in "${systems[@]}"; do
        printf ' %s |' "$(grep -F "$name|" "$out/$s.fig" | cut -d'|' -f2 | median)"
    done
    echo
done <<< "$names"
