#!/usr/bin/env python3
"""The iris module in each authoring language, side by side in one run.

For Rust, C, JavaScript, Python and Rust-through-wasi-nn: the component's
size and `wasmscore build` time, then `wasmscore bench` on all of them in
one process (component compile uncached and from the disk cache, instance
creation from the pooling allocator, guest run() without HTTP, and wrk
through the full HTTP path at 1 and 16 connections). Ratios are against
Rust, measured in the same run.

Run through bench/languages.sh; it writes a section of BENCHMARKS.md.
"""

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BIN, ROOT, machine, write_section  # noqa: E402

LANGS = [
    ("rust", "examples/iris-rust"),
    ("c", "examples/iris-c"),
    ("js", "examples/iris-js/score.js"),
    ("python", "examples/iris-python/score.py"),
    ("wasi-nn", "examples/iris-wasi-nn"),
]


def us(text):
    """'12.3 µs' / '4.5 ms' / '80.00us' / '1.2ms' -> microseconds."""
    m = re.match(r"([\d.]+)\s*(µs|us|ms|s)", text.strip())
    if not m:
        return None
    v = float(m.group(1))
    return v * {"µs": 1, "us": 1, "ms": 1000, "s": 1e6}[m.group(2)]


def build(out_dir):
    sizes, times = {}, {}
    for name, src in LANGS:
        out = out_dir / f"iris-{name}.wasm"
        t = time.monotonic()
        subprocess.run([str(BIN), "build", str(ROOT / src), "-o", str(out)], check=True, capture_output=True)
        times[name] = time.monotonic() - t
        sizes[name] = out.stat().st_size
    return sizes, times


def bench(out_dir, iterations, seconds):
    args = [str(BIN), "bench", "--iterations", str(iterations), "--http-seconds", str(seconds), "--density", "0", "--scaling-rounds", "0"]
    for name, _ in LANGS:
        args += ["--module", f"{name}={out_dir / f'iris-{name}.wasm'}"]
    text = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2:
            rows[cells[0], cells[1] if len(cells) > 5 else ""] = cells
    return text, rows


def render(sizes, times, rows, a):
    def inproc(name, what):
        cells = rows.get((f"{name}: {what}", ""))
        return us(cells[1]) if cells else None

    def http(name, conns):
        cells = rows.get((f"wasmscore {name}, full path", str(conns)))
        return (float(cells[2]), us(cells[3])) if cells else (None, None)

    def fmt_us(v):
        if v is None:
            return "-"
        return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.1f} µs"

    floor = rows.get(("raw ONNX Runtime run, iris, 1 row (compute floor)", ""))
    L = [
        f"Machine: {machine()}. One run: `bench/languages.sh {a.seconds}` ({a.iterations} iterations per in-process figure, "
        f"wrk {a.seconds} s per HTTP figure). Request: one iris row. The model alone (ONNX Runtime) takes {floor[1] if floor else '?'}.",
        "",
        "| language | component | build | compile, uncached | from the cache | instance creation | run() p50, no HTTP | run() vs Rust | HTTP req/s, 16 conns | vs Rust | HTTP p50, 1 conn |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rust_run = inproc("rust", "guest run(), no HTTP")
    rust_rps = http("rust", 16)[0]
    for name, _ in LANGS:
        run = inproc(name, "guest run(), no HTTP")
        rps = http(name, 16)[0]
        L.append(
            "| "
            + " | ".join(
                [
                    name,
                    f"{sizes[name] / 1024:.0f} KiB" if sizes[name] < 1 << 20 else f"{sizes[name] / (1 << 20):.1f} MiB",
                    f"{times[name]:.1f} s",
                    fmt_us(inproc(name, "component load, uncached (compile)")),
                    fmt_us(inproc(name, "component load from the disk cache (new engine)")),
                    fmt_us(inproc(name, "instance creation (pooling allocator, no init)")),
                    fmt_us(run),
                    f"{run / rust_run:.2f}x" if run and rust_run else "-",
                    f"{rps:,.0f}" if rps else "-",
                    f"{rps / rust_rps:.2f}x" if rps and rust_rps else "-",
                    fmt_us(http(name, 1)[1]),
                ]
            )
            + " |"
        )
    L.append("")
    L.append(
        "Build: `wasmscore build` wall time with the toolchains installed and warm (cargo's incremental state "
        "for Rust, so Rust's figure is a no-op rebuild). Compile: wasmtime (Cranelift) on the component, and "
        "loading the compiled artifact back from the disk cache in a new engine. Instance creation: from the "
        "`InstancePre`, no `init()`."
    )
    return "\n".join(L)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=5000)
    p.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    a = p.parse_args()
    out_dir = ROOT / "target/compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes, times = build(out_dir)
    text, rows = bench(out_dir, a.iterations, a.seconds)
    body = render(sizes, times, rows, a)
    print(body)
    print()
    print(text)
    if a.write:
        write_section("languages", "Authoring languages ({stamp}, written by bench/languages.sh)", body)


if __name__ == "__main__":
    main()
