#!/usr/bin/env bash
# The README's demo command: installs the build tools librdkafka needs, builds sluice,
# links the binary into cargo's bin directory as `sluice` (for the README's follow-up
# commands) and runs `sluice demo` (embedded Kafka broker, synthetic bank data, Delta
# tables in ./lake, a SQL query at the end). Extra arguments go to `sluice demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
cargo build --locked --quiet --bin sluice
built="$(cd "$CARGO_TARGET_DIR" && pwd)/debug/sluice"

# `sluice` from anywhere: a link to this build in cargo's bin directory (on the PATH of a
# rustup installation), so that a rebuild by these scripts updates it. A sluice installed
# there otherwise (`cargo install`) is left alone.
bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"
link="$bin_dir/sluice"
mkdir -p "$bin_dir"
if [ -L "$link" ] || [ ! -e "$link" ]; then
  ln -sfn "$built" "$link"
fi

"$built" demo "$@"

# The one line to type, if `sluice` is not this build yet; on stderr, so that what the
# demo prints (`--print-config`, `--format json`) stays whole on stdout.
{
  echo
  found="$(command -v sluice || true)"
  if [ ! "$link" -ef "$built" ]; then
    echo "$link is another sluice, left as it is. To use this build as sluice in this shell:"
    echo "  alias sluice='$built'"
  elif [ -n "$found" ] && [ "$found" -ef "$built" ]; then
    echo "sluice is on your PATH ($link -> $built); the README's next commands run from $(pwd)."
  else
    if [ -n "$found" ]; then
      echo "Another sluice comes first on your PATH: $found."
    else
      echo "$bin_dir is not on your PATH."
    fi
    echo "To use this build as sluice in this shell:"
    echo "  export PATH=\"$bin_dir:\$PATH\""
  fi
} >&2
