#!/usr/bin/env bash
# Sets up what is missing, then runs every test: host unit tests and the
# VM tests that boot real QEMU (TCG always; KVM too where /dev/kvm works).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Guest-only binaries are built into images by the tests, never as host
# code: the kernel and every app (a binary linking the ring-3 runtime).
# Guest libraries (the `toro` glue) stay: their lib has `test = false`, and
# their tests/ boot VMs from the host.
excludes=$(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
guest = {"toro-rt", "toro"}
for p in json.load(sys.stdin)["packages"]:
    has_lib = any("lib" in t["kind"] for t in p["targets"])
    if p["name"] == "toro-kernel" or (not has_lib and guest & {d["name"] for d in p["dependencies"]}):
        print("--exclude", p["name"])')
# Every VM test has its own timeout; this bounds the whole run as well.
# shellcheck disable=SC2086
timeout 1800 cargo test --workspace $excludes "$@"
