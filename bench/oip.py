#!/usr/bin/env python3
"""The Open Inference Protocol side by side, in one run: iris over OIP REST
(JSON and the binary tensor extension) and gRPC, at 1 and 16 connections,
on wasmscore (examples/iris-rust: the tensors go to the model without JSON),
KServe's Python server and MLServer (in-process inference, its faster
setting) on the same model, beside wasmscore's own /score.

Load generators: wrk for REST; h2load (nghttp2) for gRPC, one stream per
connection, posting a framed ModelInferRequest (raw_input_contents) to
/inference.GRPCInferenceService/ModelInfer. h2load counts HTTP statuses and
gRPC puts its status in a trailer, so each server's gRPC answer is checked
with a real client first, and wasmscore's /metrics must show no 4xx/5xx
after the runs. h2load reports mean latency, not percentiles. wasmscore's
/score is loaded by h2load too, over HTTP/1.1 and over h2c, so the gRPC
row can be read against one load generator and one protocol at a time.

Run through bench/oip.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, MODEL, PEERS, Proc, cpu_ticks, free_port, machine, scratch, wait_for, write_section, wrk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "oip-bench-key-0123456789abcdef"
ROW = [5.1, 3.5, 1.4, 0.2]
CLIENTS = ROOT / ".venv-clients/bin/python"


def lua(path, body, headers):
    """A wrk script posting `body` (bytes) with `headers`."""
    escaped = "".join(f"\\{b:03d}" for b in body)
    lines = ['wrk.method = "POST"', f'wrk.body = "{escaped}"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def rest_bodies():
    """One iris row as OIP REST bodies: JSON, and the binary extension's
    JSON header and the whole binary body."""
    json_body = json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}).encode()
    head = json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return json_body, head, head + struct.pack("<4f", *ROW)


def grpc_body(path, model):
    """A gRPC-framed ModelInferRequest for one iris row (raw contents)."""
    code = (
        "import sys, numpy as np\n"
        "from tritonclient.grpc import service_pb2\n"
        "r = service_pb2.ModelInferRequest(model_name=sys.argv[1])\n"
        "r.inputs.add(name='X', datatype='FP32', shape=[1, 4])\n"
        f"r.raw_input_contents.append(np.array([{ROW}], np.float32).tobytes())\n"
        "sys.stdout.buffer.write(r.SerializeToString())\n"
    )
    msg = subprocess.run([str(CLIENTS), "-c", code, model], capture_output=True, check=True).stdout
    path.write_bytes(b"\x00" + struct.pack(">I", len(msg)) + msg)
    return path


def stream_check(addr, body, key, n):
    """The stream body sent once (grpcio): n answers, none an error. h2load
    counts any HTTP 200, whatever each answer's error_message says."""
    code = (
        "import sys, grpc\n"
        "from tritonclient.grpc import service_pb2, service_pb2_grpc\n"
        "raw = open(sys.argv[2], 'rb').read(); msgs = []\n"
        "while raw:\n"
        "    n = int.from_bytes(raw[1:5], 'big'); m = service_pb2.ModelInferRequest(); m.ParseFromString(raw[5:5 + n])\n"
        "    msgs.append(m); raw = raw[5 + n:]\n"
        "stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(sys.argv[1]))\n"
        "rs = list(stub.ModelStreamInfer(iter(msgs), metadata=[('authorization', 'Bearer ' + sys.argv[3])]))\n"
        "bad = [r.error_message for r in rs if r.error_message or len(r.infer_response.raw_output_contents) != 2]\n"
        "assert len(rs) == int(sys.argv[4]) and not bad, (len(rs), bad[:3])\n"
    )
    subprocess.run([str(CLIENTS), "-c", code, addr, str(body), key, str(n)], check=True, capture_output=True)


def grpc_check(addr, model, key=None):
    """One real gRPC call (tritonclient): the answer must hold 3 probabilities."""
    code = (
        "import sys, numpy as np, tritonclient.grpc as tg\n"
        "i = tg.InferInput('X', [1, 4], 'FP32'); i.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))\n"
        "h = {'authorization': 'Bearer ' + sys.argv[3]} if len(sys.argv) > 3 else {}\n"
        "r = tg.InferenceServerClient(sys.argv[1]).infer(sys.argv[2], [i], headers=h)\n"
        "p = r.as_numpy('probabilities'); assert p.shape == (1, 3) and abs(p.sum() - 1) < 1e-4, p\n"
    )
    args = [str(CLIENTS), "-c", code, addr, model] + ([key] if key else [])
    deadline = time.time() + 30
    while True:
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode == 0:
            return
        if time.time() > deadline:
            raise RuntimeError(f"gRPC check of {addr} failed: {r.stderr[-2000:]}")
        time.sleep(0.5)


# gRPC as its clients call it: tritonclient.grpc and kserve's client keep one
# channel (one HTTP/2 connection) and put every call in flight on it. In
# this row "conns" in the table is the number of calls in flight.
ONE_CHANNEL = "OIP gRPC, one connection, N calls in flight"
# /score with h2load, as gRPC is loaded: the same route over HTTP/1.1 and
# over HTTP/2, so the gRPC row can be read against one load generator and
# one protocol at a time (wrk and h2load cost the shared cores differently).
SCORE_H1 = "/score (JSON), HTTP/1.1, h2load"
SCORE_H2 = "/score (JSON), h2c, h2load"
# Triton's stream: one HTTP/2 stream per connection carrying PER_STREAM
# requests (h2load sends them as one client-streamed body); its req/s
# count inferences, its latency is a whole stream's.
PER_STREAM = 16
STREAM = f"OIP gRPC stream (ModelStreamInfer), {PER_STREAM} requests per stream"


def inferences(r, n):
    """h2load's figures for streams of `n` requests, as requests."""
    return {**r, "rps": r["rps"] * n}


def h2load(url, conns, seconds, body, headers, streams=1, h1=False):
    """h2load's figures; `h1`: over HTTP/1.1 (one request at a time per
    connection), so that a route can be compared across protocols with one
    load generator."""
    args = ["h2load", "-c", str(conns), "-m", str(streams), "-t", str(min(conns, 2)), "-D", str(seconds), "-d", str(body)]
    args += ["--h1"] if h1 else []
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    req = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}[mean.group(2)]
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = int(req.group(3)) + int(req.group(4)) + sum(int(x) for x in status.groups()[1:])
    return {"rps": rps, "mean": float(mean.group(1)) * unit, "p50": None, "p99": None, "errors": errors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True, help="examples/iris-rust built")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="rounds alternating between our routes (medians)")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = Path(scratch("wasmscore-oip-"))
    peers = ROOT / ".peers"
    auth = {"Authorization": f"Bearer {KEY}"}
    json_body, head, binary_body = rest_bodies()
    luas = {
        "score": lua(work / "score.lua", json.dumps({"data": [ROW]}).encode(), {"Content-Type": "application/json", **auth}),
        "json": lua(work / "json.lua", json_body, {"Content-Type": "application/json", **auth}),
        "binary": lua(work / "binary.lua", binary_body, {"Inference-Header-Content-Length": str(len(head)), **auth}),
        "peer": lua(work / "peer.lua", json_body, {"Content-Type": "application/json"}),
    }
    results = {}  # (server, protocol) -> {conns: result}
    rounds = {}  # (server, protocol) -> {conns: [result per round]}, for ours
    not_measured = {}  # (server, protocol) -> why

    def measure(key, run):
        results[key] = {}
        for conns in (1, 16):
            run(conns, 1)  # warm-up
            r = run(conns, a.seconds)
            assert r["errors"] == 0, (key, conns, r)
            results[key][conns] = r
            print(key, conns, round(r["rps"]), r.get("p50") or r.get("mean"), flush=True)

    # wasmscore: one `up`, iris-rust, REST and gRPC.
    port, gport = free_port(), free_port()
    data = work / "data"
    up = Proc([str(BIN), "up", "--port", str(port), "--grpc-port", str(gport), "--data-dir", str(data)], log=work / "up.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
        (work / "dc.json").write_text(json.dumps({"primary_key": KEY}))
        subprocess.run([str(BIN), "deploy", "--data-dir", str(data), "--name", "iris", "--module", a.module, "--model", str(MODEL), "--dc", str(work / "dc.json")],
                       check=True, capture_output=True)
        base = f"http://127.0.0.1:{port}"
        grpc_check(f"127.0.0.1:{gport}", "iris", KEY)
        body = grpc_body(work / "ours.grpc", "iris")
        stream_body = work / "stream.grpc"
        stream_body.write_bytes(body.read_bytes() * PER_STREAM)
        stream_check(f"127.0.0.1:{gport}", stream_body, KEY, PER_STREAM)
        grpc_headers = {"content-type": "application/grpc", "te": "trailers", "authorization": f"Bearer {KEY}"}
        score_body = work / "score.json"
        score_body.write_text(json.dumps({"data": [ROW]}))
        score_headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
        ours = [
            (("wasmscore", "/score (JSON)"), lambda c, s: wrk(f"{base}/api/v1/service/iris/score", c, s, luas["score"])),
            (("wasmscore", "OIP REST, JSON"), lambda c, s: wrk(f"{base}/v2/models/iris/infer", c, s, luas["json"])),
            (("wasmscore", "OIP REST, binary"), lambda c, s: wrk(f"{base}/v2/models/iris/infer", c, s, luas["binary"])),
            (("wasmscore", "OIP gRPC"), lambda c, s: h2load(f"http://127.0.0.1:{gport}/inference.GRPCInferenceService/ModelInfer", c, s, body, grpc_headers)),
            (("wasmscore", ONE_CHANNEL), lambda c, s: h2load(f"http://127.0.0.1:{gport}/inference.GRPCInferenceService/ModelInfer", 1, s, body, grpc_headers, streams=c)),
            (("wasmscore", STREAM), lambda c, s: inferences(h2load(f"http://127.0.0.1:{gport}/inference.GRPCInferenceService/ModelStreamInfer", c, s, stream_body, grpc_headers), PER_STREAM)),
            (("wasmscore", SCORE_H1), lambda c, s: h2load(f"{base}/api/v1/service/iris/score", c, s, score_body, score_headers, h1=True)),
            (("wasmscore", SCORE_H2), lambda c, s: h2load(f"{base}/api/v1/service/iris/score", c, s, score_body, score_headers)),
        ]
        # This machine's noise is as large as the differences: our routes
        # run in rounds that alternate between them, and each figure is the
        # round with the median req/s.
        for key, run in ours:
            for conns in (1, 16):
                run(conns, 1)  # warm-up
            rounds[key] = {1: [], 16: []}
        for _ in range(a.rounds):
            for conns in (1, 16):
                for key, run in ours:
                    before = cpu_ticks(up.p.pid)
                    r = run(conns, a.seconds)
                    assert r["errors"] == 0, (key, conns, r)
                    # The server's CPU per request: what the route costs it,
                    # whichever load generator (wrk, h2load) shares the cores.
                    r["cpu_us"] = (cpu_ticks(up.p.pid) - before) / os.sysconf("SC_CLK_TCK") * 1e6 / (r["rps"] * a.seconds)
                    rounds[key][conns].append(r)
                    print(key, conns, round(r["rps"]), r.get("p50") or r.get("mean"), flush=True)
        for key, _ in ours:
            results[key] = {c: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for c, rs in rounds[key].items()}
        metrics = subprocess.run(["curl", "-s", "-H", f"Authorization: Bearer {(data / 'admin.token').read_text().strip()}", f"{base}/metrics"],
                                 capture_output=True, text=True, check=True).stdout
        bad = [l for l in metrics.splitlines() if l.startswith("wasmscore_responses_total") and not l.rstrip().endswith(" 0") and 'code="2xx"' not in l]
        assert not bad, bad
    finally:
        up.stop()

    # The peers: KServe's Python server and MLServer, REST JSON and gRPC.
    for kind, label in (("kserve", "KServe Python server"), ("mlserver0", "MLServer (in-process)")):
        port = free_port()
        p = Proc(["bash", str(PEERS / "run.sh"), kind, str(port), str(MODEL), str(peers)], log=work / f"{kind}.log")
        try:
            wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True, limit=180)
            measure((label, "OIP REST, JSON"), lambda c, s: wrk(f"http://127.0.0.1:{port}/v2/models/iris/infer", c, s, luas["peer"]))
            if kind == "kserve":
                not_measured[(label, "OIP gRPC")] = (
                    "the peer script (../shared/peers/kserve/model.py) starts it with --enable_grpc false: KServe 0.21 "
                    "binds its gRPC server to [::] with no option for another address, and servers here listen on loopback only"
                )
                continue
            try:
                grpc_check(f"127.0.0.1:{port + 1}", "iris")
            except RuntimeError as e:
                not_measured[(label, "OIP gRPC")] = str(e).splitlines()[-1][:200]
                continue
            body = grpc_body(work / f"{kind}.grpc", "iris")
            gh = {"content-type": "application/grpc", "te": "trailers"}
            measure((label, "OIP gRPC"), lambda c, s: h2load(f"http://127.0.0.1:{port + 1}/inference.GRPCInferenceService/ModelInfer", c, s, body, gh))
            measure((label, ONE_CHANNEL), lambda c, s: h2load(f"http://127.0.0.1:{port + 1}/inference.GRPCInferenceService/ModelInfer", 1, s, body, gh, streams=c))
        finally:
            p.stop()

    score = results[("wasmscore", "/score (JSON)")]
    kserve_rest16 = results[("KServe Python server", "OIP REST, JSON")][16]["rps"]
    lines = [
        f"Machine: {machine()}. `bash bench/oip.sh`: iris (examples/iris/model.onnx); wasmscore serves it through "
        "examples/iris-rust, whose `run()` hands the host-decoded tensors straight to the model; one run, "
        f"{a.seconds} s per case after a 1 s warm-up, every case in the same run; our routes in {a.rounds} rounds alternating "
        "between them (the round with the median req/s), the peers once. REST with wrk, gRPC with h2load "
        "(one stream per connection, or for the one-connection row as many calls in flight on one connection as the "
        "column's count, as tritonclient.grpc's channel carries them; mean latency, as h2load reports no percentiles). "
        f"The stream row sends {PER_STREAM} requests on each stream, as tritonclient.grpc's `async_stream_infer` does on "
        "the stream `start_stream` opens: its req/s are requests (inferences), its latency a whole stream's.",
        "",
        "| server | protocol | req/s, 1 conn | latency, 1 conn | req/s, 16 conns | latency, 16 conns | / our /score (16) | / KServe REST (16) | server CPU µs/req (16) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (server, proto), r in results.items():
        def lat(x):
            return f"p50 {x['p50']:.3f} ms" if x.get("p50") is not None else f"mean {x['mean']:.3f} ms"
        lines.append(
            f"| {server} | {proto} | {r[1]['rps']:,.0f} | {lat(r[1])} | {r[16]['rps']:,.0f} | {lat(r[16])} | "
            f"{r[16]['rps'] / score[16]['rps']:.2f} | {r[16]['rps'] / kserve_rest16:.1f}x | "
            + (f"{statistics.median(x['cpu_us'] for x in rounds[(server, proto)][16]):.1f} |" if (server, proto) in rounds else "- |")
        )
    for (server, proto), why in not_measured.items():
        lines.append(f"| {server} | {proto} | not measured: {why} | | | | | | |")
    ratio = {p: results[("wasmscore", p)][16]["rps"] / score[16]["rps"] for _, p in rounds}
    cpu = {p: statistics.median(x["cpu_us"] for x in rounds[("wasmscore", p)][16]) for _, p in rounds}
    verdict = lambda x: "met" if x >= 0.8 else "not met"  # noqa: E731
    lines += [
        "",
        f"Against the aims (16 connections): OIP REST JSON {ratio['OIP REST, JSON']:.2f}x our `/score` (aim: within 20%, "
        f"{verdict(ratio['OIP REST, JSON'])}), binary {ratio['OIP REST, binary']:.2f}x ({verdict(ratio['OIP REST, binary'])}), "
        f"gRPC {ratio['OIP gRPC']:.2f}x ({verdict(ratio['OIP gRPC'])}) with a connection per call and "
        f"{ratio[ONE_CHANNEL]:.2f}x ({verdict(ratio[ONE_CHANNEL])}) with 16 calls on one connection, "
        f"{ratio[STREAM]:.2f}x ({verdict(ratio[STREAM])}) as Triton's stream with {PER_STREAM} requests per stream; against the KServe Python server's REST: "
        f"{results[('wasmscore', 'OIP REST, JSON')][16]['rps'] / kserve_rest16:.1f}x REST and "
        f"{results[('wasmscore', 'OIP gRPC')][16]['rps'] / kserve_rest16:.1f}x gRPC (aim: at least 10x).",
        "",
        f"Server CPU per request at 16 connections (median of the rounds): gRPC {cpu['OIP gRPC']:.1f} µs against `/score`'s "
        f"{cpu['/score (JSON)']:.1f} µs ({cpu['/score (JSON)'] / cpu['OIP gRPC']:.2f}x as many requests per CPU second), "
        f"{cpu[ONE_CHANNEL]:.1f} µs with 16 calls on one connection.",
        "",
        f"The same route and load generator over each protocol (h2load, 16 connections of one request each): `/score` over "
        f"HTTP/1.1 {results[('wasmscore', SCORE_H1)][16]['rps']:,.0f} req/s ({cpu[SCORE_H1]:.1f} µs of server CPU per request), "
        f"over h2c {results[('wasmscore', SCORE_H2)][16]['rps']:,.0f} ({cpu[SCORE_H2]:.1f} µs), and gRPC "
        f"{results[('wasmscore', 'OIP gRPC')][16]['rps']:,.0f} ({cpu['OIP gRPC']:.1f} µs): gRPC against `/score` over h2c "
        f"{ratio['OIP gRPC'] / ratio[SCORE_H2]:.2f}x, h2c against HTTP/1.1 {ratio[SCORE_H2] / ratio[SCORE_H1]:.2f}x. "
        "bench/where.sh splits the server's CPU per request by thread and crate for these three.",
        "",
        "Rounds (req/s at 16 connections): " + "; ".join(
            f"{p}: " + ", ".join(f"{r['rps']:,.0f}" for r in rounds[("wasmscore", p)][16]) for _, p in rounds) + ".",
    ]
    report = "\n".join(lines)
    print(report)
    if a.write:
        write_section("oip", "{stamp}, the Open Inference Protocol side by side (issue 15)", report)


if __name__ == "__main__":
    main()
