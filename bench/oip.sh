#!/usr/bin/env bash
# The Open Inference Protocol side by side (bench/oip.py): wasmscore over
# OIP REST (JSON, binary) and gRPC and its own /score, KServe's Python
# server and MLServer, at 1 and 16 connections. Writes a section of
# BENCHMARKS.md. Usage: bench/oip.sh [SECONDS_PER_CASE]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
command -v h2load >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; }
[ -x .peers/kserve/bin/python ] && [ -x .peers/mlserver/bin/mlserver ] || bash ../shared/peers/setup.sh .peers
cargo build --release -p wasmscore-cli
mkdir -p target/compare
target/release/wasmscore build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
.venv/bin/python bench/oip.py --write --module target/compare/iris-rust.wasm --seconds "${1:-5}"
