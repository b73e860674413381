#!/usr/bin/env bash
# Sets up what is missing, then runs every test: host unit tests and the
# VM tests that boot real QEMU (TCG always; KVM too where /dev/kvm works).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Every VM test has its own timeout; this bounds the whole run as well.
timeout 1800 cargo test --workspace --exclude hello --exclude toro-selftest --exclude toro-kernel "$@"
