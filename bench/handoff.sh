#!/usr/bin/env bash
# The hand-off to the instance (bench/handoff.py): spinning on and off
# beside nginx, and resident memory, side by side in one run. Writes a
# section of BENCHMARKS.md.
# Usage: bench/handoff.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release -p wasmscore-cli
mkdir -p target/compare
target/release/wasmscore build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
.venv/bin/python bench/handoff.py --write --module target/compare/iris-rust.wasm "$@"
