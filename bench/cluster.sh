#!/usr/bin/env bash
# wasmscore on a cluster in a box (see bench/cluster.py): Endpoint applied ->
# first request scored (Rust and Python iris, compile cache cold and warm),
# reconcile time per change, the autoscaler's reaction to a load step.
# Installs what is missing (scripts/tools.sh); writes a section of BENCHMARKS.md.
# Usage: bench/cluster.sh   (about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
cargo build --release -p wasmscore-cli
bin=target/release/wasmscore
mkdir -p target/compare
$bin build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
$bin build examples/iris-python/score.py -o target/compare/iris-python.wasm >/dev/null
.venv/bin/python bench/cluster.py --write \
  --rust target/compare/iris-rust.wasm --python target/compare/iris-python.wasm
