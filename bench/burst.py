#!/usr/bin/env python3
"""One connection right after a burst, side by side in one run: two `up`
of this build serving the Rust iris module, one whose pool the autoscaler
has just scaled up (a 16-connection wrk burst before each of its rounds)
and one that never saw more than one connection. wrk at one connection,
rounds alternating between the two; p50, req/s, the server's CPU per
request and its context switches per request (from /proc, so nothing
attaches to the process), and the instances each pool had.

The question it answers (issue 18): with the instances a burst leaves
parked, does a client that sends one request after another lose the
spin's gain, as it did when each send woke a parked instance?

Run through bench/burst.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import json
import os
import statistics
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import KEY, cpu_ticks, deploy, free_port, lua_file, machine, scratch, wait_200, wasmscore_up, write_section, wrk  # noqa: E402


def switches(pid):
    """Voluntary and involuntary context switches of every thread of `pid`."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    n += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return n


def instances(port, data):
    token = (Path(data) / "admin.token").read_text().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/v1/endpoints/iris", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)["versions"][0]["instances"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = scratch("wasmscore-burst-")
    lua = lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})
    servers = {}
    try:
        for name in ("after a burst", "no burst"):
            port = free_port()
            up, data = wasmscore_up(work, port)
            deploy(data, "iris", a.module, dc={"primary_key": KEY})
            url = f"http://127.0.0.1:{port}/api/v1/service/iris/score"
            wait_200(url, {"Authorization": f"Bearer {KEY}"})
            servers[name] = (up, url, port, data)
        runs = {n: [] for n in servers}
        for _ in range(a.rounds):
            for name, (up, url, port, data) in servers.items():
                if name == "after a burst":
                    burst = wrk(url, 16, 5, lua)
                    assert burst["errors"] == 0, burst
                pid = up.p.pid
                n = instances(port, data)
                t0, s0 = cpu_ticks(pid), switches(pid)
                r = wrk(url, 1, a.seconds, lua)
                t1, s1 = cpu_ticks(pid), switches(pid)
                assert r["errors"] == 0, r
                reqs = r["rps"] * a.seconds
                r.update(cpu_us=(t1 - t0) / os.sysconf("SC_CLK_TCK") * 1e6 / reqs, cs=(s1 - s0) / reqs, instances=n)
                runs[name].append(r)
                print(f"{name:14s} {n:2d} instances: {r['rps']:7.0f} req/s p50 {r['p50'] * 1000:.0f} µs, "
                      f"{r['cpu_us']:.0f} µs CPU, {r['cs']:.2f} switches per request", flush=True)
    finally:
        for up, _, _, _ in servers.values():
            up.stop()
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_us", "cs", "instances")} for n, rs in runs.items()}
    lines = [
        f"Machine: {machine()}. `bash bench/burst.sh`; Rust iris with key auth; two `up` of this build, one given a "
        f"5 s wrk burst at 16 connections before each of its rounds; wrk at one connection, {a.rounds} rounds of "
        f"{a.seconds} s alternating; CPU and context switches per request from /proc; medians.",
        "",
        "| server | instances | c=1 req/s | p50 | p99 | server CPU per request | context switches per request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in med.items():
        lines.append(f"| {name} | {m['instances']:.0f} | {m['rps']:,.0f} | {m['p50'] * 1000:.0f} µs | {m['p99'] * 1000:.0f} µs "
                     f"| {m['cpu_us']:.0f} µs | {m['cs']:.2f} |")
    b, q = med["after a burst"], med["no burst"]
    lines += [
        "",
        f"After the burst over no burst: req/s {b['rps'] / q['rps']:.2f}x, p50 {b['p50'] / q['p50']:.2f}x, "
        f"CPU per request {b['cpu_us'] / q['cpu_us']:.2f}x.",
        "",
        "Rounds (p50 µs): " + "; ".join(f"{n}: " + ", ".join(f"{r['p50'] * 1000:.0f}" for r in rs) for n, rs in runs.items()) + ".",
    ]
    report = "\n".join(lines)
    print(report)
    if a.write:
        write_section("burst", "{stamp}, one connection right after a burst (issue 18)", report)


if __name__ == "__main__":
    main()
