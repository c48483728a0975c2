#!/usr/bin/env python3
"""The cost of watching on the request path, side by side in one run.

Two builds of `wasmscore up`, each serving the Rust iris module with a key:
`before` (a binary built from a commit before the request-path metrics and
traces: --before BIN) and `now` (target/release/wasmscore: the request
duration histogram, answers by status class, queue wait and run time
histograms, a trace span per request). wrk at 16 connections, rounds
alternating between the two (so drift on this shared machine hits both);
the median req/s and p50 of each, and the ratio.

Run through bench/observe.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, MODEL, Proc, free_port, lua_file, machine, scratch, wait_for, write_section, wrk  # noqa: E402


def serve(binary, work, module):
    port = free_port()
    data = Path(work) / f"data-{port}"
    proc = Proc([str(binary), "up", "--port", str(port), "--data-dir", str(data)], log=Path(work) / f"up-{port}.log")
    wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
    subprocess.run([str(binary), "deploy", "--data-dir", str(data), "--name", "iris", "--module", str(module), "--model", str(MODEL)],
                   check=True, capture_output=True)
    keys = subprocess.run([str(binary), "service", "get-keys", "--data-dir", str(data), "iris"], check=True, capture_output=True, text=True)
    import json
    key = json.loads(keys.stdout)["primaryKey"]
    return proc, port, key


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = scratch("wasmscore-observe-")
    servers = {}
    try:
        for name, binary in (("before", a.before), ("now", BIN)):
            servers[name] = serve(binary, work, a.module)
        runs = {name: [] for name in servers}
        for _ in range(a.rounds):
            for name, (_, port, key) in servers.items():
                lua = lua_file(work, f"{name}.lua", {"Authorization": f"Bearer {key}"})
                r = wrk(f"http://127.0.0.1:{port}/api/v1/service/iris/score", 16, a.seconds, lua)
                assert r["errors"] == 0, r
                runs[name].append(r)
                print(name, round(r["rps"]), r["p50"], flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.stop()
    med = {n: (statistics.median(r["rps"] for r in rs), statistics.median(r["p50"] for r in rs)) for n, rs in runs.items()}
    ratio = med["now"][0] / med["before"][0]
    report = "\n".join([
        f"Machine: {machine()}. `bash bench/observe.sh`; Rust iris with key auth, wrk 16 connections, "
        f"{a.rounds} rounds of {a.seconds} s alternating between the two builds.",
        "",
        "| build | req/s (median) | p50 (median) |",
        "| --- | ---: | ---: |",
        f"| before (no request-path histograms, no trace span) | {med['before'][0]:,.0f} | {med['before'][1] * 1000:.0f} µs |",
        f"| now (histograms, status classes, queue and run histograms, a trace span) | {med['now'][0]:,.0f} | {med['now'][1] * 1000:.0f} µs |",
        "",
        f"Ratio now / before: {ratio:.3f} (aim: within 3%, that is at least 0.97).",
        "",
        "Rounds (req/s): " + "; ".join(f"{n}: " + ", ".join(f"{r['rps']:,.0f}" for r in rs) for n, rs in runs.items()) + ".",
    ])
    print(report)
    if a.write:
        write_section("observe", "{stamp}, the cost of watching (issue 16)", report)


if __name__ == "__main__":
    main()
