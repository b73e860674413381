#!/usr/bin/env bash
# Sets up what is missing, builds the demo images and runs them: an MPI
# program (pi by integration, allreduce) with 4 ranks in one VM, the same
# program across a group of 2 VMs (ranks in one VM over virtio-bus, between
# VMs over TCP on virtio-net), and a token ring across the 2 VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -q --release -p toro-launcher -p toro-image
build() { target/release/toro-build "$1" -o "target/toro/$1.elf"; }
pi=$(build pi)
ring=$(build ring)
echo "demo: MPI, 4 ranks in one VM: toro-mpirun -np 4 $pi"
target/release/toro-mpirun -np 4 "$pi"
echo "demo: MPI, 4 ranks across 2 VMs: toro-mpirun -np 4 --vms 2 $pi"
target/release/toro-mpirun -np 4 --vms 2 "$pi"
echo "demo: a token ring across 2 VMs: toro-mpirun -np 4 --vms 2 $ring"
exec target/release/toro-mpirun -np 4 --vms 2 "$ring"
