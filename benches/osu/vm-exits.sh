#!/usr/bin/env bash
# VM exits per message between two VMs, counted by the host's KVM (issue 6), not by the guest.
#
#   bash benches/osu/vm-exits.sh [ROUNDS]        (default 3; needs root and KVM)
#
# For each case (osu_latency at 8 B and 1 KiB, osu_bw at 64 KiB and 1 MiB; 2 VMs x 1 rank,
# `toro-mpirun --accel kvm`) the job runs twice, with few and with many iterations, under
# `perf stat -a` on KVM's tracepoints; the difference divided by the extra messages is what
# one message costs, boot and set-up cancelled out. Messages: latency sends one each way per
# iteration, and a message's halt and interrupt are its receiver's, so "per message" is per
# message at its receiving side (= per VM per round trip); bw sends 64 per iteration one way
# (its 4-byte acknowledgement per window is counted against them; both VMs together).
# `perf stat -a` counts every VM on the host: the script refuses to run beside other QEMUs.
#
# Columns, per message: notify = MMIO + port accesses (virtio notifies, register reads);
# halts = HLT exits (kvm_vcpu_wakeup, polled or blocked); irqs = interrupts the host raised
# (MSI through the back-end's irqfd); to-qemu = exits to QEMU's user space; ring-0 insns =
# guest ring-0 instructions KVM PVM emulated (the halt and interrupt paths). An interrupt
# that finds its vCPU halted ends that halt's exit; one that finds it running is an exit of
# its own, so a message costs max(halts, irqs) exits plus its notifies.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}

command -v perf >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq linux-perf >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
}
[ -d /sys/kernel/tracing/events/kvm ] || mount -t tracefs none /sys/kernel/tracing 2>/dev/null || true
[ -d /sys/kernel/tracing/events/kvm ] || { echo "vm-exits: KVM's tracepoints are not available (root, tracefs, kvm loaded?)" >&2; exit 1; }

# The kernel cuts process names at 15 characters: QEMU's is "qemu-system-x86".
if pgrep -x qemu-system-x86 >/dev/null; then
    echo "vm-exits: other QEMU processes are running; their VM exits would be counted too" >&2
    exit 1
fi

cargo build -q --release -p toro-launcher
mkdir -p target/vm-exits
image=target/vm-exits/toro-osu.elf
cargo run -q -p toro-image --bin toro-build -- toro-osu --bin toro-osu -o "$image"

events=kvm:kvm_mmio,kvm:kvm_pio,kvm:kvm_vcpu_wakeup,kvm:kvm_msi_set_irq,kvm:kvm_userspace_exit,kvm:kvm_emulate_insn

# count BENCH SIZE ITERATIONS -> one line: the six event counts, then the figure printed
count() {
    local out=target/vm-exits/perf.txt
    local figure
    figure=$(perf stat -a -x, -o "$out" -e "$events" \
        timeout 300 target/release/toro-mpirun -np 2 --vms 2 --accel kvm --mem 1G --no-tag-output \
        "$image" "$1" -m "$2:$2" -i "$3" -x 0 | awk -v s="$2" '$1 == s { print $2 }')
    [ -n "$figure" ] || { echo "vm-exits: $1 $2 failed" >&2; exit 1; }
    echo "$(awk -F, '/kvm:/ { printf "%s ", $1 }' "$out")$figure"
}

printf '| case | round | figure | notify | halts | irqs | to-qemu | ring-0 insns |\n|---|---:|---:|---:|---:|---:|---:|---:|\n'
for round in $(seq "$rounds"); do
    # name bench size few many messages-per-iteration unit
    for c in "latency-8B latency 8 200 4200 2 us" "latency-1KiB latency 1024 200 4200 2 us" \
             "bw-64KiB bw 65536 10 210 64 MB/s" "bw-1MiB bw 1048576 10 210 64 MB/s"; do
        set -- $c
        few=$(count "$2" "$3" "$4")
        many=$(count "$2" "$3" "$5")
        echo "$few $many" | awk -v name="$1" -v round="$round" -v msgs=$(( ($5 - $4) * $6 )) -v unit="$7" '{
            # boot varies by a few events between jobs: a small negative difference is 0
            for (i = 1; i <= 6; i++) { d[i] = ($(i + 7) - $i) / msgs; if (d[i] < 0) d[i] = 0 }
            printf "| %s | %d | %s %s | %.3f | %.3f | %.3f | %.3f | %.1f |\n",
                name, round, $14, unit, d[1] + d[2], d[3], d[4], d[5], d[6]
        }'
    done
done
