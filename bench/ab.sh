#!/usr/bin/env bash
# Before/after on the in-process path: two `wasmscore up` binaries at once,
# the same Rust iris deployment (1 replica, key auth), wrk alternating
# between them at 1 and 16 connections, three rounds.
# Usage: bench/ab.sh OLD_BINARY NEW_BINARY [SECONDS]
# (build the old one from a worktree of the old commit; see BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
# A binary built elsewhere (a worktree) finds this checkout's .venv and
# tools through WASMSCORE_HOME.
export WASMSCORE_HOME="$PWD"
old=$1 new=$2 secs=${3:-4}
T=$(mktemp -d)
trap 'pkill -f "up --data-dir $T" || true; rm -rf "$T"' EXIT
mkdir -p target/compare
"$new" build examples/iris-rust -o target/compare/iris-rust.wasm >/dev/null
start() { # binary port
  "$1" up --data-dir "$T/d$2" --port "$2" > "$T/up$2.log" 2>&1 &
  for _ in $(seq 100); do curl -sf "localhost:$2/v2/health/ready" >/dev/null && break; sleep 0.1; done
  echo '{"num_replicas": 1}' > "$T/dc.json"
  "$1" deploy --data-dir "$T/d$2" --name iris --module target/compare/iris-rust.wasm --model examples/iris/model.onnx --dc "$T/dc.json" >/dev/null
  key=$("$1" service get-keys --data-dir "$T/d$2" iris | python3 -c 'import json,sys;print(json.load(sys.stdin)["primaryKey"])')
  printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer %s"\n' \
    "'{\"data\": [[5.1, 3.5, 1.4, 0.2]]}'" "$key" > "$T/k$2.lua"
}
p_old=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
p_new=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
start "$old" "$p_old"
start "$new" "$p_new"
for round in 1 2 3; do
  for c in 1 16; do
    for p in "$p_old" "$p_new"; do
      name=$([ "$p" = "$p_old" ] && echo before || echo after)
      r=$(wrk -t "$([ "$c" = 1 ] && echo 1 || echo 2)" -c "$c" -d "${secs}s" --latency -s "$T/k$p.lua" "http://127.0.0.1:$p/api/v1/service/iris/score" \
        | grep -E 'Requests/sec|  50%|  99%' | awk '{print $2}' | tr '\n' ' ')
      echo "round $round c=$c $name: p50 p99 req/s = $r"
    done
  done
done
