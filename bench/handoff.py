#!/usr/bin/env python3
"""The request's hand-off to its instance, side by side in one run: the
Rust iris module in two `wasmscore up` processes of this build that differ
only in WASMSCORE_SPIN_US (250: an idle instance spins for the next
request while a core is idle; 0: it parks at once, as before), and nginx's
static `return 200` (the network floor). wrk at 1 and 16 connections,
rounds alternating between the three; medians and ratios. Then resident
memory of one `up` with the one iris version after its load run (VmRSS,
split into file-backed pages and anonymous memory).

Run through bench/handoff.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import KEY, deploy, free_port, lua_file, machine, nginx, scratch, wait_200, wait_for, wasmscore_up, write_section, wrk  # noqa: E402


def rss(pid):
    d = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(d[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = scratch("wasmscore-handoff-")
    plain = lua_file(work, "plain.lua", {})
    key = lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})
    servers = {}
    port = free_port()
    servers["nginx return 200"] = (
        nginx(work, port, f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 '{{\"probabilities\": [[0.98, 0.018, 0.0]]}}'; }} }}"),
        f"http://127.0.0.1:{port}/score",
        plain,
    )
    wait_for(f"http://127.0.0.1:{port}/", get=True)
    memory = {}
    try:
        for name, spin in (("wasmscore, spin", "250"), ("wasmscore, no spin", "0")):
            os.environ["WASMSCORE_SPIN_US"] = spin
            port = free_port()
            up, data = wasmscore_up(work, port)
            deploy(data, "iris", a.module, dc={"primary_key": KEY})
            url = f"http://127.0.0.1:{port}/api/v1/service/iris/score"
            wait_200(url, {"Authorization": f"Bearer {KEY}"})
            servers[name] = (up, url, key)
        os.environ.pop("WASMSCORE_SPIN_US")
        for _, url, lua in servers.values():
            wrk(url, 16, 2, lua)
        runs = {n: {1: [], 16: []} for n in servers}
        for _ in range(a.rounds):
            for name, (_, url, lua) in servers.items():
                for c in (1, 16):
                    r = wrk(url, c, a.seconds, lua)
                    assert r["errors"] == 0, r
                    runs[name][c].append(r)
                    print(f"{name:20s} c={c:2d} {r['rps']:8.0f} req/s p50 {r['p50'] * 1000:.0f} µs", flush=True)
        for name in ("wasmscore, spin", "wasmscore, no spin"):
            memory[name] = rss(servers[name][0].p.pid)
    finally:
        for proc, _, _ in servers.values():
            proc.stop()
    med = {n: {c: {k: statistics.median(r[k] for r in rs[c]) for k in ("rps", "p50", "p99")} for c in (1, 16)} for n, rs in runs.items()}
    floor = med["nginx return 200"]
    lines = [
        f"Machine: {machine()}. `bash bench/handoff.sh`; Rust iris with key auth; two `up` of this build differing only "
        f"in `WASMSCORE_SPIN_US` (250 / 0), nginx `return 200` beside them; wrk, {a.rounds} rounds of {a.seconds} s "
        "alternating between the three.",
        "",
        "| server | c=1 req/s | c=1 p50 | c=1 p50 over nginx | c=16 req/s | c=16 / nginx | c=16 p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in servers:
        m = med[name]
        lines.append(
            f"| {name} | {m[1]['rps']:,.0f} | {m[1]['p50'] * 1000:.0f} µs | +{(m[1]['p50'] - floor[1]['p50']) * 1000:.0f} µs "
            f"| {m[16]['rps']:,.0f} | {m[16]['rps'] / floor[16]['rps']:.2f} | {m[16]['p99'] * 1000:.0f} µs |"
        )
    lines += ["", "Resident memory after the load run, one iris version:", "", "| server | VmRSS | file-backed | anonymous |", "| --- | ---: | ---: | ---: |"]
    for name, m in memory.items():
        lines.append(f"| {name} | {m['VmRSS']:.1f} MiB | {m['RssFile']:.1f} MiB | {m['RssAnon']:.1f} MiB |")
    lines += [
        "",
        "Rounds (req/s, c=1 / c=16): "
        + "; ".join(f"{n}: " + ", ".join(f"{a_['rps']:,.0f}/{b['rps']:,.0f}" for a_, b in zip(rs[1], rs[16])) for n, rs in runs.items())
        + ".",
    ]
    report = "\n".join(lines)
    print(report)
    if a.write:
        write_section("handoff", "{stamp}, the hand-off to the instance and resident memory (issue 18)", report)


if __name__ == "__main__":
    main()
