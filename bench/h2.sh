#!/usr/bin/env bash
# HTTP/2 streams on their connection's task vs a task per stream
# (bench/h2.py), side by side in one run. Writes a section of BENCHMARKS.md.
# Usage: bench/h2.sh [REQUESTS_PER_CASE]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
command -v h2load >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; }
cargo build --release -p wasmscore-cli
mkdir -p target/compare
target/release/wasmscore build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
.venv/bin/python bench/h2.py --write --module target/compare/iris-rust.wasm --requests "${1:-40000}"
