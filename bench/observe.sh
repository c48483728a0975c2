#!/usr/bin/env bash
# The cost of the request-path metrics and traces (see bench/observe.py):
# builds the binary of a commit before them (BEFORE, default 60135e0) in a
# git worktree with its own target dir (target/before: sharing target/
# would overwrite this tree's workspace crates, whose artifacts have the
# same names), then runs both side by side. Writes a section of
# BENCHMARKS.md. Usage: bench/observe.sh [BEFORE]   (the first run builds
# wasmtime again: about 15 minutes; later ones about 3)
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:-60135e0}
scripts/tools.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
root=$(pwd)
tree=$(mktemp -d)/before
git worktree add -f "$tree" "$before" >/dev/null
(cd "$tree" && cargo build --release -p wasmscore-cli --target-dir "$root/target/before")
mkdir -p target/compare
cp target/before/release/wasmscore target/compare/wasmscore-before
git worktree remove --force "$tree"
cargo build --release -p wasmscore-cli
target/release/wasmscore build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
.venv/bin/python bench/observe.py --write --before target/compare/wasmscore-before --module target/compare/iris-rust.wasm
