#!/usr/bin/env bash
# HTTP/2 streams on their connection's task vs a task per stream
# (bench/h2.py), side by side in one run. Writes a section of BENCHMARKS.md.
# Usage: bench/h2.sh [REQUESTS_PER_CASE]
. "$(dirname "$0")/lib.sh"
need h2load nghttp2-client
built iris-rust
.venv/bin/python bench/h2.py --write --module target/compare/iris-rust.wasm --requests "${1:-40000}"
