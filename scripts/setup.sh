#!/usr/bin/env bash
# Installs what Toro MPI needs and is missing: Debian's QEMU (7.2 or later: jobs of
# several VMs use its `dgram` netdev), the pinned Rust toolchain and its bare-metal
# target. Never asks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need_apt[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y -qq "${need_apt[@]}" >/dev/null
    }
fi

# rust-toolchain.toml pins the toolchain; make sure it and the kernel's target exist.
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal
rustup target list --toolchain "$toolchain" --installed | grep -q '^x86_64-unknown-none$' \
    || rustup target add --toolchain "$toolchain" x86_64-unknown-none
