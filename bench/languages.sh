#!/usr/bin/env bash
# The iris module in Rust, C, JavaScript, Python and through wasi-nn, side
# by side in one run (see bench/languages.py): size, build time, compile,
# instance creation, run() without HTTP, HTTP req/s. Installs what is
# missing (scripts/tools.sh, wrk); writes a section of BENCHMARKS.md.
# Usage: bench/languages.sh [SECONDS_PER_HTTP_RUN]   (default 5; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
scripts/tools.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release -p wasmscore-cli
.venv/bin/python bench/languages.py --seconds "$seconds" --write
