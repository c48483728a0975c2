#!/usr/bin/env bash
# Installs what wasmscore builds and tests with, skipping what is there.
# setup.sh and test.sh both run it; run from the checkout's root.
set -euo pipefail
say() { printf '\n== %s\n' "$*"; }

debian() { # PACKAGES...: apt-get install those not installed yet
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

say "Python tools (.venv: onnxruntime, componentize-py, scikit-learn, skl2onnx)"
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c 'import onnxruntime, sklearn, skl2onnx, requests, kubernetes_validate, statsmodels, pyarrow, duckdb' 2>/dev/null || [ ! -x .venv/bin/componentize-py ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi

say "Open Inference Protocol clients (.venv-clients: tritonclient, kserve, schemathesis), pinned by requirements-clients.txt"
# Their protobuf and grpcio pins clash with .venv's; .wasmscore-lock is the
# list it was installed from.
if ! cmp -s requirements-clients.txt .venv-clients/.wasmscore-lock 2>/dev/null; then
  [ -x .venv-clients/bin/python ] || python3 -m venv .venv-clients
  .venv-clients/bin/pip install -q --disable-pip-version-check -r requirements-clients.txt
  cp requirements-clients.txt .venv-clients/.wasmscore-lock
fi

say "Debian: docker-registry (artifacts across the network), clang-19 + wasi-libc (C modules), protoc (the gRPC service's code), Node.js"
# clang-19's wasm32 linker (lld-19) and builtins (libclang-rt-19-dev-wasm32)
# with Debian's wasi-libc; `wasmscore build DIR` runs clang-19 for a score.c.
debian docker-registry clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc protobuf-compiler
command -v node >/dev/null || debian nodejs npm

say "ComponentizeJS (JavaScript modules), pinned by runtime/cli/js/package-lock.json"
# node_modules/.wasmscore-lock is the lock it was installed from.
if ! cmp -s runtime/cli/js/package-lock.json runtime/cli/js/node_modules/.wasmscore-lock 2>/dev/null; then
  (cd runtime/cli/js && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.wasmscore-lock)
fi

say "Chromium and playwright-core (the /ui page's browser test), pinned by tests/ui/package-lock.json"
debian chromium
if ! cmp -s tests/ui/package-lock.json tests/ui/node_modules/.wasmscore-lock 2>/dev/null; then
  (cd tests/ui && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.wasmscore-lock)
fi

say "Rust target wasm32-wasip2"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
