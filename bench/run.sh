#!/bin/bash
# The stasis benchmark, in one command (as root, after `cargo build --release`):
#
#   bench/run.sh [--runs N] [--big] [--perf DIR] [--json FILE] ...   (bench/run.sh --help)
#   CRIU=/path/to/criu bench/run.sh                                  (adds CRIU side by side)
#
# Installs gcc and python3 from the distribution when they are missing, then
# runs bench/bench.py against target/release/stasis (or $STASIS).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

if [ "$(id -u)" != 0 ]; then
	echo "bench: must run as root" >&2
	exit 1
fi
missing=()
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
command -v python3 >/dev/null || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
	echo "bench: installing ${missing[*]}" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
stasis=${STASIS:-$root/target/release/stasis}
if [ ! -x "$stasis" ]; then
	echo "bench: $stasis not found: run \`cargo build --release\` first (or set STASIS)" >&2
	exit 1
fi
exec python3 "$here/bench.py" --stasis "$stasis" "$@"
