#!/usr/bin/env bash
# Where the resident memory of one `up` goes, with and without handing back
# the build's pages (bench/memory.py). Writes a
# section of BENCHMARKS.md. Usage: bench/memory.sh [--before OLD_BINARY]
# (--before: a build before this one, side by side with the three)
. "$(dirname "$0")/lib.sh"
need wrk wrk
built iris-rust iris-c
.venv/bin/python bench/memory.py --write --module target/compare/iris-rust.wasm --second target/compare/iris-c.wasm "$@"
