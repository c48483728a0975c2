#!/usr/bin/env bash
# One connection right after a burst (bench/burst.py): a pool the
# autoscaler scaled up beside one it did not, side by side. Writes a
# section of BENCHMARKS.md.
# Usage: bench/burst.sh [--rounds N]
. "$(dirname "$0")/lib.sh"
need wrk wrk
built iris-rust
.venv/bin/python bench/burst.py --write --module target/compare/iris-rust.wasm "$@"
