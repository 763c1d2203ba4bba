#!/usr/bin/env bash
# The README's demo command: installs the build tools librdkafka needs, builds sluice and
# runs `sluice demo` (embedded Kafka broker, synthetic bank data, Delta tables in ./lake,
# a SQL query at the end). Extra arguments go to `sluice demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
exec cargo run --locked --quiet --bin sluice -- demo "$@"
