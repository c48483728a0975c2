#!/usr/bin/env bash
# Sets up everything wasmscore needs on a fresh machine, builds it, starts the
# local system, deploys the iris example and scores one request.
#   ./setup.sh            # data in .data/, serving on 127.0.0.1:8080
#   PORT=9000 ./setup.sh
# Safe to run again: each step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)
port=${PORT:-8080}
data=${DATA_DIR:-$root/.data}

say() { printf '\n== %s\n' "$*"; }

scripts/tools.sh

say "Building wasmscore (release; the first build compiles wasmtime and takes a few minutes)"
cargo build --release -p wasmscore-cli
bin=$root/target/release/wasmscore

say "The iris model"
[ -f examples/iris/model.onnx ] || .venv/bin/python examples/iris/make_model.py

# The data directory holds keys, secrets and model files: private from here on
# (wasmscore itself makes what it writes private; this covers the log and the
# module built below).
umask 077
say "Building the iris scoring module from examples/iris-python/score.py"
mkdir -p "$data"
"$bin" build examples/iris-python/score.py -o "$data/iris-python.wasm"

say "Starting wasmscore on 127.0.0.1:$port (data in $data)"
if [ -f "$data/server.json" ] && kill -0 "$(.venv/bin/python -c "import json;print(json.load(open('$data/server.json'))['pid'])")" 2>/dev/null; then
  echo "already running"
else
  nohup "$bin" up --data-dir "$data" --port "$port" > "$data/wasmscore.log" 2>&1 &
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/v2/health/live" >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
url=$(.venv/bin/python -c "import json;print(json.load(open('$data/server.json'))['url'])")

say "Deploying the iris endpoint"
"$bin" deploy --data-dir "$data" --name iris --module "$data/iris-python.wasm" --model examples/iris/model.onnx --wait

say "Scoring one request (key auth is on: the endpoint's primary key from \`service get-keys\`)"
key=$("$bin" service get-keys --data-dir "$data" iris | .venv/bin/python -c "import json,sys;print(json.load(sys.stdin)['primaryKey'])")
curl -sS --fail-with-body -X POST "$url/api/v1/service/iris/score" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
echo
say "The same over the Open Inference Protocol (the host decodes the tensors; score.py's run_tensors gets them)"
curl -sS --fail-with-body -X POST "$url/v2/models/iris/infer" -H "Authorization: Bearer $key" -d '{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}'
echo
cat <<MSG

wasmscore is serving at $url (log: $data/wasmscore.log). Try:

  curl -X POST $url/api/v1/service/iris/score -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d '{"data": [[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]]}'
  curl $url/v2/models/iris        # Open Inference Protocol metadata; tritonclient and kserve's clients work too

Stop it with: kill \$(.venv/bin/python -c "import json;print(json.load(open('$data/server.json'))['pid'])")
MSG
