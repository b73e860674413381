#!/usr/bin/env bash
# Sets up what is missing, builds the demo image and runs it across VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -q --release -p toro-launcher -p toro-image
image=$(target/release/toro-build hello -o target/toro/hello.elf)
echo "demo: $image across 2 VMs, 4 ranks"
exec target/release/toro-mpirun -np 4 --vms 2 "$image"
