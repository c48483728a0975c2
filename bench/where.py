#!/usr/bin/env python3
"""Where one `up`'s CPU goes per request, by thread and by crate, for the
same iris model over `/score` (HTTP/1.1 with wrk and with h2load, h2c with
h2load) and OIP gRPC (h2load), 16 connections of one request each.

perf samples the server (cpu-clock, FREQ Hz, no call chains, so it costs
the run little) while each load runs; the cases alternate over ROUNDS
rounds and the samples of all rounds are added up. Each sample is
1/FREQ s of the server's CPU; a group's figure is its samples turned into
microseconds, divided by the requests the load generator finished. The
groups: the thread (the HTTP workers, the instances' threads, the rest)
and where its samples fall (the kernel, ONNX Runtime, the guest's
compiled code, a Rust crate by the symbol's leading path, the allocator,
libc). Small groups are summed into "other".

Run through bench/where.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
from compare import BIN, Proc, cpu_ticks, deploy, free_port, machine, scratch, wait_for, write_section, wrk  # noqa: E402
from oip import ROW, grpc_body, grpc_check, h2load  # noqa: E402

KEY = compare.KEY
# Crates shown under one name: the HTTP stack's pieces, tokio's, gRPC's.
ALIASES = {
    "hyper_util": "hyper", "http": "hyper", "httparse": "hyper", "http_body_util": "hyper",
    "tokio_util": "tokio", "futures_util": "tokio", "futures_core": "tokio",
    "tonic": "tonic + prost", "tonic_prost": "tonic + prost", "prost": "tonic + prost",
    "core": "Rust core/alloc/std", "alloc": "Rust core/alloc/std", "std": "Rust core/alloc/std",
    "wasmtime_environ": "wasmtime", "wasmtime_wasi": "wasmtime", "cranelift": "wasmtime",
}


def thread(comm):
    if comm.startswith("tokio-rt-worke"):
        return "HTTP workers"
    if comm.startswith("replica-"):
        return "instances"
    return "other threads"


def place(dso, sym, exe):
    if dso == "[kernel.kallsyms]":
        return "kernel"
    if dso.endswith(".cwasm"):
        return "the guest (compiled Wasm)"
    if "onnxruntime" in dso:
        return "ONNX Runtime"
    if dso.startswith("libc.") or dso == "[vdso]":
        return "libc, vdso"
    if dso != exe:
        return dso.split(".")[0]
    if sym.startswith(("mi_", "_mi_")):
        return "allocator (mimalloc)"
    m = re.match(r"<?(?:&(?:mut )?)?(\w+)", sym)
    name = m.group(1) if m else sym
    return ALIASES.get(name, name)


def samples(data, exe):
    """(thread, place) -> samples, from one perf.data."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "comm,dso,sym", "-n", "-q"],
                         capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(.+?)\s{2,}(\S+)\s+\[.\]\s+(.*)", line)
        if m:
            counts[(thread(m.group(2)), place(m.group(3), m.group(4).strip(), exe))] += int(m.group(1))
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="target/compare/iris-rust.wasm")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--freq", type=int, default=2000)
    ap.add_argument("--binary", type=Path, default=BIN, help="the wasmscore to measure (default: the release build)")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = Path(scratch("wasmscore-where-"))
    port, gport, data = free_port(), free_port(), work / "data"
    up = Proc([str(a.binary), "up", "--port", str(port), "--grpc-port", str(gport), "--data-dir", str(data)], log=work / "up.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
        deploy(data, "iris", a.module, dc={"primary_key": KEY})
        grpc_check(f"127.0.0.1:{gport}", "iris", KEY)
        score = f"http://127.0.0.1:{port}/api/v1/service/iris/score"
        grpc = f"http://127.0.0.1:{gport}/inference.GRPCInferenceService/ModelInfer"
        lua = compare.lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})
        body = work / "score.json"
        body.write_text(json.dumps({"data": [ROW]}))
        grpc_req = grpc_body(work / "infer.grpc", "iris")
        sh = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
        gh = {"content-type": "application/grpc", "te": "trailers", "authorization": f"Bearer {KEY}"}
        cases = {
            "/score, HTTP/1.1, wrk": lambda s: wrk(score, 16, s, lua),
            "/score, HTTP/1.1, h2load": lambda s: h2load(score, 16, s, body, sh, h1=True),
            "/score, h2c, h2load": lambda s: h2load(score, 16, s, body, sh),
            "OIP gRPC, h2load": lambda s: h2load(grpc, 16, s, grpc_req, gh),
        }
        for run in cases.values():
            run(1)  # warm-up
        counts = {c: collections.Counter() for c in cases}
        requests = dict.fromkeys(cases, 0.0)
        # The server's CPU by /proc over the same runs: the samples' sum
        # should come close to it, or perf missed part of a run.
        ticks = dict.fromkeys(cases, 0)
        for r in range(a.rounds):
            for i, (case, run) in enumerate(cases.items()):
                perf = work / f"{r}-{i}.data"
                rec = subprocess.Popen(["perf", "record", "-q", "-F", str(a.freq), "-p", str(up.p.pid), "-o", str(perf), "--", "sleep", str(a.seconds)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                before = cpu_ticks(up.p.pid)
                out = run(a.seconds)
                ticks[case] += cpu_ticks(up.p.pid) - before
                rec.wait()
                assert out["errors"] == 0, (case, out)
                counts[case] += samples(perf, a.binary.name)
                requests[case] += out["rps"] * a.seconds
                perf.unlink()
                print(r, case, round(out["rps"]), flush=True)
    finally:
        up.stop()

    us = {c: {k: n * 1e6 / a.freq / requests[c] for k, n in counts[c].items()} for c in cases}
    totals = collections.Counter()
    for c in cases:
        totals.update(us[c])
    shown = [k for k, t in totals.most_common() if t / len(cases) >= 0.3]
    lines = [
        f"Machine: {machine()}. `bash bench/where.sh`: one `up` serving iris (examples/iris-rust, key auth, the default "
        f"autoscaling), 16 connections of one request each, {a.seconds} s per case, {a.rounds} rounds alternating between the "
        f"cases; perf cpu-clock at {a.freq} Hz on the server only; µs of the server's CPU per request (samples over requests, all "
        "rounds added). The load generator shares the two cores and is not counted.",
        "",
        "| thread | where | " + " | ".join(cases) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in cases) + " |",
    ]
    for k in shown:
        lines.append(f"| {k[0]} | {k[1]} | " + " | ".join(f"{us[c].get(k, 0):.2f}" for c in cases) + " |")
    lines.append("| | other | " + " | ".join(f"{sum(v for k, v in us[c].items() if k not in shown):.2f}" for c in cases) + " |")
    for t in ("HTTP workers", "instances"):
        lines.append(f"| {t}, all | | " + " | ".join(f"{sum(v for k, v in us[c].items() if k[0] == t):.2f}" for c in cases) + " |")
    lines.append("| **all** | | " + " | ".join(f"**{sum(us[c].values()):.2f}**" for c in cases) + " |")
    lines.append("| the server's CPU by /proc (utime + stime), for comparison | | " + " | ".join(
        f"{ticks[c] / os.sysconf('SC_CLK_TCK') * 1e6 / requests[c]:.2f}" for c in cases) + " |")
    lines.append("| req/s (mean of the rounds) | | " + " | ".join(f"{requests[c] / a.seconds / a.rounds:,.0f}" for c in cases) + " |")
    report = "\n".join(lines)
    print(report)
    if a.write:
        write_section("where", "{stamp}, where the server's CPU goes per request, by protocol (issues 15 and 18)", report)


if __name__ == "__main__":
    main()
