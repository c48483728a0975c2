#!/usr/bin/env python3
"""Two builds, or two settings of one build, side by side: req/s and the
server's CPU per request.

Two `wasmscore up` at once, each serving the same module and model (key
auth, default autoscaling) from its own copy of the binary and of ONNX
Runtime's library dropped from the page cache (a page two processes map is
not handed back, bench/memory.py), wrk at CONNS connections for 5 s per
round on `/score`, and with --grpc h2load on ModelInfer too (CONNS
connections of one call each), rounds alternating which goes first; the
server's utime + stime per request from /proc, and wrk's p99. Prints each
round and the medians.

Usage (from the repository root, after bench/lib.sh's `built`):
  .venv/bin/python bench/ab_cpu.py OLD_BINARY NEW_BINARY CONNS ROUNDS \\
      [MODULE.wasm MODEL.onnx BODY] [--grpc] [--env-after NAME=VALUE ...]
--grpc needs h2load (Debian nghttp2-client; bench/oip.sh installs it).
MODULE defaults to target/compare/iris-rust.wasm with the iris model and
body. The MLP of bench/batching.sh, for example:
  BODY=$(python3 -c 'import json;print(json.dumps({"data":[[0.01*i for i in range(256)]]}))')
  .venv/bin/python bench/ab_cpu.py OLD NEW 16 10 target/compare/rows-rust.wasm \\
      target/compare/batch-models/mlp/model.onnx "$BODY"
Across the network (--network): each build serves as a `wasmscore node`
(the module and model from disk) behind its own `wasmscore router`; wrk on
the router's `/score`, the CPU of both processes per request:
  .venv/bin/python bench/ab_cpu.py OLD NEW 16 8 --network
One build, two settings (the executable's code paged out or not; two
fixed instances against the autoscaler's count):
  .venv/bin/python bench/ab_cpu.py B B 16 10 --grpc --env-after WASMSCORE_PAGE_OUT=all
  .venv/bin/python bench/ab_cpu.py B B 16 10 --dc-after '{"num_replicas": 2}'
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
from compare import KEY, Proc, deploy, free_port, scratch, wait_for, wrk  # noqa: E402
from memory import cpu_seconds, own_copies  # noqa: E402
from oip import grpc_body, grpc_check, h2load  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("conns", type=int)
    ap.add_argument("rounds", type=int)
    ap.add_argument("module", nargs="?", default="target/compare/iris-rust.wasm")
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("body", nargs="?")
    ap.add_argument("--grpc", action="store_true", help="h2load on ModelInfer too (iris only)")
    ap.add_argument("--env-after", action="append", default=[], metavar="NAME=VALUE", help="for the second `up`")
    ap.add_argument("--dc-after", default="{}", metavar="JSON", help="deployment settings for the second `up`")
    ap.add_argument("--network", action="store_true", help="a router in front of a node instead of `up`")
    a = ap.parse_args()
    if a.network and a.grpc:
        ap.error("--network loads /score only")
    if (a.model is None) != (a.body is None):
        ap.error("MODEL and BODY go together")
    if a.body:
        compare.MODEL, compare.BODY = a.model, a.body
    builds = {
        "before": (a.old.resolve(), {}, {}),
        "after": (a.new.resolve(), dict(kv.split("=", 1) for kv in a.env_after), json.loads(a.dc_after)),
    }
    routes = ["score"] + (["grpc"] if a.grpc else [])
    work = Path(scratch("wasmscore-ab-"))
    key = compare.lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})
    grpc = grpc_body(work / "infer.grpc", "iris") if a.grpc else None
    grpc_headers = {"content-type": "application/grpc", "te": "trailers", "authorization": f"Bearer {KEY}"}
    ups = {}
    try:
        for i, (name, (binary, env, dc)) in enumerate(builds.items()):
            exe, ort = own_copies(work / f"bin-{i}", binary)
            port, gport, data = free_port(), free_port(), work / f"data-{i}"
            env = {**os.environ, **env, "ORT_DYLIB_PATH": str(ort)}
            if a.network:
                ups[name] = (port, None, network(work, i, exe, env, port, a.module, dc))
                continue
            args = [str(exe), "up", "--port", str(port), "--data-dir", str(data)]
            args += ["--grpc-port", str(gport)] if a.grpc else []
            up = Proc(args, env=env, log=work / f"up-{i}.log")
            ups[name] = (port, gport, Up(up))
            wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
            deploy(data, "iris", a.module, dc={"primary_key": KEY, **dc})
            if a.grpc:
                grpc_check(f"127.0.0.1:{gport}", "iris", KEY)
        time.sleep(3)
        runs = {(name, route): [] for name in builds for route in routes}
        for r in range(a.rounds):
            order = list(builds) if r % 2 == 0 else list(builds)[::-1]
            for route in routes:
                for name in order:
                    port, gport, up = ups[name]
                    before = sum(cpu_seconds(pid) for pid in up.pids())
                    if route == "score":
                        out = wrk(f"http://127.0.0.1:{port}/api/v1/service/iris/score", a.conns, 5, key)
                    else:
                        url = f"http://127.0.0.1:{gport}/inference.GRPCInferenceService/ModelInfer"
                        out = h2load(url, a.conns, 5, grpc, grpc_headers)
                    assert out["errors"] == 0, out
                    cpu_us = (sum(cpu_seconds(pid) for pid in up.pids()) - before) * 1e6 / (out["rps"] * 5)
                    # wrk's p99 (h2load reports none).
                    runs[(name, route)].append((out["rps"], cpu_us, out.get("p99")))
            print(r, {f"{n} {rt}": (round(v[-1][0]), round(v[-1][1], 1), v[-1][2]) for (n, rt), v in runs.items()}, flush=True)
        for (name, route), v in runs.items():
            p99 = [x[2] for x in v if x[2] is not None]
            tail = f", p99 median {statistics.median(p99):.2f} ms, worst {max(p99):.2f} ms" if p99 else ""
            print(
                f"{name} {route}: median {statistics.median(x[0] for x in v):,.0f} req/s, "
                f"{statistics.median(x[1] for x in v):.1f} µs of CPU per request{tail}"
            )
    finally:
        for _, _, up in ups.values():
            up.stop()


class Pair:
    """A node and the router in front of it, stopped together."""

    def __init__(self, node, router):
        self.node, self.router = node, router

    def pids(self):
        return [self.node.p.pid, self.router.p.pid]

    def stop(self):
        self.router.stop()
        self.node.stop()


class Up:
    def __init__(self, up):
        self.up = up

    def pids(self):
        return [self.up.p.pid]

    def stop(self):
        self.up.stop()


def network(work, i, exe, env, port, module, dc):
    """`wasmscore node` serving MODULE with iris's model, and a router on
    PORT in front of it (key auth)."""
    nport = free_port()
    node = Proc([str(exe), "node", "--port", str(nport), "--data-dir", str(work / f"node-{i}"), "--module", str(module),
                 "--model", str(compare.MODEL), "--config", json.dumps(dc)], env=env, log=work / f"node-{i}.log")
    wait_for(f"http://127.0.0.1:{nport}/v2/health/ready", get=True, limit=300)
    cfg = work / f"router-{i}.json"
    cfg.write_text(json.dumps({"endpoints": [{"name": "iris", "auth": {"mode": "key", "primary_key": KEY, "secondary_key": KEY + "-2"},
                                              "versions": [{"name": "v1", "default": True, "nodes": [f"127.0.0.1:{nport}"]}]}]}))
    router = Proc([str(exe), "router", "--port", str(port), "--config", str(cfg), "--data-dir", str(work / f"router-{i}")],
                  env=env, log=work / f"router-{i}.log")
    wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
    return Pair(node, router)


if __name__ == "__main__":
    main()
