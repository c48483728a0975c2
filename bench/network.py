#!/usr/bin/env python3
"""The request path across the network, side by side in one run.

The same iris request (Rust module, key auth on where wasmscore serves it):
- `up`: in-process (router -> replica pool in one process);
- `router -> node`: `wasmscore router` in front of one `wasmscore node` on
  loopback (the internal protocol over HTTP/2), its connections on a
  thread per core; with `--node-http1` (HTTP/1.1 to the node), and with
  `--threads 0` (every connection on one multi-thread runtime);
- `nginx -> node`: nginx as a reverse proxy (HTTP/1.1 keepalive upstream,
  one worker) in front of the same node, rewriting to its internal route
  (no auth: nginx does less work than the router here);
- `node direct`: wrk against the node's internal route itself (the floor
  the two proxies are added to).
wrk at 1 and 16 connections; the added p50/p99 per hop and req/s. Then how
long a new node takes from start to ready: pulled from a warm registry with
an empty compile cache, and with the cache warm (Rust and Python iris).

Run through bench/network.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, BODY, KEY, MODEL, Proc, cli, deploy, free_port, lua_file, machine, nginx, scratch, wait_for, wasmscore_up, write_section, wrk  # noqa: E402


def node(work, port, args, name):
    p = Proc([str(BIN), "node", "--port", str(port), *args], log=Path(work) / f"{name}.log")
    t0 = time.perf_counter()
    wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True, limit=300)
    return p, time.perf_counter() - t0


def registry(work):
    port = free_port()
    cfg = Path(work) / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {work}/registry\nhttp:\n  addr: 127.0.0.1:{port}\n")
    p = Proc(["docker-registry", "serve", str(cfg)], log=Path(work) / "registry.log")
    wait_for(f"http://127.0.0.1:{port}/v2/", get=True)
    return p, f"127.0.0.1:{port}"


def push(reg, tag, module):
    out = cli("push", "--insecure", "--json", "--registry", f"{reg}/{tag}", "--module", str(module), "--model", str(MODEL))
    return json.loads(out)["digest"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rust", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = scratch("wasmscore-net-")
    procs = []
    try:
        reg_proc, reg = registry(work)
        procs.append(reg_proc)
        rust = push(reg, "iris:rust", a.rust)
        python = push(reg, "iris:python", a.python)

        # Start to ready: empty compile cache, then warm.
        starts = {}
        for lang, digest in (("Rust", rust), ("Python", python)):
            cache = Path(work) / f"cache-{lang}"
            for label in ("empty compile cache", "warm compile cache"):
                p, took = node(work, free_port(), ["--artifact", f"{reg}/iris@{digest}", "--insecure", "--cache-dir", str(cache)], f"start-{lang}-{label[:5]}")
                p.stop()
                starts[(lang, label)] = took

        # The node every path below goes to.
        nport = free_port()
        n, _ = node(work, nport, ["--artifact", f"{reg}/iris@{rust}", "--insecure", "--cache-dir", str(Path(work) / "cache-Rust")], "node")
        procs.append(n)
        rport = free_port()
        cfg = Path(work) / "router.json"
        cfg.write_text(json.dumps({"endpoints": [{"name": "iris", "auth": {"mode": "key", "primary_key": KEY, "secondary_key": KEY + "-2"},
                                                  "versions": [{"name": "v1", "default": True, "nodes": [f"127.0.0.1:{nport}"]}]}]}))
        r = Proc([str(BIN), "router", "--port", str(rport), "--config", str(cfg)], log=Path(work) / "router.log")
        procs.append(r)
        wait_for(f"http://127.0.0.1:{rport}/v2/health/ready", get=True)
        r1port = free_port()
        r1 = Proc([str(BIN), "router", "--port", str(r1port), "--config", str(cfg), "--node-http1"], log=Path(work) / "router-h1.log")
        procs.append(r1)
        wait_for(f"http://127.0.0.1:{r1port}/v2/health/ready", get=True)
        r0port = free_port()
        r0 = Proc([str(BIN), "router", "--port", str(r0port), "--config", str(cfg), "--threads", "0"], log=Path(work) / "router-mt.log")
        procs.append(r0)
        wait_for(f"http://127.0.0.1:{r0port}/v2/health/ready", get=True)
        gport = free_port()
        g = nginx(work, gport, f"""
  upstream node {{ server 127.0.0.1:{nport}; keepalive 32; }}
  server {{ listen 127.0.0.1:{gport};
    location / {{ proxy_pass http://node/internal/v1/score; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header x-wasmscore-endpoint iris; proxy_set_header x-wasmscore-version v1; }} }}""")
        procs.append(g)
        uport = free_port()
        u, data = wasmscore_up(work, uport)
        procs.append(u)
        deploy(data, "iris", a.rust, dc={"num_replicas": 1})
        ukey = json.loads(cli("service", "get-keys", "--data-dir", str(data), "iris"))["primaryKey"]

        keyed = lua_file(work, "keyed.lua", {"Authorization": f"Bearer {KEY}"})
        ukeyed = lua_file(work, "ukeyed.lua", {"Authorization": f"Bearer {ukey}"})
        plain = lua_file(work, "plain.lua", {"x-wasmscore-endpoint": "iris", "x-wasmscore-version": "v1"})
        paths = [
            ("up (in-process)", f"http://127.0.0.1:{uport}/api/v1/service/iris/score", ukeyed),
            ("node direct (the floor)", f"http://127.0.0.1:{nport}/internal/v1/score", plain),
            ("router -> node", f"http://127.0.0.1:{rport}/api/v1/service/iris/score", keyed),
            ("router -> node (--node-http1)", f"http://127.0.0.1:{r1port}/api/v1/service/iris/score", keyed),
            ("router -> node (--threads 0)", f"http://127.0.0.1:{r0port}/api/v1/service/iris/score", keyed),
            ("nginx -> node", f"http://127.0.0.1:{gport}/", plain),
        ]
        results = {}
        for name, url, lua in paths:
            wrk(url, 16, 2, lua)  # warm up
            results[name] = {c: wrk(url, c, a.seconds, lua) for c in (1, 16)}
        report = render(results, starts, a)
        print(report)
        if a.write:
            write(report)
    finally:
        for p in reversed(procs):
            p.stop()


def render(results, starts, a):
    L = [f"Machine: {machine()}. wrk -t2 (-t1 at 1 connection), {a.seconds} s per run, request `{BODY}` to the Rust iris module. One run, all paths in it.", ""]
    L.append("| path | req/s @1 | p50 @1 | p99 @1 | req/s @16 | p50 @16 | p99 @16 | errors |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        e = r[1]["errors"] + r[16]["errors"]
        L.append(f"| {name} | {r[1]['rps']:.0f} | {r[1]['p50']*1000:.0f} µs | {r[1]['p99']*1000:.0f} µs | {r[16]['rps']:.0f} | {r[16]['p50']*1000:.0f} µs | {r[16]['p99']*1000:.0f} µs | {e} |")
    floor = results["node direct (the floor)"]
    L += ["", "Added by each hop in front of the node (the path minus `node direct`):", "",
          "| hop | p50 @1 | p99 @1 | p50 @16 | req/s @16 vs node direct |", "| --- | --- | --- | --- | --- |"]
    for name in ("router -> node", "router -> node (--node-http1)", "router -> node (--threads 0)", "nginx -> node"):
        r = results[name]
        L.append(f"| {name} | {(r[1]['p50']-floor[1]['p50'])*1000:+.0f} µs | {(r[1]['p99']-floor[1]['p99'])*1000:+.0f} µs | "
                 f"{(r[16]['p50']-floor[16]['p50'])*1000:+.0f} µs | {r[16]['rps']/floor[16]['rps']:.2f}x |")
    ng = results["nginx -> node"]
    L.append("")
    for name in ("router -> node", "router -> node (--node-http1)", "router -> node (--threads 0)"):
        rt = results[name]
        L.append(f"{name} vs nginx as the proxy hop: req/s at 16 connections {rt[16]['rps']/ng[16]['rps']:.2f}x nginx's; "
                 f"p50 at 1 connection {rt[1]['p50']*1000:.0f} µs vs {ng[1]['p50']*1000:.0f} µs; "
                 f"{rt[16]['rps']/results['up (in-process)'][16]['rps']:.2f}x the req/s of `up` in-process at 16 connections.")
    L += ["",
          "A new node, process start -> `/v2/health/ready` 200, pulling iris from a registry on loopback:", "",
          "| module | empty compile cache | warm compile cache |", "| --- | --- | --- |"]
    for lang in ("Rust", "Python"):
        L.append(f"| {lang} | {starts[(lang, 'empty compile cache')]*1000:.0f} ms | {starts[(lang, 'warm compile cache')]*1000:.0f} ms |")
    return "\n".join(L)


def write(report):
    write_section("network", "Across the network ({stamp}, written by bench/network.sh)", f"Command: `bench/network.sh`.\n\n{report}")


if __name__ == "__main__":
    main()
