#!/usr/bin/env python3
"""HTTP/2 streams on their connection's task vs a task per stream, side by
side in one run: two `wasmscore up` of this build that differ only in
WASMSCORE_H2_SPAWN (unset: a connection's streams are polled on its own
task, runtime/remote/src/streams.rs; 1: hyper spawns each stream as a
tokio task, as before). Rust iris with key auth. h2load, a fixed number of
requests per case, rounds alternating between the two servers: `/score`
over HTTP/1.1 (no streams: the control) and over h2c, and OIP gRPC
ModelInfer, each with 16 connections of one stream and with 4 connections
of 8 streams (how a gRPC client multiplexes its calls on one channel).
Beside req/s, the server's CPU time per request (utime + stime from
/proc), which the load generator sharing the 2 cores disturbs less.

Run through bench/h2.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, KEY, MODEL, Proc, cpu_ticks, free_port, machine, scratch, wait_for, write_section  # noqa: E402
from oip import ROW, grpc_body, grpc_check  # noqa: E402

CASES = [  # (label, protocol, connections, streams per connection)
    ("/score, HTTP/1.1", "h1", 16, 1),
    ("/score, h2c", "h2c", 16, 1),
    ("OIP gRPC", "grpc", 16, 1),
    ("/score, h2c", "h2c", 4, 8),
    ("OIP gRPC", "grpc", 4, 8),
]


def h2load(proto, port, gport, conns, streams, n, work):
    args = ["h2load", "-c", str(conns), "-m", str(streams), "-t", "2", "-n", str(n), "-H", f"authorization: Bearer {KEY}"]
    if proto == "grpc":
        args += ["-d", str(work / "body.grpc"), "-H", "content-type: application/grpc", "-H", "te: trailers",
                 f"http://127.0.0.1:{gport}/inference.GRPCInferenceService/ModelInfer"]
    else:
        args += ["-d", str(work / "score.json"), "-H", "content-type: application/json"]
        args += ["--h1"] if proto == "h1" else []
        args += [f"http://127.0.0.1:{port}/api/v1/service/iris/score"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert int(codes.group(1)) == n, (args, out[-600:])
    return float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True, help="examples/iris-rust built")
    ap.add_argument("--requests", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = Path(scratch("wasmscore-h2-"))
    (work / "score.json").write_text('{"data": [[%s]]}' % ", ".join(map(str, ROW)))
    (work / "dc.json").write_text('{"primary_key": "%s"}' % KEY)
    grpc_body(work / "body.grpc", "iris")
    servers = {}
    try:
        for name, spawn in (("streams on the connection's task", None), ("a task per stream (before)", "1")):
            port, gport = free_port(), free_port()
            env = {k: v for k, v in os.environ.items() if k != "WASMSCORE_H2_SPAWN"}
            if spawn:
                env["WASMSCORE_H2_SPAWN"] = spawn
            data = work / f"data-{len(servers)}"
            p = Proc([str(BIN), "up", "--port", str(port), "--grpc-port", str(gport), "--data-dir", str(data)], log=work / f"up-{len(servers)}.log", env=env)
            servers[name] = (p, port, gport)
            wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
            subprocess.run([str(BIN), "deploy", "--data-dir", str(data), "--name", "iris", "--module", a.module, "--model", str(MODEL),
                            "--dc", str(work / "dc.json")], check=True, capture_output=True)
            grpc_check(f"127.0.0.1:{gport}", "iris", KEY)
        for p, port, gport in servers.values():  # warm-up (and autoscale)
            for _, proto, c, m in CASES:
                h2load(proto, port, gport, c, m, a.requests // 4, work)
        runs = {}
        for _ in range(a.rounds):
            for case in CASES:
                for name, (p, port, gport) in servers.items():
                    before = cpu_ticks(p.p.pid)
                    rps = h2load(case[1], port, gport, case[2], case[3], a.requests, work)
                    us = (cpu_ticks(p.p.pid) - before) / os.sysconf("SC_CLK_TCK") * 1e6 / a.requests
                    runs.setdefault((case, name), []).append((rps, us))
                    print(f"{name:34s} {case[0]:18s} c={case[2]:2d} m={case[3]} {rps:8.0f} req/s {us:6.1f} µs cpu/req", flush=True)
    finally:
        for p, _, _ in servers.values():
            p.stop()
    new, old = list(servers)
    lines = [
        f"Machine: {machine().replace('wrk', 'h2load')}. `bash bench/h2.sh`; Rust iris with key auth; two `up` of this build that differ only in "
        f"`WASMSCORE_H2_SPAWN` (unset / 1); h2load, {a.requests:,} requests per case, {a.rounds} rounds alternating between "
        "the two; medians. CPU is the server's utime + stime per request.",
        "",
        "| route | connections x streams | req/s, streams on the connection's task | req/s, a task per stream | ratio | CPU µs/req, on the connection's task | CPU µs/req, a task per stream |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in CASES:
        n, o = runs[(case, new)], runs[(case, old)]
        rn, ro = statistics.median(x[0] for x in n), statistics.median(x[0] for x in o)
        cn, co = statistics.median(x[1] for x in n), statistics.median(x[1] for x in o)
        lines.append(f"| {case[0]} | {case[2]} x {case[3]} | {rn:,.0f} | {ro:,.0f} | {rn / ro:.2f} | {cn:.1f} | {co:.1f} |")
    lines += ["", "Rounds (req/s, on the connection's task / a task per stream): " + "; ".join(
        f"{c[0]} {c[2]}x{c[3]}: " + ", ".join(f"{x[0]:,.0f}/{y[0]:,.0f}" for x, y in zip(runs[(c, new)], runs[(c, old)])) for c in CASES) + "."]
    body = "\n".join(lines)
    print(body)
    if a.write:
        write_section("h2streams", "{stamp}, HTTP/2 streams on their connection's task (issue 15)", body)


if __name__ == "__main__":
    main()
