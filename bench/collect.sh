#!/usr/bin/env bash
# The cost of model data collection (bench/collect.py): off, 10%, 100% and
# a full queue, side by side in one run. Writes a section of BENCHMARKS.md.
# Usage: bench/collect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release -p wasmscore-cli
mkdir -p target/compare
target/release/wasmscore build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
.venv/bin/python bench/collect.py --write --module target/compare/iris-rust.wasm "$@"
