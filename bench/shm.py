#!/usr/bin/env python3
"""Triton's system shared memory extension against sending the tensor, in
one run: an FP32 identity model served with no module (`deploy --model`),
called by tritonclient.http (binary tensor extension) and tritonclient.grpc
(raw contents), each with the input and output in the request and response,
then in shared memory regions (tritonclient.utils.shared_memory), at three
tensor sizes. One client, one call at a time; the figure is the median
time of a call as the client sees it (its own encoding and decoding
included), and the ratio of the two ways.

Run through bench/shm.sh (it makes the model and writes a section of
BENCHMARKS.md). Usage: .venv-clients/bin/python bench/shm.py MODEL_ONNX [--seconds S] [--write]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, Proc, cli, free_port, machine, scratch, wait_for, write_section  # noqa: E402

KEY = "shm-bench-key-0123456789abcdef"
SIZES = [4 * 1024, 1024 * 1024, 16 * 1024 * 1024]  # bytes of FP32


def timed(call, seconds):
    """Median and count of call()'s times over `seconds` (at least 10 calls)."""
    for _ in range(3):
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = Path(scratch("shm-"))
    port, gport = free_port(), free_port()
    data = work / "data"
    up = Proc([str(BIN), "up", "--port", str(port), "--grpc-port", str(gport), "--data-dir", str(data)], log=work / "up.log")
    wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
    dc = work / "dc.json"
    dc.write_text(json.dumps({"primary_key": KEY}))
    cli("deploy", "--data-dir", str(data), "--name", "echo", "--model", a.model, "--dc", str(dc))
    admin = {"authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"}
    # Lower case for gRPC's metadata; a copy for each call, as tritonclient
    # writes its own headers into the dict it is given.
    key = {"authorization": f"Bearer {KEY}"}
    clients = {
        "REST": (th, th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=120, network_timeout=120)),
        "gRPC": (tg, tg.InferenceServerClient(f"127.0.0.1:{gport}")),
    }
    rows = []
    for size in SIZES:
        x = np.arange(size // 4, dtype=np.float32)
        ip = shm.create_shared_memory_region("in", "/wasmscore-bench-in", size)
        op = shm.create_shared_memory_region("out", "/wasmscore-bench-out", size)
        shm.set_shared_memory_region(ip, [x])
        try:
            for proto, (mod, c) in clients.items():
                c.unregister_system_shared_memory(headers=admin)
                c.register_system_shared_memory("in", "/wasmscore-bench-in", size, headers=admin)
                c.register_system_shared_memory("out", "/wasmscore-bench-out", size, headers=admin)

                def sent():
                    i = mod.InferInput("X", [x.size], "FP32")
                    i.set_data_from_numpy(x)
                    r = c.infer("echo", [i], outputs=[mod.InferRequestedOutput("Y")], headers=dict(key))
                    return r.as_numpy("Y")

                def shared():
                    i = mod.InferInput("X", [x.size], "FP32")
                    i.set_shared_memory("in", size)
                    o = mod.InferRequestedOutput("Y")
                    o.set_shared_memory("out", size)
                    c.infer("echo", [i], outputs=[o], headers=dict(key))
                    return shm.get_contents_as_numpy(op, np.float32, [x.size])

                if not (np.array_equal(sent(), x) and np.array_equal(shared(), x)):
                    raise SystemExit(f"{proto} {size}: the model's answer is not its input")
                t_sent, n_sent = timed(sent, a.seconds)
                t_shm, n_shm = timed(shared, a.seconds)
                rows.append((proto, size, t_sent, n_sent, t_shm, n_shm))
                print(f"{proto} {size} B: sent {t_sent * 1e3:.3f} ms ({n_sent}), shared memory {t_shm * 1e3:.3f} ms ({n_shm})", flush=True)
        finally:
            shm.destroy_shared_memory_region(ip)
            shm.destroy_shared_memory_region(op)
    up.stop()
    table = ["| protocol | tensor | sent in the call, p50 | in shared memory, p50 | ratio (sent / shared) |", "| --- | ---: | ---: | ---: | ---: |"]
    for proto, size, t_sent, n_sent, t_shm, n_shm in rows:
        label = f"{size // 1024} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
        table.append(f"| {proto} | {label} | {t_sent * 1e3:.3f} ms ({n_sent} calls) | {t_shm * 1e3:.3f} ms ({n_shm} calls) | {t_sent / t_shm:.2f}x |")
    report = "\n".join(table)
    print(report)
    if a.write:
        write_section(
            "shm",
            "Shared memory against sending the tensor ({stamp}, written by bench/shm.sh)",
            "Command: `bench/shm.sh` (`.venv-clients/bin/python bench/shm.py MODEL --write`). "
            f"{machine().split('; wrk')[0]}; the client shares the cores with the server.\n\n"
            "An FP32 identity model with no module, one tritonclient call at a time: the input and the "
            "output in the call (REST's binary extension, gRPC's raw contents), then both in system shared "
            "memory regions. Times are the client's, its encoding and decoding included.\n\n" + report,
        )


if __name__ == "__main__":
    main()
