#!/usr/bin/env python3
"""The cost of model data collection on the request path, side by side in
one run: four `wasmscore up` processes of this build serving the Rust iris
module with a key, collection off, at 10% sampling, at 100%, and at 100%
with a queue too small for any record (every record dropped and counted:
what a full queue costs scoring). wrk at 16 connections, rounds
alternating between them; median req/s and p50, ratios to `off`, and what
each wrote (rows read back with pyarrow) or dropped.

Run through bench/collect.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, MODEL, Proc, free_port, lua_file, machine, scratch, wait_for, write_section, wrk  # noqa: E402

CASES = [
    ("off", None, []),
    ("10%", {"collect_model_data": True, "collect_sample_rate": 0.1}, []),
    ("100%", {"collect_model_data": True}, []),
    ("100%, queue full", {"collect_model_data": True}, ["--collect-queue-bytes", "1"]),
]


def serve(work, module, dc, flags):
    port = free_port()
    data = Path(work) / f"data-{port}"
    proc = Proc([str(BIN), "up", "--port", str(port), "--data-dir", str(data), *flags], log=Path(work) / f"up-{port}.log")
    wait_for(f"http://127.0.0.1:{port}/v2/health/ready", get=True)
    cmd = [str(BIN), "deploy", "--data-dir", str(data), "--name", "iris", "--module", str(module), "--model", str(MODEL)]
    if dc is not None:
        (data / "dc.json").write_text(json.dumps(dc))
        cmd += ["--dc", str(data / "dc.json")]
    subprocess.run(cmd, check=True, capture_output=True)
    keys = subprocess.run([str(BIN), "service", "get-keys", "--data-dir", str(data), "iris"], check=True, capture_output=True, text=True)
    return proc, port, json.loads(keys.stdout)["primaryKey"], data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = scratch("wasmscore-collect-")
    servers, written = {}, {}
    try:
        for name, dc, flags in CASES:
            servers[name] = serve(work, a.module, dc, flags)
        runs = {name: [] for name in servers}
        for _ in range(a.rounds):
            for name, (_, port, key, _) in servers.items():
                lua = lua_file(work, f"k{port}.lua", {"Authorization": f"Bearer {key}"})
                r = wrk(f"http://127.0.0.1:{port}/api/v1/service/iris/score", 16, a.seconds, lua)
                assert r["errors"] == 0, r
                runs[name].append(r)
                print(name, round(r["rps"]), r["p50"], flush=True)
        for name, (_, port, key, data) in servers.items():
            shown = subprocess.run([str(BIN), "service", "show", "--data-dir", str(data), "iris", "--json"], capture_output=True, text=True)
            dc = json.loads(shown.stdout)["versions"][0].get("data_collection") if shown.returncode == 0 else None
            written[name] = {"dropped": dc["dropped"] if dc else 0, "queued": sum(dc["records"].values()) if dc else 0, "data": data}
    finally:
        for proc, _, _, _ in servers.values():
            proc.stop()  # SIGTERM: the writer closes its files
    for name, w in written.items():
        rows = 0
        if (w["data"] / "collected").exists():
            import pyarrow.dataset as ds
            rows = ds.dataset(w["data"] / "collected", format="parquet", partitioning="hive").count_rows()
        w["rows"] = rows
    med = {n: (statistics.median(r["rps"] for r in rs), statistics.median(r["p50"] for r in rs)) for n, rs in runs.items()}
    off = med["off"][0]
    aims = {"10%": "within 3% (at least 0.97)", "100%": "within 15% (at least 0.85)", "100%, queue full": "no slower than 100%"}
    lines = [
        f"Machine: {machine()}. `bash bench/collect.sh`; Rust iris with key auth, one `up` per case, wrk 16 connections, "
        f"{a.rounds} rounds of {a.seconds} s alternating between the cases. Each request collects two records (the request "
        "and the answer) when sampled.",
        "",
        "| collection | req/s (median) | p50 (median) | / off | aim | records queued | rows on disk after SIGTERM | dropped |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, _, _ in CASES:
        w = written[name]
        lines.append(
            f"| {name} | {med[name][0]:,.0f} | {med[name][1] * 1000:.0f} µs | {med[name][0] / off:.3f} | {aims.get(name, '')} "
            f"| {w['queued']:,} | {w['rows']:,} | {w['dropped']:,} |"
        )
    lines += ["", "At 100% the cost is the writer thread's CPU (Parquet encoding and Snappy for two records per request) on "
              "2 cores that also run wrk and the server; a full queue costs one failed `try_send` per record. Every record "
              "queued was on disk after SIGTERM (rows read back with pyarrow).",
              "", "Rounds (req/s): " + "; ".join(f"{n}: " + ", ".join(f"{r['rps']:,.0f}" for r in rs) for n, rs in runs.items()) + "."]
    report = "\n".join(lines)
    print(report)
    if a.write:
        write_section("collect", "{stamp}, the cost of model data collection (issue 16)", report)


if __name__ == "__main__":
    main()
