#!/usr/bin/env bash
# Runs every test: unit tests beside the code and the end-to-end tests in
# tests/ that start the real binary. Installs what is missing first (setup
# steps without starting a server).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ] || ! .venv/bin/python -c 'import onnxruntime, requests' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
# The OCI registry the network tests push to and pull from (Debian's distribution 2.8).
command -v docker-registry >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry; }
cargo build --release -p wasmscore-cli
# The CUDA device is behind a feature: compile it and run its tests, which
# say SKIPPED and why on a machine without a GPU.
cargo test --release -p wasmscore-device-ort --features cuda -- --nocapture
cargo test --release --workspace "$@"
