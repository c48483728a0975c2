#!/usr/bin/env bash
# The Open Inference Protocol side by side (bench/oip.py): wasmscore over
# OIP REST (JSON, binary) and gRPC and its own /score, KServe's Python
# server and MLServer, at 1 and 16 connections. Writes a section of
# BENCHMARKS.md. Usage: bench/oip.sh [SECONDS_PER_CASE]
. "$(dirname "$0")/lib.sh"
need wrk wrk
need h2load nghttp2-client
[ -x .peers/kserve/bin/python ] && [ -x .peers/mlserver/bin/mlserver ] || bash ../shared/peers/setup.sh .peers
built iris-rust
.venv/bin/python bench/oip.py --write --module target/compare/iris-rust.wasm --seconds "${1:-5}"
