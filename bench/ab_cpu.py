#!/usr/bin/env python3
"""Two builds side by side: req/s and the server's CPU per request.

Two `wasmscore up` at once, each serving the same module and model (key
auth, default autoscaling), wrk at CONNS connections for 5 s per round,
rounds alternating which build goes first; the server's utime + stime per
request from /proc. Prints each round and the medians.

Usage (from the repository root, after bench/lib.sh's `built`):
  .venv/bin/python bench/ab_cpu.py OLD_BINARY NEW_BINARY CONNS ROUNDS \\
      [MODULE.wasm MODEL.onnx BODY]
MODULE defaults to target/compare/iris-rust.wasm with the iris model and
body. The MLP of bench/batching.sh, for example:
  BODY=$(python3 -c 'import json;print(json.dumps({"data":[[0.01*i for i in range(256)]]}))')
  .venv/bin/python bench/ab_cpu.py OLD NEW 16 10 target/compare/rows-rust.wasm \\
      target/compare/batch-models/mlp/model.onnx "$BODY"
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
from compare import KEY, deploy, free_port, wasmscore_up, wrk  # noqa: E402
from memory import cpu_seconds  # noqa: E402


def main():
    builds = {"before": Path(sys.argv[1]).resolve(), "after": Path(sys.argv[2]).resolve()}
    conns, rounds = int(sys.argv[3]), int(sys.argv[4])
    module = sys.argv[5] if len(sys.argv) > 5 else "target/compare/iris-rust.wasm"
    if len(sys.argv) > 7:
        compare.MODEL, compare.BODY = Path(sys.argv[6]), sys.argv[7]
    work = tempfile.mkdtemp(prefix="wasmscore-ab-")
    key = compare.lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})
    ups = {}
    try:
        for name, binary in builds.items():
            port = free_port()
            up, data = wasmscore_up(work, port, bin=binary)
            deploy(data, "iris", module, dc={"primary_key": KEY})
            ups[name] = (port, up)
        time.sleep(3)
        runs = {name: [] for name in builds}
        for r in range(rounds):
            order = list(builds) if r % 2 == 0 else list(builds)[::-1]
            for name in order:
                port, up = ups[name]
                before = cpu_seconds(up.p.pid)
                out = wrk(f"http://127.0.0.1:{port}/api/v1/service/iris/score", conns, 5, key)
                assert out["errors"] == 0, out
                runs[name].append((out["rps"], (cpu_seconds(up.p.pid) - before) * 1e6 / (out["rps"] * 5)))
            print(r, {n: (round(v[-1][0]), round(v[-1][1], 1)) for n, v in runs.items()}, flush=True)
        for name, v in runs.items():
            print(
                f"{name}: median {statistics.median(x[0] for x in v):,.0f} req/s, "
                f"{statistics.median(x[1] for x in v):.1f} µs of CPU per request"
            )
    finally:
        for _, up in ups.values():
            up.stop()


if __name__ == "__main__":
    main()
