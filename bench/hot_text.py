#!/usr/bin/env python3
"""Writes runtime/cli/hot-text.txt: the request path's functions, for the
linker to put together (runtime/cli/build.rs).

One `up` serving the Rust iris module and a model-only version of the
same model, under load on every route a client uses: `/score` (wrk), OIP
REST with JSON and binary tensors (wrk), OIP gRPC (h2load: 16 connections
of one call, one connection of 16 calls), at 16 and 1 connections, and
the GET routes (metrics, health, metadata) on new connections between
them. Two ways of seeing which functions that runs, both with perf (its
software events: this needs no hardware counters):
- samples at 10 kHz (cpu-clock): the functions that take the time, most
  sampled first in the list;
- every page fault: the `up` hands back all of its code after the deploys
  (`WASMSCORE_PAGE_OUT=all`), so the first call of a function on a page
  not yet back faults at that function. These find what is brief and rare
  (a connection's set-up, the monitor's tick), which samples miss.
A fault maps the pages around it too, so a function beside one that
faulted first is not seen; `--merge` keeps the list's names as well, and
bench/hot_text.sh runs twice, the second time on a build linked with the
first list. The names go between the markers wasmscore_hot_text_begin and
_end (runtime/control/src/pages.rs).

The names are the binary's mangled symbols, whose hashes hold while a
function's crate and its generic arguments do: a list made before a change
still names most of the build's path after it, and the linker skips the
names it no longer has (the cli crate's test `hot_text` says how many).
Run again after a change to the request path: bench/hot_text.sh.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, KEY, MODEL, Proc, deploy, free_port, scratch, wait_for, wrk  # noqa: E402
from oip import ROW, grpc_body, grpc_check, h2load, lua, rest_bodies  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runtime/cli/hot-text.txt"
BEGIN, END = "wasmscore_hot_text_begin", "wasmscore_hot_text_end"
# A build hands its pages back 2 s after it ends (runtime/control/src/pages.rs).
HAND_BACK = 3


def gets(port, data, stop):
    """The GET routes a platform polls, a few a second, while the load runs."""
    key = {"Authorization": f"Bearer {KEY}"}
    admin = {"Authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"}
    paths = [("/metrics", admin), ("/v2/health/ready", {}), ("/v2/health/live", {}), ("/v2", {}),
             ("/v2/models/iris", key), ("/v2/models/iris/ready", key)]
    while not stop.is_set():
        for p, auth in paths:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{p}", headers=auth)
            with urllib.request.urlopen(req, timeout=5) as r:
                r.read()
        stop.wait(0.2)


def load(port, gport, work, seconds):
    auth = {"Authorization": f"Bearer {KEY}"}
    json_body, head, binary_body = rest_bodies()
    rest = {
        "/api/v1/service/iris/score": lua(work / "score.lua", json.dumps({"data": [ROW]}).encode(), {"Content-Type": "application/json", **auth}),
        "/api/v1/service/iris-model/score": lua(work / "model.lua", json.dumps({"inputs": {"X": [ROW]}}).encode(),
                                                {"Content-Type": "application/json", **auth}),
        "/v2/models/iris/infer": lua(work / "json.lua", json_body, {"Content-Type": "application/json", **auth}),
        "/v2/models/iris-model/infer": lua(work / "binary.lua", binary_body,
                                           {"Inference-Header-Content-Length": str(len(head)), **auth}),
    }
    grpc = grpc_body(work / "infer.grpc", "iris")
    headers = {"content-type": "application/grpc", "te": "trailers", "authorization": f"Bearer {KEY}"}
    url = f"http://127.0.0.1:{gport}/inference.GRPCInferenceService/ModelInfer"
    for conns in (16, 1):
        for path, script in rest.items():
            r = wrk(f"http://127.0.0.1:{port}{path}", conns, seconds, script)
            assert r["errors"] == 0, (path, r)
            print(f"{path} at {conns}: {r['rps']:,.0f} req/s", flush=True)
        r = h2load(url, conns, seconds, grpc, headers, streams=1 if conns > 1 else 16)
        assert r["errors"] == 0, r
        print(f"gRPC ModelInfer at {conns}: {r['rps']:,.0f} req/s", flush=True)


# perf script -F event,ip,sym,addr,dso: a sample's event, the address it
# touched (page faults) with its symbol, and where it ran.
SAMPLE = re.compile(r"^(\S+):\s+([0-9a-f]+)(?: (\S+) \(([^)]*)\))?\s+([0-9a-f]+) (\S+) \(([^)]*)\)$")


def hot_symbols(perf_data, binary):
    """The functions of `binary` in the samples, the most sampled first,
    then those a page fault found first, and how many of each."""
    out = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "event,ip,sym,addr,dso", "--no-demangle"],
                         capture_output=True, text=True, check=True).stdout
    samples, faults = collections.Counter(), collections.Counter()
    for line in out.splitlines():
        m = SAMPLE.match(line.strip())
        if not m or m.group(7) != str(binary) or m.group(6) == "[unknown]":
            continue
        if m.group(1).startswith("cpu-clock"):
            samples[m.group(6)] += 1
        elif m.group(2) == m.group(5):  # the fault fetched the code it ran
            faults[m.group(6)] += 1
    ranked = [s for _, s in sorted(((-n, s) for s, n in samples.items()))]
    return ranked + sorted(set(faults) - set(samples)), len(samples), len(set(faults) - set(samples))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True, help="examples/iris-rust built")
    ap.add_argument("--seconds", type=int, default=4, help="per route and connection count")
    ap.add_argument("--merge", action="store_true", help="keep the names the list has too")
    a = ap.parse_args()
    work = Path(scratch("wasmscore-hot-"))
    port, gport, data = free_port(), free_port(), work / "data"
    env = {**os.environ, "WASMSCORE_PAGE_OUT": "all"}
    up = Proc([str(BIN), "up", "--port", str(port), "--grpc-port", str(gport), "--data-dir", str(data)], env=env, log=work / "up.log")
    stop = threading.Event()
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
        deploy(data, "iris", a.module, dc={"primary_key": KEY})
        dc = work / "model-dc.json"
        dc.write_text(json.dumps({"primary_key": KEY}))
        subprocess.run([str(BIN), "deploy", "--data-dir", str(data), "--name", "iris-model", "--model", str(MODEL), "--dc", str(dc)],
                       check=True, capture_output=True)
        grpc_check(f"127.0.0.1:{gport}", "iris", KEY)
        time.sleep(HAND_BACK)
        perf_data = work / "perf.data"
        events = ["-e", "cpu-clock/freq=10000/", "-e", "page-faults/period=1/", "-d"]
        perf = subprocess.Popen(["perf", "record", "-q", *events, "-p", str(up.p.pid), "-o", str(perf_data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        poller = threading.Thread(target=gets, args=(port, data, stop), daemon=True)
        poller.start()
        load(port, gport, work, a.seconds)
        stop.set()
        poller.join()
        perf.send_signal(2)
        perf.wait(timeout=60)
    finally:
        stop.set()
        up.stop()
    symbols, sampled, faulted = hot_symbols(perf_data, BIN.resolve())
    assert sampled > 100, f"only {sampled} functions sampled: is perf allowed here (perf_event_paranoid)?"
    if a.merge and OUT.exists():
        new = set(symbols)
        symbols += [s for s in OUT.read_text().split() if s not in new and s not in (BEGIN, END)]
    OUT.write_text("\n".join([BEGIN, *symbols, END]) + "\n")
    print(f"{sampled} functions sampled, {faulted} more found by a fault, {len(symbols)} listed: {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
