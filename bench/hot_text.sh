#!/usr/bin/env bash
# Samples the request path under load and writes runtime/cli/hot-text.txt,
# the functions the linker puts together (bench/hot_text.py): three times,
# each after the first on a build linked with the list so far, whose
# faults find functions the run before's hid. Run after a change to the
# request path; it leaves the CLI built with the new list.
# Usage: bench/hot_text.sh [SECONDS]
. "$(dirname "$0")/lib.sh"
need wrk wrk
need h2load nghttp2-client
need perf linux-perf
built iris-rust
.venv/bin/python bench/hot_text.py --module target/compare/iris-rust.wasm --seconds "${1:-4}"
built
for pass in 2 3; do
  .venv/bin/python bench/hot_text.py --module target/compare/iris-rust.wasm --seconds "${1:-4}" --merge
  built
done
