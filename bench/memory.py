#!/usr/bin/env python3
"""Where the resident memory of one `up` goes: empty, with one Rust iris
version deployed, and after a load run (wrk, 16 connections), split by
mapping from /proc/PID/smaps: the wasmscore binary's code and data, ONNX
Runtime's library, the other shared libraries, the heap and the other
anonymous memory (thread stacks, malloc arenas, Wasm linear memories).
File-backed pages are the binaries' own, shared with the page cache:
the kernel maps them in runs around each page touched (fault-around),
and can drop them under memory pressure; anonymous pages
are the process's alone.

Four `up` side by side, whose builds hand back the pages they ran only
to build (runtime/control/src/pages.rs): all but the request path's code
(the executable's hot range, as it ships), all but the executable's code
(`WASMSCORE_PAGE_OUT=libraries`), of every file (`WASMSCORE_PAGE_OUT=all`),
or none (`WASMSCORE_PAGE_OUT=0`). What handing back costs is measured beside it:
the load run's req/s and CPU per request, the next deploy's time (the C iris module: a compile
that reads the compiler's pages back), and the first requests to the
serving version right after that deploy handed the pages back again.
Last, what stays resident after one big request (three OIP requests of
500,000 iris rows) and once the process has been idle for a while.

`--before OLD_BINARY` adds a fifth `up`, a build before this one with
its default settings, to see what a change did side by side.

Run through bench/memory.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import struct
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, BODY, KEY, ROOT, cli, deploy, free_port, lua_file, machine, scratch, wait_200, wasmscore_up, write_section, wrk  # noqa: E402


def breakdown(pid):
    """MiB per kind of mapping, and per (file, permissions) for the two big files."""
    out = collections.Counter()
    cur = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if not parts[0].endswith(":"):
            name = parts[5] if len(parts) > 5 else ""
            perms = parts[1]
            if name.endswith("/wasmscore"):
                cur = "wasmscore binary, code" if "x" in perms else "wasmscore binary, data"
            elif "libonnxruntime" in name:
                cur = "ONNX Runtime library, code" if "x" in perms else "ONNX Runtime library, data"
            elif name == "[heap]":
                cur = "heap (main malloc arena)"
            elif name.startswith("/"):
                cur = "other files (libc, libstdc++, compiled modules)"
            else:
                cur = "other anonymous (stacks, malloc arenas, Wasm memories)"
        elif parts[0] == "Rss:":
            out[cur] += int(parts[1]) / 1024
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    out["VmRSS"] = int(status["VmRSS"].split()[0]) / 1024
    return out


def ort_library():
    return next(ROOT.glob(".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))


def cold(path):
    """Out of the page cache, so the server reads its files from the disk as a
    fresh machine or pod does (a file just written is cached in large folios,
    which the kernel maps whole: more resident pages for the same code)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def own_copies(dir_, binary):
    """Copies of `binary` and of ONNX Runtime's library in `dir_`, out of the
    page cache: (the executable, the library for ORT_DYLIB_PATH). Each `up`
    side by side runs its own: a page mapped by two processes is not handed
    back, and the two would share their file pages."""
    dir_.mkdir()
    exe, ort = dir_ / "wasmscore", dir_ / "libonnxruntime.so"
    shutil.copy2(binary, exe)
    shutil.copy2(ort_library(), ort)
    for f in (exe, ort):
        cold(f)
    return exe, ort


def major_faults(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])


def first_requests(port, n=200):
    """ms of the first request to iris on a new connection, and the median of the next n."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    times = []
    for _ in range(n + 1):
        t = time.perf_counter()
        c.request("POST", "/api/v1/service/iris/score", body=BODY, headers=headers)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        times.append((time.perf_counter() - t) * 1e3)
    c.close()
    return times[0], statistics.median(times[1:])


BIG_ROWS = 500_000
BIG_SETTLE = 5


def big_request(port, rows=BIG_ROWS):
    """One OIP request of `rows` iris rows as binary FP32 (8 MB), scored."""
    raw = struct.pack("<4f", 5.1, 3.5, 1.4, 0.2) * rows
    header = json.dumps(
        {
            "inputs": [{"name": "X", "shape": [rows, 4], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    ).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request(
        "POST",
        "/v2/models/iris/infer",
        body=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header)), "Authorization": f"Bearer {KEY}"},
    )
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    c.close()


SERVERS = {
    "cold code (default)": {},
    "WASMSCORE_PAGE_OUT=libraries": {"WASMSCORE_PAGE_OUT": "libraries"},
    "WASMSCORE_PAGE_OUT=all": {"WASMSCORE_PAGE_OUT": "all"},
    "WASMSCORE_PAGE_OUT=0": {"WASMSCORE_PAGE_OUT": "0"},
}


def cpu_seconds(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


BEFORE = "the build before"
STAGES = ["empty `up`", "iris deployed", "after the load run"]
ROUNDS = 4
# A build hands its pages back 2 s after it ends (runtime/control/src/pages.rs).
HAND_BACK_AFTER = 3
# mimalloc returns freed pages 1 s after the free, checked every second
# (runtime/cli/src/alloc.rs): the figures after the load run are taken past that.
AFTER_LOAD = 3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True, help="examples/iris-rust built")
    ap.add_argument("--second", required=True, help="examples/iris-c built: the next deploy")
    ap.add_argument("--before", type=Path, help="a build before this one: a fifth `up`, default settings, side by side")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    servers = {name: (env, BIN) for name, env in SERVERS.items()}
    if a.before:
        servers[BEFORE] = ({}, a.before)
    work = scratch("wasmscore-memory-")
    key = lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})
    ups = {}
    stages = {s: {} for s in servers}
    cost = {s: {} for s in servers}
    try:
        for i, (name, (env, binary)) in enumerate(servers.items()):
            exe, ort = own_copies(Path(work) / f"bin-{i}", binary)
            env = {**env, "ORT_DYLIB_PATH": str(ort)}
            port = free_port()
            ups[name] = (port, *wasmscore_up(work, port, env=env, bin=exe))
        time.sleep(HAND_BACK_AFTER)
        for name, (port, up, data) in ups.items():
            stages[name][STAGES[0]] = breakdown(up.p.pid)
        for name, (port, up, data) in ups.items():
            deploy(data, "iris", a.module, dc={"primary_key": KEY})
            wait_200(f"http://127.0.0.1:{port}/api/v1/service/iris/score", {"Authorization": f"Bearer {KEY}"})
        time.sleep(HAND_BACK_AFTER)
        for name, (port, up, data) in ups.items():
            stages[name][STAGES[1]] = breakdown(up.p.pid)
        # The load runs alternate, so the machine's mood falls on both.
        rps = {s: [] for s in servers}
        cpu = {s: [] for s in servers}
        for _ in range(ROUNDS):
            for name, (port, up, data) in ups.items():
                before = cpu_seconds(up.p.pid)
                r = wrk(f"http://127.0.0.1:{port}/api/v1/service/iris/score", 16, 5, key)
                assert r["errors"] == 0, r
                rps[name].append(r["rps"])
                cpu[name].append((cpu_seconds(up.p.pid) - before) * 1e6 / (r["rps"] * 5))
        time.sleep(AFTER_LOAD)
        for name, (port, up, data) in ups.items():
            stages[name][STAGES[2]] = breakdown(up.p.pid)
            cost[name]["rps"] = statistics.median(rps[name])
            cost[name]["cpu"] = statistics.median(cpu[name])
        for name, (port, up, data) in ups.items():
            deploy(data, "iris-c", a.second, dc={"primary_key": KEY})
            shown = json.loads(cli("endpoint", "show", "iris-c", "--json", "--data-dir", str(data)))
            cost[name]["deploy_ms"] = shown["versions"][0]["deploy_ms"]
            time.sleep(HAND_BACK_AFTER)
            faults = major_faults(up.p.pid)
            cost[name]["first_ms"], cost[name]["next_ms"] = first_requests(port)
            cost[name]["faults"] = major_faults(up.p.pid) - faults
        # One big request: what stays resident after it.
        for name, (port, up, data) in ups.items():
            for _ in range(3):
                big_request(port)
            cost[name]["big_after"] = breakdown(up.p.pid)["VmRSS"]
            time.sleep(BIG_SETTLE)
            cost[name]["big_later"] = breakdown(up.p.pid)["VmRSS"]
    finally:
        for _, up, _ in ups.values():
            up.stop()
    last = STAGES[-1]
    kinds = sorted((k for k in stages[next(iter(SERVERS))][last] if k != "VmRSS"), key=lambda k: -max(stages[s][last][k] for s in servers))
    cols = [(s, st) for s in servers for st in STAGES]
    lines = [
        f"Machine: {machine()}. `bash bench/memory.sh{' --before OLD' if a.before else ''}`: {len(servers)} `up` side by side, the Rust iris module with key auth, "
        "whose builds hand back pages (`madvise(MADV_PAGEOUT)` on read-only file mappings, then `malloc_trim`): of the "
        "shared libraries, the executable's constants and its code outside the hot range the link puts the request path's "
        "functions in (as it ships), of the libraries and constants only (`WASMSCORE_PAGE_OUT=libraries`), of every file, "
        "the executable's code included (`WASMSCORE_PAGE_OUT=all`), or of none "
        "(`WASMSCORE_PAGE_OUT=0`)"
        + (f"; and the build before, `{a.before.name}`, as it ships" if a.before else "")
        + ". Resident memory (Rss in /proc/PID/smaps, MiB) by mapping; the load run is 5 s of wrk "
        f"at 16 connections, {ROUNDS} times on each, alternating.",
        "",
        "| mapping | " + " | ".join(f"{s}: {st}" for s, st in cols) + " |",
        "| --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for k in kinds + ["VmRSS"]:
        label = "**total (VmRSS)**" if k == "VmRSS" else k
        lines.append(f"| {label} | " + " | ".join(f"{stages[s][st][k]:.1f}" for s, st in cols) + " |")

    def anon(s):
        return sum(v for k, v in stages[s][last].items() if k.startswith(("heap", "other anonymous")))

    lines += [
        "",
        "After the load run, file-backed / anonymous MiB: "
        + "; ".join(f"{s}: {stages[s][last]['VmRSS'] - anon(s):.1f} / {anon(s):.1f}" for s in servers)
        + ". File-backed pages are the binaries' own, shared with the page cache; the kernel maps them in runs "
        "around each page touched (fault-around). Anonymous pages are the process's alone, and handing back "
        "does not touch them.",
        "",
        "What handing back costs, same run:",
        "",
        f"| server | load run req/s (median of {ROUNDS}) | CPU µs per request (median) | next deploy (C iris), deploy_ms | first request to iris after it | median of the next 200 | major faults in those 201 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in servers:
        c = cost[s]
        lines.append(
            f"| {s} | {c['rps']:,.0f} | {c['cpu']:.1f} | {c['deploy_ms']} ms | {c['first_ms']:.2f} ms | {c['next_ms']:.3f} ms | {c['faults']} |"
        )
    lines += [
        "",
        f"One big request, last: three OIP requests of {BIG_ROWS:,} iris rows each (binary FP32, 8 MB) to iris, "
        "then resident memory (MiB) at once and after the process has been idle for a while:",
        "",
        f"| server | right after | {BIG_SETTLE} s later |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {s} | {cost[s]['big_after']:.1f} | {cost[s]['big_later']:.1f} |" for s in servers]
    body = "\n".join(lines)
    print(body)
    if a.write:
        write_section("memory", "{stamp}, where the resident memory goes, and handing back the build's pages (issue 18)", body)


if __name__ == "__main__":
    main()
