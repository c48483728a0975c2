#!/usr/bin/env bash
# Transparent dynamic batching (bench/batching.py): off, on with delay 0
# and with a small delay, side by side in one run, on the MLP that
# bench/batch_models.py makes. Writes a section of BENCHMARKS.md.
# Usage: bench/batching.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release -p wasmscore-cli
mkdir -p target/compare
target/release/wasmscore build examples/rows-rust -o target/compare/rows-rust.wasm >/dev/null
target/release/wasmscore build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
.venv/bin/python bench/batch_models.py target/compare/batch-models >/dev/null
.venv/bin/python bench/batching.py --write --module target/compare/rows-rust.wasm --model target/compare/batch-models/mlp/model.onnx --iris-module target/compare/iris-rust.wasm "$@"
