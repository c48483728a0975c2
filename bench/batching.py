#!/usr/bin/env python3
"""Transparent dynamic batching, side by side in one run: one `wasmscore
up` serving the MLP of bench/batch_models.py (256 -> 2048 -> 2048 -> 10)
through examples/rows-rust three times, as three endpoints that differ
only in `batching`: off, on with max_queue_delay_us 0 (merge only what
waits) and on with 500 µs. Each has one replica of 64 instances, so 64
calls can be in `inference` at once. wrk with 64 connections of
single-row requests, rounds alternating between the cases; median req/s,
p50 and p99, and the batcher's own figures from `show`. Beside it, ONNX
Runtime alone in Python (one thread, as our sessions run): time per row
at batch 1 and 32, the ceiling of what merging can give on this model.

Run through bench/batching.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, MODEL, Proc, free_port, machine, scratch, wait_for, write_section, wrk  # noqa: E402

KEY = "batching-bench-key-0123456789abcdef"
CASES = [
    ("off", None),
    ("on, delay 0", {"max_batch_size": 32, "max_queue_delay_us": 0}),
    ("on, delay 500 µs", {"max_batch_size": 32, "max_queue_delay_us": 500}),
]
# Where batching cannot pay: iris (2.5 µs a run) through examples/iris-rust.
IRIS_CASES = [("iris, off", None), ("iris, on, delay 0", {"max_batch_size": 32, "max_queue_delay_us": 0})]


def ort_alone(model):
    import numpy as np
    import onnxruntime as o

    so = o.SessionOptions()
    so.intra_op_num_threads = 1
    s = o.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    per_row = {}
    for n in (1, 32):
        x = np.random.default_rng(1).random((n, 256), dtype=np.float32)
        for _ in range(5):
            s.run(None, {"X": x})
        k = 200 if n == 1 else 20
        t = time.perf_counter()
        for _ in range(k):
            s.run(None, {"X": x})
        per_row[n] = (time.perf_counter() - t) / k / n * 1e6
    return per_row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--iris-module", required=True)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = Path(scratch("wasmscore-batching-"))
    row = [round((i * 7 % 97) / 97, 4) for i in range(256)]
    luas = {}
    for kind, body in (("mlp", {"data": [row]}), ("iris", {"data": [[5.1, 3.5, 1.4, 0.2]]})):
        luas[kind] = work / f"{kind}.lua"
        luas[kind].write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = '{json.dumps(body)}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
        )
    every = [(c, b, "mlp") for c, b in CASES] + [(c, b, "iris") for c, b in IRIS_CASES]
    lua = {c: luas[kind] for c, _, kind in every}
    port = free_port()
    data = work / "data"
    up = Proc([str(BIN), "up", "--port", str(port), "--data-dir", str(data)], log=work / "up.log")
    names = {}
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
        for i, (case, batching, kind) in enumerate(every):
            name = f"{kind}{i}"
            names[case] = name
            module, model = (a.module, a.model) if kind == "mlp" else (a.iris_module, str(MODEL))
            dc = {"primary_key": KEY, "num_replicas": 1, "replica_max_concurrent_requests": 64}
            if batching:
                dc["batching"] = batching
            (work / f"{name}.json").write_text(json.dumps(dc))
            subprocess.run(
                [str(BIN), "deploy", "--data-dir", str(data), "--name", name, "--module", module, "--model", model, "--dc", str(work / f"{name}.json")],
                check=True,
                capture_output=True,
            )
            wrk(f"http://127.0.0.1:{port}/api/v1/service/{name}/score", 64, 2, lua[case])
        runs = {case: [] for case, _, _ in every}
        for _ in range(a.rounds):
            for case, _, _ in every:
                r = wrk(f"http://127.0.0.1:{port}/api/v1/service/{names[case]}/score", 64, a.seconds, lua[case])
                assert r["errors"] == 0, r
                runs[case].append(r)
                print(case, round(r["rps"]), r["p50"], r["p99"], flush=True)
        shown = {}
        for case, name in names.items():
            out = subprocess.run([str(BIN), "endpoint", "show", "--data-dir", str(data), "--json", name], check=True, capture_output=True, text=True)
            b = json.loads(out.stdout)["versions"][0].get("batching")
            shown[case] = b["models"][Path(a.model if case in dict(CASES) else MODEL).name] if b else None
    finally:
        up.stop()
    alone = ort_alone(a.model)
    med = {c: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")} for c, rs in runs.items()}
    base = {c: med["off"]["rps"] for c, _ in CASES} | {c: med["iris, off"]["rps"] for c, _ in IRIS_CASES}
    lines = [
        f"Machine: {machine()}. `bash bench/batching.sh`; the MLP of bench/batch_models.py (256 -> 2048 -> 2048 -> 10, "
        "4.7 M float32 weights) behind examples/rows-rust; one `up`, three endpoints that differ only in `batching`, "
        f"each one replica of 64 instances; wrk 64 connections, single-row requests, {a.rounds} rounds of {a.seconds} s "
        "alternating between the cases.",
        "",
        "| batching | req/s (median) | / off | p50 | p99 | mean batch | mean wait | fallbacks |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, _, _ in every:
        m, s = med[case], shown[case]
        batch = f"{s['mean_batch_size']:.1f}" if s else "1"
        wait = f"{s['mean_wait_us'] / 1000:.2f} ms" if s else "-"
        fb = f"{s['fallbacks']}" if s else "-"
        lines.append(
            f"| {case} | {m['rps']:,.0f} | {m['rps'] / base[case]:.2f} | {m['p50']:.1f} ms | {m['p99']:.1f} ms | {batch} | {wait} | {fb} |"
        )
    lines += [
        "",
        f"ONNX Runtime alone (Python, one thread): {alone[1]:.0f} µs per row at batch 1, {alone[32]:.0f} µs per row at "
        f"batch 32 ({alone[1] / alone[32]:.1f}x): the most merging can give on this model, on this CPU. One row is a "
        "matrix-vector product that reads all 19 MB of weights; a batch reads them once.",
        "",
        "Triton's dynamic batcher tutorial reports about 3x the throughput on its GPU model with batching on; here the "
        "gain comes from the same place (weights read once per batch) on a CPU. Where CPU batching gains nothing: "
        "small models whose run is dominated by fixed costs outside the matrix product (the iris rows: a run takes "
        "2.5 µs, and merging adds copies in and out and a wake-up of each waiting thread), and models already "
        "compute-bound per row. The probe refuses models whose rows are not independent (bench/batch_models.py's centered model); the e2e test "
        "`batching` checks both.",
        "",
        "Rounds (req/s): " + "; ".join(f"{c}: " + ", ".join(f"{r['rps']:,.0f}" for r in rs) for c, rs in runs.items()) + ".",
    ]
    report = "\n".join(lines)
    print(report)
    if a.write:
        write_section("batching", "{stamp}, transparent dynamic batching (issue 18)", report)


if __name__ == "__main__":
    main()
