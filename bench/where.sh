#!/usr/bin/env bash
# Where one `up`'s CPU goes per request, by thread and crate (bench/where.py):
# /score over HTTP/1.1 and h2c, and OIP gRPC, at 16 connections, side by
# side in one run. Writes a section of BENCHMARKS.md.
# Usage: bench/where.sh [SECONDS_PER_CASE] [ROUNDS]
. "$(dirname "$0")/lib.sh"
need wrk wrk
need h2load nghttp2-client
need perf linux-perf
built iris-rust
.venv/bin/python bench/where.py --write --module target/compare/iris-rust.wasm --seconds "${1:-5}" --rounds "${2:-3}"
