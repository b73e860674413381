#!/usr/bin/env bash
# Sets up what is missing, then runs every test: host unit tests and the
# VM tests that boot real QEMU (TCG always; KVM too where /dev/kvm works).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Guest code is built into images by the tests, never as host code: the
# kernel and every app (a binary linking the ring-3 runtime) are left out.
# A guest library (the `toro` glue) has host tests that boot VMs; it is
# tested in a cargo run of its own, because in a workspace-wide run cargo
# unifies features with host crates (clap turns on `std` in crates the
# runtime shares) and a no_std runtime cannot link std.
mapfile -t plan < <(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
guest = {"toro-rt", "toro"}
ex, libs = [], []
for p in json.load(sys.stdin)["packages"]:
    uses_rt = bool(guest & {d["name"] for d in p["dependencies"]})
    has_lib = any("lib" in t["kind"] for t in p["targets"])
    if p["name"] == "toro-kernel" or uses_rt:
        ex += ["--exclude", p["name"]]
    if uses_rt and has_lib:
        libs.append(p["name"])
print(" ".join(ex))
print(" ".join(libs))')
excludes=${plan[0]}
guest_libs=${plan[1]:-}
# Every VM test has its own timeout; this bounds the whole run as well.
# shellcheck disable=SC2086
timeout 1500 cargo test --workspace $excludes "$@"
# The VM-side network driver is behind a feature no host crate turns on: its host
# tests (the PCI probe on a simulated configuration space) need their own run.
timeout 600 cargo test -p inter-net --features virtio --lib "$@"
for lib in $guest_libs; do
    timeout 1200 cargo test -p "$lib" --tests "$@"
done
