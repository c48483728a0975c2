# Sourced by the bench scripts: from the repository root, with the
# project's tools (scripts/tools.sh), two helpers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/tools.sh >/dev/null

# need COMMAND PACKAGE: installs the Debian package when the command is missing.
need() {
  command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; }
}

# built EXAMPLE...: the CLI in release, then each example under examples/
# as target/compare/NAME.wasm (NAME: the example's directory).
built() {
  cargo build --release -p wasmscore-cli
  mkdir -p target/compare
  local e
  for e in "$@"; do
    target/release/wasmscore build "examples/$e" -o "target/compare/${e%%/*}.wasm" >/dev/null
  done
}
