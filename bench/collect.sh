#!/usr/bin/env bash
# The cost of model data collection (bench/collect.py): off, 10%, 100% and
# a full queue, side by side in one run. Writes a section of BENCHMARKS.md.
# Usage: bench/collect.sh
. "$(dirname "$0")/lib.sh"
need wrk wrk
built iris-rust
.venv/bin/python bench/collect.py --write --module target/compare/iris-rust.wasm "$@"
