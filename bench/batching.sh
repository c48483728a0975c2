#!/usr/bin/env bash
# Transparent dynamic batching (bench/batching.py): off, on with delay 0
# and with a small delay, side by side in one run, on the MLP that
# bench/batch_models.py makes. Writes a section of BENCHMARKS.md.
# Usage: bench/batching.sh
. "$(dirname "$0")/lib.sh"
need wrk wrk
built rows-rust iris-rust
.venv/bin/python bench/batch_models.py target/compare/batch-models >/dev/null
.venv/bin/python bench/batching.py --write --module target/compare/rows-rust.wasm --model target/compare/batch-models/mlp/model.onnx --iris-module target/compare/iris-rust.wasm "$@"
