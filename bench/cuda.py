#!/usr/bin/env python3
"""The CUDA device, checked and measured on a machine with a GPU.

One `wasmscore up` built with `--features cuda`, ONNX Runtime from the
onnxruntime-gpu wheel (ORT_DYLIB_PATH), CUDA's libraries on
LD_LIBRARY_PATH. Each model is deployed twice, as two endpoints that
differ only in `device` ("cpu" or "cuda"):

  iris     examples/iris-rust + examples/iris/model.onnx (a whole model
           through ONNX Runtime's CUDA provider with IO binding);
  mlp-ops  examples/mlp-rust (its products through cuBLAS gemm, the
           elementwise ops on the CPU);
  mlp-big  examples/rows-rust + the MLP of bench/batch_models.py
           (256 -> 2048 -> 2048 -> 10, 4.7 M weights) at 1 and 256 rows.

Checks (each PASS or FAIL): `wasmscore devices` lists cuda as available;
every cuda answer matches the cpu answer to the same request (floats
within 1e-4 of each other, 2e-3 relative on the big MLP, where the CUDA
provider may use TF32); the Open Inference Protocol path on cuda; `show`
reports the cuda version's device use. Then, side by side: p50 and p99
of sequential requests, and req/s with 8 client threads, cpu vs cuda.

Only the standard library, plus numpy and onnx to make the big MLP.
Usage: python3 bench/cuda.py --bin BIN --modules DIR --out OUT_DIR
(DIR holds iris-rust.wasm, mlp-rust.wasm and rows-rust.wasm.)
"""

import argparse
import atexit
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "cuda-bench-key-0123456789abcdef01"
CHECKS = []


def check(name, ok, detail=""):
    CHECKS.append((name, bool(ok), detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)


class Client:
    """One keep-alive connection (opened again if the server closed it)."""

    def __init__(self, port, timeout=30):
        self.port, self.timeout = port, timeout
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def post(self, path, body):
        for attempt in (1, 2):
            try:
                self.c.request("POST", path, body=body, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
                r = self.c.getresponse()
                return r.status, r.read()
            except (ConnectionError, http.client.HTTPException):
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt == 2:
                    raise


def floats(x):
    """Every number in a JSON value, in order."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return []
    if isinstance(x, (int, float)):
        return [float(x)]
    if isinstance(x, list):
        return [f for v in x for f in floats(v)]
    return [f for k in sorted(x) if k not in ("devices", "model_version", "id") for f in floats(x[k])]


def diff(a, b):
    fa, fb = floats(a), floats(b)
    if len(fa) != len(fb) or not fa:
        return None
    return max(abs(x - y) for x, y in zip(fa, fb)), max(abs(x) for x in fa)


def latency(port, path, body, n):
    c = Client(port)
    for _ in range(10):
        c.post(path, body)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s, _ = c.post(path, body)
        times.append((time.perf_counter() - t) * 1e3)
        assert s == 200, s
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def throughput(port, path, body, threads, seconds):
    done, errors = [0] * threads, [0] * threads
    stop = time.perf_counter() + seconds

    def work(i):
        c = Client(port)
        while time.perf_counter() < stop:
            s, _ = c.post(path, body)
            done[i] += 1
            errors[i] += s != 200

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t = time.perf_counter()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return sum(done) / (time.perf_counter() - t), sum(errors)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--modules", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wasmscore-cuda-"))
    atexit.register(shutil.rmtree, work, True)
    subprocess.run([sys.executable, str(ROOT / "bench/batch_models.py"), str(work / "models")], check=True, capture_output=True)
    mods = Path(a.modules)
    iris_row = [5.1, 3.5, 1.4, 0.2]
    big_row = lambda i: [round(((i * 31 + j) * 7 % 97) / 97, 4) for j in range(256)]  # noqa: E731
    models = {
        "iris": (mods / "iris-rust.wasm", ROOT / "examples/iris/model.onnx", {1: {"data": [iris_row]}, 32: {"data": [iris_row] * 32}}, 1e-4),
        "mlp-ops": (mods / "mlp-rust.wasm", None, {32: {"data": [[(i * j % 13) / 13 for j in range(16)] for i in range(32)]}}, 1e-4),
        "mlp-big": (mods / "rows-rust.wasm", work / "models/mlp/model.onnx", {1: {"data": [big_row(0)]}, 256: {"data": [big_row(i) for i in range(256)]}}, 2e-3),
    }
    port = 18000 + os.getpid() % 1000
    data = work / "data"
    log = open(out / "up.log", "w")
    up = subprocess.Popen([a.bin, "up", "--port", str(port), "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT)
    report = {"checks": [], "latency": {}, "throughput": {}}
    try:
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/v2/health/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        devices = run([a.bin, "devices", "--data-dir", str(data)]).stdout
        print(devices)
        report["devices"] = devices
        cuda_line = next((line for line in devices.splitlines() if line.startswith("cuda")), "")
        check("wasmscore devices lists cuda as available", cuda_line and "not available" not in cuda_line, cuda_line)
        for name, (module, model, _, _) in models.items():
            for dev in ("cpu", "cuda"):
                dc = work / f"{name}-{dev}.json"
                dc.write_text(json.dumps({"primary_key": KEY, "num_replicas": 1, "replica_max_concurrent_requests": 8, "device": dev}))
                cmd = [a.bin, "deploy", "--data-dir", str(data), "--name", f"{name}-{dev}", "--module", str(module), "--dc", str(dc), "--wait"]
                if model:
                    cmd[cmd.index("--dc"):cmd.index("--dc")] = ["--model", str(model)]
                r = run(cmd)
                check(f"deploy {name} on {dev}", r.returncode == 0, (r.stderr or r.stdout).strip()[-300:] if r.returncode else "")
        hung = set()
        # The first request to each endpoint, timed (a device's first run
        # loads its kernels); one that hangs gets the server's threads dumped.
        for name, (_, _, bodies, _) in models.items():
            for dev in ("cpu", "cuda"):
                first = Client(port, timeout=60)
                t = time.perf_counter()
                try:
                    st, b = first.post(f"/api/v1/service/{name}-{dev}/score", json.dumps(next(iter(bodies.values()))))
                    print(f"first request to {name}-{dev}: {st} in {time.perf_counter() - t:.2f} s {b[:200]!r}", flush=True)
                except TimeoutError:
                    check(f"first request to {name}-{dev} answered within 60 s", False)
                    hung.add(name)
                    if not (out / "threads.txt").exists():
                        bt = run(["cuda-gdb", "-p", str(up.pid), "-batch", "-ex", "info threads", "-ex", "thread apply all bt 30"])
                        (out / "threads.txt").write_text(bt.stdout + bt.stderr)
                        print(bt.stdout[-5000:], flush=True)
                    continue
                report.setdefault("first_request_s", {})[f"{name}-{dev}"] = time.perf_counter() - t
        models = {k: v for k, v in models.items() if k not in hung}
        c = Client(port)
        for name, (_, _, bodies, tol) in models.items():
            for rows, body in bodies.items():
                answers = {}
                for dev in ("cpu", "cuda"):
                    s, b = c.post(f"/api/v1/service/{name}-{dev}/score", json.dumps(body))
                    answers[dev] = (s, json.loads(b) if b else None)
                (sc, jc), (sg, jg) = answers["cpu"], answers["cuda"]
                d = diff(jc, jg) if sc == sg == 200 else None
                ok = d is not None and d[0] <= tol * max(1.0, d[1])
                check(f"{name}, {rows} rows: cuda answers as cpu does", ok, f"status {sc}/{sg}, max |cpu - cuda| {d[0]:.2e}" if d else f"{sc} {str(jc)[:200]} / {sg} {str(jg)[:200]}")
        infer = json.dumps({"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": iris_row + [6.7, 3.0, 5.2, 2.3]}]})
        oip = {dev: c.post(f"/v2/models/iris-{dev}/infer", infer) for dev in ("cpu", "cuda")}
        d = diff(json.loads(oip["cpu"][1])["outputs"], json.loads(oip["cuda"][1])["outputs"]) if oip["cpu"][0] == oip["cuda"][0] == 200 else None
        check("Open Inference Protocol infer on cuda answers as on cpu", d is not None and d[0] <= 1e-4, f"{oip['cuda'][0]} {oip['cuda'][1][:300]!r}")
        for name in models:
            for rows, body in models[name][2].items():
                for dev in ("cpu", "cuda"):
                    key = f"{name} x{rows} {dev}"
                    path = f"/api/v1/service/{name}-{dev}/score"
                    try:
                        report["latency"][key] = latency(port, path, json.dumps(body), a.requests)
                        report["throughput"][key] = throughput(port, path, json.dumps(body), 8, a.seconds)
                    except Exception as e:  # a failed deploy was reported above; measure the rest
                        report["latency"][key], report["throughput"][key] = (float("nan"),) * 2, (float("nan"), repr(e))
                    print(key, report["latency"][key], report["throughput"][key], flush=True)
        try:
            smi = run(["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"]).stdout.strip()
        except OSError as e:
            smi = f"nvidia-smi: {e}"
        report["gpu"] = smi
        shows = {}
        for name in models:
            r = run([a.bin, "endpoint", "show", "--data-dir", str(data), "--json", f"{name}-cuda"])
            shows[name] = json.loads(r.stdout) if r.returncode == 0 else r.stderr
        report["show"] = shows
        used = json.dumps(shows)
        check("show reports device use on cuda", '"cuda"' in used, used[:600])
    except Exception as e:
        check("the run finished", False, repr(e))
    finally:
        up.terminate()
        try:
            up.wait(timeout=20)
        except subprocess.TimeoutExpired:
            check("up stops within 20 s of SIGTERM", False)
            up.kill()
            up.wait()
        log.close()
    report["checks"] = CHECKS
    (out / "cuda.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [
        f"GPU: {report.get('gpu', '?')}. `bench/cuda.sh` (python3 bench/cuda.py): one `up` built with `--features cuda`, "
        "each model deployed twice, differing only in `device`; sequential requests on one connection "
        f"({a.requests} each) for p50/p99, then 8 client threads for {a.seconds:.0f} s for req/s.",
        "",
        "| model, rows per request | cpu p50 | cuda p50 | cpu p99 | cuda p99 | cpu req/s | cuda req/s | cuda / cpu req/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in models:
        for rows in models[name][2]:
            nan = (float("nan"),) * 2
            lc, lg = report["latency"].get(f"{name} x{rows} cpu", nan), report["latency"].get(f"{name} x{rows} cuda", nan)
            tc, tg = report["throughput"].get(f"{name} x{rows} cpu", nan)[0], report["throughput"].get(f"{name} x{rows} cuda", nan)[0]
            lines.append(f"| {name}, {rows} | {lc[0]:.2f} ms | {lg[0]:.2f} ms | {lc[1]:.2f} ms | {lg[1]:.2f} ms | {tc:,.0f} | {tg:,.0f} | {tg / tc:.2f} |")
    lines += ["", "Checks: " + "; ".join(f"{'PASS' if ok else 'FAIL'} {n}" for n, ok, _ in CHECKS) + "."]
    (out / "cuda.md").write_text("\n".join(lines) + "\n")
    (out / "cuda.json").write_text(json.dumps(report, indent=1, default=str))
    print("\n".join(lines))
    sys.exit(0 if all(ok for _, ok, _ in CHECKS) else 1)


if __name__ == "__main__":
    main()
