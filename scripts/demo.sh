#!/usr/bin/env bash
# Sets up what is missing, builds the demo images and runs them: an MPI
# program (pi by integration, allreduce) with 4 ranks in one VM, then an
# app across a group of 2 VMs. MPI across VMs follows with the inter-VM
# transport (transport/inter-net).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -q --release -p toro-launcher -p toro-image
build() { target/release/toro-build "$1" -o "target/toro/$1.elf"; }
pi=$(build pi)
hello=$(build hello)
echo "demo: MPI, 4 ranks in one VM: toro-mpirun -np 4 $pi"
target/release/toro-mpirun -np 4 "$pi"
echo "demo: 4 ranks across 2 VMs: toro-mpirun -np 4 --vms 2 $hello"
exec target/release/toro-mpirun -np 4 --vms 2 "$hello"
