#!/usr/bin/env bash
# The request path across the network, side by side in one run (see
# bench/network.py): up in-process, router -> node, nginx -> node, the node
# alone; then a new node's start -> ready. Installs nginx, wrk and
# docker-registry from Debian if missing; writes a section of BENCHMARKS.md.
# Usage: bench/network.sh [SECONDS_PER_RUN]   (default 8; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
for pkg in nginx:nginx-light wrk:wrk docker-registry:docker-registry; do
  command -v "${pkg%%:*}" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkg#*:}"; }
done
if [ ! -x .venv/bin/componentize-py ] || ! .venv/bin/python -c 'import onnxruntime' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release -p wasmscore-cli
bin=target/release/wasmscore
mkdir -p target/compare
$bin build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
$bin build examples/iris-python/score.py -o target/compare/iris-python.wasm >/dev/null
.venv/bin/python bench/network.py --seconds "$seconds" --write \
  --rust target/compare/iris-rust.wasm --python target/compare/iris-python.wasm
