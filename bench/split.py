#!/usr/bin/env python3
"""Two builds side by side on a split endpoint in one `up`: req/s, p50 and
p99 at 16 connections, and each version's replicas, CPU share and cores
busy as `service show` gives them after each round.

Each `up` serves one endpoint whose three versions (examples/iris-rust,
autoscaled with the defaults) take 34/33/33% of its traffic; wrk at 16
connections for 5 s per round, rounds alternating which build goes first.

Usage (from the repository root, after bench/lib.sh's `built`):
  .venv/bin/python bench/split.py OLD_BINARY NEW_BINARY ROUNDS
"""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import KEY, MODEL, deploy, free_port, lua_file, scratch, wasmscore_up, wrk  # noqa: E402

MODULE = "target/compare/iris-rust.wasm"


def versions(binary, data):
    out = subprocess.run([binary, "service", "show", "--json", "--data-dir", str(data), "split"], capture_output=True, text=True)
    return [
        (v["name"], v["target_replicas"], v["autoscale"].get("cpu_share"), v["autoscale"].get("cpu_cores_busy"))
        for v in json.loads(out.stdout)["versions"]
    ]


def main():
    binaries, rounds = sys.argv[1:3], int(sys.argv[3])
    work = Path(scratch("split-"))
    ups = []
    for b in binaries:
        port = free_port()
        up, data = wasmscore_up(work, port, bin=b)
        deploy(data, "split", MODULE, dc={"primary_key": KEY}, version="a")
        dc = work / f"dc-{port}.json"
        dc.write_text("{}")
        for v in ("b", "c"):
            subprocess.run(
                [b, "version", "create", "--data-dir", str(data), "--endpoint", "split", "--version", v,
                 "--module", MODULE, "--model", str(MODEL), "--traffic", "33", "--dc", str(dc)],
                check=True, capture_output=True,
            )
        ups.append((b, up, data, f"http://127.0.0.1:{port}/api/v1/service/split/score"))
    lua = lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})
    for _, _, _, url in ups:
        wrk(url, 16, 3, lua)
    for i in range(rounds):
        for b, _, data, url in ups if i % 2 == 0 else ups[::-1]:
            r = wrk(url, 16, 5, lua)
            print(f"{b}: {r['rps']:.0f} req/s, p50 {r['p50']} ms, p99 {r['p99']} ms;"
                  f" (version, replicas, cpu_share, cpu_cores_busy) {versions(b, data)}", flush=True)
    for _, up, _, _ in ups:
        up.stop()


if __name__ == "__main__":
    main()
