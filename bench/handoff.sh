#!/usr/bin/env bash
# The hand-off to the instance (bench/handoff.py): spinning on and off
# beside nginx, and resident memory, side by side in one run. Writes a
# section of BENCHMARKS.md.
# Usage: bench/handoff.sh
. "$(dirname "$0")/lib.sh"
need nginx nginx-light
need wrk wrk
built iris-rust
.venv/bin/python bench/handoff.py --write --module target/compare/iris-rust.wasm "$@"
