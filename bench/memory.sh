#!/usr/bin/env bash
# Where the resident memory of one `up` goes, with and without handing back
# the build's pages (bench/memory.py). Writes a
# section of BENCHMARKS.md. Usage: bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release -p wasmscore-cli
mkdir -p target/compare
target/release/wasmscore build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
target/release/wasmscore build examples/iris-c -o target/compare/iris-c.wasm >/dev/null
.venv/bin/python bench/memory.py --write --module target/compare/iris-rust.wasm --second target/compare/iris-c.wasm
