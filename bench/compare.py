#!/usr/bin/env python3
"""Side-by-side benchmark: wasmscore against the servers people use today.

One run on this machine, every server loaded the same way (wrk, the same
request, 1 and 16 connections, a fixed time): wasmscore (Rust and Python
modules, through the router, key auth on), Azure ML's inference server (1
and 2 workers), FastAPI + uvicorn (1 and 2 workers), a static nginx
`return 200` (the network floor) and raw ONNX Runtime in-process (the compute
floor, from `wasmscore bench`). Then: cold start (process start -> first
200), the router's hop against nginx's split_clients in front of the same
backends, `deploy` -> first scored request, density. Writes the figures with
the machine and the commands into BENCHMARKS.md (between markers) and a PNG
of latency percentiles.

Run through bench/compare.sh (it installs what is missing first).
"""

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/wasmscore"
MODEL = ROOT / "examples/iris/model.onnx"
PEERS = (ROOT / "../shared/peers").resolve()
BODY = '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
KEY = "compare-bench-key-0123456789abcdef"


LIVE = []
SCRATCH = []


FAILED = []


def scratch(prefix):
    """A scratch folder for one run, removed when the run ends.

    Servers write their stores and logs here (hundreds of MiB a run); left
    behind, a few dozen runs fill the disk that CI needs. A run that fails
    keeps its folder, for the servers' logs, and says where it is.
    """
    work = tempfile.mkdtemp(prefix=prefix)
    SCRATCH.append(work)
    return work


def _clean_up():
    for proc in reversed(LIVE):
        proc.stop()
    for work in SCRATCH:
        if FAILED:
            print(f"kept {work} for its logs", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _failed(kind, value, tb):
    FAILED.append(kind)
    sys.__excepthook__(kind, value, tb)


def _terminated(signum, _frame):
    sys.exit(128 + signum)


atexit.register(_clean_up)
sys.excepthook = _failed
signal.signal(signal.SIGTERM, _terminated)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, headers=None, timeout=2.0):
    req = urllib.request.Request(url, data=BODY.encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:
        return 0, b""


def wait_200(url, headers=None, limit=120.0):
    """Seconds until POST url answers 200 (polling every millisecond)."""
    t = time.perf_counter()
    while time.perf_counter() - t < limit:
        if post(url, headers, timeout=1.0)[0] == 200:
            return time.perf_counter() - t
        time.sleep(0.001)
    raise RuntimeError(f"{url}: no 200 within {limit} s")


def tree_pids(pid):
    """pid and all its descendants."""
    children = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mib(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def wrk(url, conns, seconds, lua):
    out = subprocess.run(
        ["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{seconds}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def lat(key):
        m = re.search(rf"^\s+{key}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return {"rps": rps, "p50": lat("50%"), "p90": lat("90%"), "p99": lat("99%"), "errors": errors}


class Proc:
    """A server process in its own process group, stopped with its children."""

    def __init__(self, args, env=None, cwd=None, log=None):
        self.log = open(log, "wb") if log else subprocess.DEVNULL
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen(args, env=env, cwd=cwd, stdout=self.log, stderr=self.log, start_new_session=True)
        self.stopped = False
        LIVE.append(self)

    def stop(self):
        # Once only: the group of a server stopped and reaped before may be
        # another process's by now.
        if self.stopped:
            return
        self.stopped = True
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            self.p.wait(timeout=10)
        except Exception:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except Exception:
                pass
            self.p.wait()


def lua_file(dir_, name, headers):
    p = Path(dir_) / name
    lines = ['wrk.method = "POST"', f"wrk.body = '{BODY}'", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    p.write_text("\n".join(lines) + "\n")
    return p


def wasmscore_up(work, port, extra=(), env=None, bin=BIN):
    data = Path(work) / f"data-{port}"
    env = {**os.environ, **env} if env else None
    proc = Proc([str(bin), "up", "--port", str(port), "--data-dir", str(data), *extra], env=env, log=Path(work) / f"up-{port}.log")
    wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
    return proc, data


def wait_for(url, get=False, limit=60.0):
    t = time.time()
    while time.time() - t < limit:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.01)
    raise RuntimeError(f"{url} never answered")


def cli(*args):
    return subprocess.run([str(BIN), *args], check=True, capture_output=True, text=True).stdout


def deploy(data, name, module, dc=None, version=None):
    args = ["deploy", "--data-dir", str(data), "--name", name, "--module", str(module), "--model", str(MODEL)]
    if version:
        args += ["--version", version]
    if dc is not None:
        p = Path(data) / f"{name}-dc.json"
        p.write_text(json.dumps(dc))
        args += ["--dc", str(p)]
    cli(*args)


def nginx(work, port, body):
    conf = Path(work) / f"nginx-{port}.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}.err warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body; proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fcgi; uwsgi_temp_path {work}/nginx-uwsgi; scgi_temp_path {work}/nginx-scgi;
  {body}
}}
"""
    )
    return Proc(["nginx", "-c", str(conf)], log=Path(work) / f"nginx-{port}.log")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--peers-dir", default=str(ROOT / ".peers"))
    ap.add_argument("--rust")
    ap.add_argument("--python")
    ap.add_argument("--write", action="store_true", help="write BENCHMARKS.md and bench/latency.png")
    ap.add_argument("--plot-only", action="store_true", help="redraw bench/latency.png from bench/results.json")
    a = ap.parse_args()
    if a.plot_only:
        raw = json.loads((ROOT / "bench/results.json").read_text())
        res = {n: {(int(k) if k.isdigit() else k): v for k, v in r.items()} for n, r in raw["results"].items()}
        plot(res, raw["order"], ROOT / "bench/latency.png")
        return
    peers = Path(a.peers_dir).resolve()
    work = scratch("wasmscore-compare-")
    results = {}  # server -> {conns: wrk dict, "rss": MiB, "cold": s}
    order = []

    def measure(name, url, lua, pid):
        order.append(name)
        r = results.setdefault(name, {})
        # Warm-up: every worker up and past its first requests.
        time.sleep(1)
        wrk(url, 16, 2, lua)
        for c in (1, 16):
            r[c] = wrk(url, c, a.seconds, lua)
            print(f"{name:32s} c={c:2d} {r[c]['rps']:9.0f} req/s p50 {r[c]['p50']:.3f} ms p99 {r[c]['p99']:.3f} ms errors {r[c]['errors']}", flush=True)
        r["rss"] = rss_mib(pid) if pid else None

    plain_lua = lua_file(work, "plain.lua", {})
    key_lua = lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})

    # Network floor: nginx `return 200`.
    port = free_port()
    stat = nginx(work, port, f'server {{ listen 127.0.0.1:{port}; location / {{ return 200 \'{{"probabilities": [[0.98, 0.018, 0.0]]}}\'; }} }}')
    wait_for(f"http://127.0.0.1:{port}/", get=True)
    measure("nginx return 200 (network floor)", f"http://127.0.0.1:{port}/score", plain_lua, stat.p.pid)
    stat.stop()

    # wasmscore: one `up` per module (its RSS is that version's alone), key
    # auth on, autoscaling default.
    cold_ours = []
    deploy_first = {}
    for name, module in (("rust", a.rust), ("python", a.python)):
        port = free_port()
        up, data = wasmscore_up(work, port)
        t = time.perf_counter()
        deploy(data, name, module, dc={"primary_key": KEY})
        deploy_first[name] = wait_200(f"http://127.0.0.1:{port}/api/v1/service/{name}/score", {"Authorization": f"Bearer {KEY}"}) + (
            time.perf_counter() - t
        )
        measure(f"wasmscore {name}", f"http://127.0.0.1:{port}/api/v1/service/{name}/score", key_lua, up.p.pid)
        up.stop()
    # Cold start: a data dir with the Rust version deployed, process start ->
    # first 200 (compile cache warm, as after a restart or on a new replica
    # of the whole process).
    port = free_port()
    up, data = wasmscore_up(work, port)
    deploy(data, "rust", a.rust, dc={"primary_key": KEY})
    up.stop()
    for _ in range(3):
        port = free_port()
        p = Proc([str(BIN), "up", "--port", str(port), "--data-dir", str(data)])
        wait_200(f"http://127.0.0.1:{port}/api/v1/service/rust/score", {"Authorization": f"Bearer {KEY}"})
        cold_ours.append(time.perf_counter() - p.t0)
        p.stop()
    results["wasmscore rust"]["cold"] = min(cold_ours)
    results["wasmscore python"]["cold"] = None

    # The peers.
    for kind, label in (("azml", "Azure ML server, 1 worker"), ("azml2", "Azure ML server, 2 workers"), ("fastapi", "FastAPI, 1 worker"), ("fastapi2", "FastAPI, 2 workers")):
        colds = []
        for _ in range(2):
            port = free_port()
            p = Proc(["bash", str(PEERS / "run.sh"), kind, str(port), str(MODEL), str(peers)], log=Path(work) / f"{kind}.log")
            wait_200(f"http://127.0.0.1:{port}/score", limit=180)
            colds.append(time.perf_counter() - p.t0)
            p.stop()
        port = free_port()
        p = Proc(["bash", str(PEERS / "run.sh"), kind, str(port), str(MODEL), str(peers)], log=Path(work) / f"{kind}.log")
        wait_200(f"http://127.0.0.1:{port}/score", limit=180)
        measure(label, f"http://127.0.0.1:{port}/score", plain_lua, p.p.pid)
        results[label]["cold"] = min(colds)
        p.stop()

    # Compute floor: raw ONNX Runtime in-process, from `wasmscore bench`.
    out = subprocess.run(
        [str(BIN), "bench", "--model", str(MODEL), "--module", f"rust={a.rust}", "--iterations", "20000", "--http-seconds", "0", "--density", "100", "--scaling-rounds", "0"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    floor_us = float(re.search(r"compute floor\) \| ([\d.]+) µs", out).group(1))
    density = re.search(r"resident memory per version \| (\d+) KiB", out)
    density_kib = int(density.group(1)) if density else None
    deploy_per_version = re.search(r"deploy time per version [^|]*\| ([\d.]+) ms", out)

    # The router's hop vs nginx split_clients in front of the same backends.
    port = free_port()
    up, data = wasmscore_up(work, port)
    for v in ("a", "b", "c"):
        deploy(data, f"one-{v}", a.rust, dc={"primary_key": KEY, "num_replicas": 1})
    # wasmscore's own split: 3 versions 34/33/33 on one endpoint.
    deploy(data, "split", a.rust, dc={"primary_key": KEY, "num_replicas": 1}, version="a")
    for v, t in (("b", 33), ("c", 33)):
        dc = Path(work) / "split-dc.json"
        dc.write_text(json.dumps({"num_replicas": 1}))
        cli("version", "create", "--data-dir", str(data), "--endpoint", "split", "--version", v, "--module", a.rust, "--model", str(MODEL), "--traffic", str(t), "--dc", str(dc))
    nport = free_port()
    split_nginx = nginx(
        work,
        nport,
        f"""
  upstream ws {{ server 127.0.0.1:{port}; keepalive 64; }}
  split_clients "$request_id" $backend {{ 34% one-a; 33% one-b; * one-c; }}
  server {{
    listen 127.0.0.1:{nport};
    location / {{
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://ws/api/v1/service/$backend/score;
    }}
  }}""",
    )
    wait_200(f"http://127.0.0.1:{nport}/score", {"Authorization": f"Bearer {KEY}"})
    hop = {}
    for label, url in (
        ("direct to one single-version endpoint", f"http://127.0.0.1:{port}/api/v1/service/one-a/score"),
        ("wasmscore router: 3-version split endpoint", f"http://127.0.0.1:{port}/api/v1/service/split/score"),
        ("nginx split_clients -> 3 single-version endpoints", f"http://127.0.0.1:{nport}/score"),
    ):
        hop[label] = {c: wrk(url, c, a.seconds, key_lua) for c in (1, 16)}
        print(f"{label:50s} c=1 p50 {hop[label][1]['p50']:.3f} ms  c=16 {hop[label][16]['rps']:.0f} req/s", flush=True)
    split_nginx.stop()
    up.stop()

    report = render(results, order, floor_us, hop, deploy_first, density_kib, deploy_per_version, a)
    print(report)
    if a.write:
        write_benchmarks(report)
        raw = {"results": {n: {str(k): v for k, v in r.items()} for n, r in results.items()}, "order": order, "hop": hop}
        (ROOT / "bench/results.json").write_text(json.dumps(raw, indent=1, default=str))
        plot(results, order, ROOT / "bench/latency.png")


def cpu_ticks(pid):
    """A process's CPU time so far (utime + stime), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {os.uname().release}; wrk shares the cores with the servers"


def render(results, order, floor_us, hop, deploy_first, density_kib, deploy_per_version, a):
    ours = results["wasmscore rust"]
    L = []
    L.append(f"Machine: {machine()}. wrk -t2 (-t1 at 1 connection), {a.seconds} s per run, request `{BODY}` to the iris model." + " Each wasmscore row is an `up` of its own serving that one version (key auth, the default autoscaling); RSS after is the process's after its load runs.")
    L.append("")
    L.append("| server | conns | req/s | p50 | p90 | p99 | errors | RSS after | cold start | req/s vs wasmscore rust |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in order:
        r = results[name]
        for c in (1, 16):
            w = r[c]
            cold = r.get("cold")
            L.append(
                f"| {name} | {c} | {w['rps']:.0f} | {w['p50']:.3f} ms | {w['p90']:.3f} ms | {w['p99']:.3f} ms | {w['errors']} | "
                f"{(str(round(r['rss'])) + ' MiB') if r.get('rss') else '-'} | {(f'{cold * 1000:.0f} ms') if cold else '-'} | {w['rps'] / ours[c]['rps']:.3f} |"
            )
    L.append(f"| raw ONNX Runtime `run`, in-process (compute floor) | - | - | {floor_us / 1000:.4f} ms | | | | | | |")
    L.append("")
    net = results["nginx return 200 (network floor)"]
    azml2, fast2 = results["Azure ML server, 2 workers"], results["FastAPI, 2 workers"]
    fast_best = max(results["FastAPI, 1 worker"][16]["rps"], fast2[16]["rps"])
    over = ours[1]["p50"] - net[1]["p50"] - floor_us / 1000
    stalled = [n for n in order if n not in ("wasmscore rust", "wasmscore python") and results[n][1]["p50"] > 30]
    if stalled:
        L.append(
            "Note: " + ", ".join(stalled) + " answered every request on a kept-alive connection in about "
            + ", ".join(f"{results[n][1]['p50']:.0f} ms" for n in stalled)
            + " at p50 in this run, a delayed-ACK stall (a single request on a new connection is fast); "
            "the aims below are also given against the better configuration of the same server."
        )
        L.append("")
    L.append("Aims (from the issue), this run:")
    L.append(
        f"- 16 connections, wasmscore rust vs Azure ML server (2 workers): {ours[16]['rps'] / azml2[16]['rps']:.1f}x req/s (aim 20x); "
        f"vs FastAPI (2 workers): {ours[16]['rps'] / fast2[16]['rps']:.1f}x (aim 7x); vs FastAPI's better configuration: {ours[16]['rps'] / fast_best:.1f}x."
    )
    L.append(f"- 16 connections, wasmscore rust vs nginx's static 200: {ours[16]['rps'] / net[16]['rps']:.2f}x req/s (aim 0.75x, issue 18).")
    L.append(
        f"- p50 at 1 connection above network floor + compute floor: {over * 1000:.0f} µs (aim at most 30 µs, issue 7; "
        f"at most 15 µs, issue 18): {ours[1]['p50'] * 1000:.0f} µs vs {net[1]['p50'] * 1000:.0f} + {floor_us:.1f} µs."
    )
    L.append(f"- process start -> first 200: {ours['cold'] * 1000:.0f} ms (aim under 50 ms).")
    base, rt, ng = (hop[k] for k in hop)
    L.append(
        f"- the router's hop vs nginx split_clients, same backends: p50 at 1 connection {(rt[1]['p50'] - base[1]['p50']) * 1000:+.0f} µs vs "
        f"{(ng[1]['p50'] - base[1]['p50']) * 1000:+.0f} µs; req/s at 16 connections {rt[16]['rps']:.0f} vs {ng[16]['rps']:.0f} (direct {base[16]['rps']:.0f}) (aim: no worse than nginx)."
    )
    L.append("")
    L.append("| router hop (Rust iris, 1 replica per version) | p50 c=1 | p99 c=1 | req/s c=16 | p50 c=16 | p99 c=16 |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    for k, v in hop.items():
        L.append(f"| {k} | {v[1]['p50']:.3f} ms | {v[1]['p99']:.3f} ms | {v[16]['rps']:.0f} | {v[16]['p50']:.3f} ms | {v[16]['p99']:.3f} ms |")
    L.append("")
    L.append(
        "`deploy` -> first scored request (register the model, upload, build the version, first 200): "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in deploy_first.items())
        + "."
    )
    if density_kib:
        per = f"; {deploy_per_version.group(1)} ms per version" if deploy_per_version else ""
        L.append(f"Density (100 versions of the Rust module): {density_kib} KiB resident per version, about {1024 * 1024 // max(density_kib, 1)} versions per GiB{per}.")
    return "\n".join(L)


def write_benchmarks(report):
    write_section(
        "compare",
        "Side by side with the peers ({stamp}, written by bench/compare.sh)",
        "Command: `bench/compare.sh` (installs the peers with ../shared/peers/setup.sh, nginx from Debian, "
        "matplotlib for the plot; then `.venv/bin/python bench/compare.py --write`).\n\n"
        f"{report}\n\n![latency percentiles per server](bench/latency.png)",
        first=True,
    )


def write_section(name, heading, body, first=False):
    """Replaces the section between `<!-- name:start -->` and its end marker
    in BENCHMARKS.md, or adds it (first: before the first dated section)."""
    p = ROOT / "BENCHMARKS.md"
    text = p.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"{start}\n## {heading.format(stamp=stamp)}\n\n{body}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    elif first:
        head, sep, rest = text.partition("\n## ")
        text = head + "\n" + block + "\n\n## " + rest if sep else text + "\n" + block + "\n"
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    p.write_text(text)


def plot(results, order, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, c in zip(axes, (1, 16)):
        names = order
        x = range(len(names))
        for i, (pct, color) in enumerate((("p50", "#4c72b0"), ("p90", "#55a868"), ("p99", "#c44e52"))):
            ax.bar([j + (i - 1) * 0.27 for j in x], [results[n][c][pct] for n in names], width=0.27, label=pct, color=color)
        ax.set_yscale("log")
        ax.set_xticks(list(x))
        ax.set_xticklabels([textwrap.fill(n.replace(",", ""), 11) for n in names], fontsize=7)
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(f"{c} connection{'s' if c > 1 else ''}")
        ax.legend()
    fig.suptitle("iris, same request, wrk: latency percentiles per server")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
