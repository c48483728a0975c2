#!/usr/bin/env bash
# Runs every test: unit tests beside the code and the end-to-end tests in
# tests/ that start the real binary. Installs what is missing first (setup
# steps without starting a server).
set -euo pipefail
cd "$(dirname "$0")"
scripts/tools.sh
cargo build --release -p wasmscore-cli
# The CUDA device is behind a feature: compile it and run its tests, which
# say SKIPPED and why on a machine without a GPU.
cargo test --release -p wasmscore-device-ort --features cuda -- --nocapture
cargo test --release --workspace "$@"
