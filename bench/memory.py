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

Run through bench/memory.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import KEY, deploy, free_port, lua_file, machine, wait_200, wasmscore_up, write_section, wrk  # noqa: E402


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True, help="examples/iris-rust built")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="wasmscore-memory-")
    key = lua_file(work, "key.lua", {"Authorization": f"Bearer {KEY}"})
    port = free_port()
    up, data = wasmscore_up(work, port)
    stages = {}
    try:
        time.sleep(1)
        stages["empty `up`"] = breakdown(up.p.pid)
        deploy(data, "iris", a.module, dc={"primary_key": KEY})
        url = f"http://127.0.0.1:{port}/api/v1/service/iris/score"
        wait_200(url, {"Authorization": f"Bearer {KEY}"})
        stages["iris deployed"] = breakdown(up.p.pid)
        r = wrk(url, 16, 5, key)
        assert r["errors"] == 0, r
        time.sleep(1)
        stages["after 5 s of wrk, 16 connections"] = breakdown(up.p.pid)
    finally:
        up.stop()
    kinds = [k for k in stages["after 5 s of wrk, 16 connections"] if k != "VmRSS"]
    kinds.sort(key=lambda k: -stages["after 5 s of wrk, 16 connections"][k])
    names = list(stages)
    lines = [
        f"Machine: {machine()}. `bash bench/memory.sh`: one `up`, the Rust iris module with key auth; resident memory "
        "(Rss in /proc/PID/smaps, MiB) by mapping.",
        "",
        "| mapping | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for k in kinds + ["VmRSS"]:
        label = "**total (VmRSS)**" if k == "VmRSS" else k
        lines.append(f"| {label} | " + " | ".join(f"{stages[n][k]:.1f}" for n in names) + " |")
    last = stages["after 5 s of wrk, 16 connections"]
    anon = sum(v for k, v in last.items() if k.startswith(("heap", "other anonymous")))
    lines += [
        "",
        f"After the load run {last['VmRSS'] - anon:.1f} MiB of {last['VmRSS']:.1f} are file-backed: the code and data "
        f"pages of the binary and of ONNX Runtime, which the kernel maps in runs around each page touched (fault-around) and shares with "
        f"the page cache; {anon:.1f} MiB are anonymous, the process's own. Making the first session for a model "
        f"touches {last['ONNX Runtime library, code'] - stages['empty `up`']['ONNX Runtime library, code']:.1f} MiB more "
        "of ONNX Runtime's code (its CPU kernel registry and graph optimizers), once per process.",
    ]
    body = "\n".join(lines)
    print(body)
    if a.write:
        write_section("memory", "{stamp}, where the resident memory goes (issue 18)", body)


if __name__ == "__main__":
    main()
