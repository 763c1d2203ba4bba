#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test
# (unit, property and the integration tests that drive the real binary against the
# in-process mock cluster and a real tansu broker), plus fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
export SLUICE_TEST_PYTHON="${SLUICE_CACHE:-$HOME/.cache}/sluice-venv/bin/python"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary), counting the
# tests that passed without running for want of a tool (they print `SKIPPED: <test>, for
# want of …`; a part of a test skipped prints `SKIPPED: <part> in <test>, …`).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /SKIPPED: [^ ]+, for want of / { s++ }
     END { printf "tests: %d passed (%d of them skipped for a missing tool), %d failed\n", p, s, f }' "$log"
exit "$status"
