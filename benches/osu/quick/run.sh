#!/bin/bash
# Quick intra-VM comparison: Toro MPI (2 ranks on 2 vCPUs of one VM) against the host's
# Open MPI (and MPICH if present), np=2, in interleaved rounds so every system sees the
# same minutes of a shared host. Prints one table: for each figure the median over rounds
# of each system and the ratio Toro / baseline (below 1: Toro faster; for bandwidth, above 1).
#
#   bash benches/osu/quick/run.sh [ROUNDS] [ITERATIONS]      (default 5 rounds, 10000 iterations)
#   TORO_ACCEL=tcg bash benches/osu/quick/run.sh             (without KVM)
#   TORO_BASE_IMAGE=old-osu.elf bash benches/osu/quick/run.sh (also an older build of the same
#                                                              osu image, as column "base")
set -euo pipefail
cd "$(dirname "$0")/../../.."
rounds=${1:-5}
iterations=${2:-10000}
accel=${TORO_ACCEL:-kvm}
out=target/osu-quick
mkdir -p "$out"
rm -f "$out"/*.txt

cargo run -q -p toro-image --bin toro-build -- mpi-suite --bin osu -o "$out/osu.elf"
if [ "$accel" = kvm ]; then cpu=(-accel kvm -cpu host,-arch-capabilities); else cpu=(-accel tcg -cpu max); fi
toro() {
    timeout 600 qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off "${cpu[@]}" -smp 2 -m 512M \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
        -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$1" \
        -append "cpus=2 world=2 ranks=0-1 vm=0 vms=1 place=0-1@2 -- $iterations" | tr -d '\r' | grep -a '^\[rank 0\] osu: ' || true
}
systems=(toro)
if [ -n "${TORO_BASE_IMAGE:-}" ]; then
    cp "$TORO_BASE_IMAGE" "$out/base.elf"
    systems+=(base)
fi
if command -v mpicc.openmpi >/dev/null; then
    mpicc.openmpi -O2 -Wno-stringop-overflow -o "$out/osu-openmpi" benches/osu/quick/osu.c
    systems+=(openmpi)
fi
if command -v mpicc.mpich >/dev/null; then
    mpicc.mpich -O2 -Wno-stringop-overflow -o "$out/osu-mpich" benches/osu/quick/osu.c
    systems+=(mpich)
fi
cargo build -q -p intra-vbus --release --example pingpong
for round in $(seq "$rounds"); do
    # issue 3's yardstick: two host threads passing one cache line, one-way
    target/release/examples/pingpong | sed -n 's/^cache-line ping-pong one-way: \([0-9.]*\) ns.*/\1/p' >> "$out/cacheline.txt"
    for s in "${systems[@]}"; do
        case $s in
            toro) toro "$out/osu.elf" ;;
            base) toro "$out/base.elf" ;;
            openmpi) timeout 600 mpirun.openmpi --allow-run-as-root --oversubscribe -np 2 "$out/osu-openmpi" "$iterations" ;;
            mpich) timeout 600 mpirun.mpich -np 2 "$out/osu-mpich" "$iterations" ;;
        esac | sed 's/^\[rank 0\] //' | grep '^osu: ' | grep -v 'osu: done' >> "$out/$s.txt" || true
    done
    echo "round $round of $rounds done" >&2
done

# One value per line and figure: "<figure> <value>"; the best-batch value where there is one.
figures() {
    awk '{
        line = $0; sub(/^osu: /, "", line)
        if (line ~ /best batch/) { match(line, /best batch [0-9.]+/); v = substr(line, RSTART + 11, RLENGTH - 11); sub(/ [0-9.]+ us \(best batch.*/, "", line); print line " (best batch, us)|" v }
        else if (line ~ /GB\/s/) { n = split(line, w, " "); v = w[n - 1]; sub(/ [0-9.]+ GB\/s$/, "", line); print line " (GB/s)|" v }
    }' "$1"
}
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

echo
echo "host cache-line ping-pong, one-way: $(median < "$out/cacheline.txt") ns (median of $rounds)"
echo "Toro ($accel, 1 VM, 2 vCPUs) against ${systems[*]:1} np=2 on the host; medians of $rounds interleaved rounds, $iterations iterations"
printf '| %-40s |' figure; for s in "${systems[@]}"; do printf ' %10s |' "$s"; done
for s in "${systems[@]:1}"; do printf ' toro / %s |' "$s"; done; echo
printf '|---|'; for _ in "${systems[@]}" "${systems[@]:1}"; do printf -- '---:|'; done; echo
figures "$out/toro.txt" | cut -d'|' -f1 | awk '!seen[$0]++' | while read -r figure; do
    printf '| %-40s |' "$figure"
    declare -A m=()
    for s in "${systems[@]}"; do
        m[$s]=$(figures "$out/$s.txt" | awk -F'|' -v f="$figure" '$1 == f { print $2 }' | median)
        printf ' %10s |' "${m[$s]:--}"
    done
    for s in "${systems[@]:1}"; do
        if [ -n "${m[toro]}" ] && [ -n "${m[$s]}" ]; then
            awk -v a="${m[toro]}" -v b="${m[$s]}" 'BEGIN { if (b > 0) printf " %.2f |", a / b; else printf " - |" }'
        else printf ' - |'; fi
    done
    echo
done
