#!/usr/bin/env bash
# Side-by-side benchmark (see bench/compare.py): installs what is missing
# (the peers' virtual environments with ../shared/peers/setup.sh, nginx from
# Debian, matplotlib for the plot), builds wasmscore and the iris modules,
# runs every server the same way and writes BENCHMARKS.md and bench/latency.png.
# Usage: bench/compare.sh [SECONDS_PER_RUN]   (default 10; about 6 minutes in all)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
if [ ! -x .venv/bin/componentize-py ] || ! .venv/bin/python -c 'import onnxruntime' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
[ -x .peers/azml/bin/python ] && [ -x .peers/fastapi/bin/uvicorn ] || bash ../shared/peers/setup.sh .peers
if ! .peers/plot/bin/python -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv .peers/plot
  .peers/plot/bin/pip install -q --disable-pip-version-check matplotlib==3.10.8
fi
cargo build --release -p wasmscore-cli
bin=target/release/wasmscore
mkdir -p target/compare
$bin build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
$bin build examples/iris-python/score.py -o target/compare/iris-python.wasm >/dev/null
.peers/plot/bin/python bench/compare.py --seconds "$seconds" --write \
  --rust target/compare/iris-rust.wasm --python target/compare/iris-python.wasm
