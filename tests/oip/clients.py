"""Drives a running wasmscore with the Open Inference Protocol clients people
already have, unmodified: tritonclient.http, tritonclient.grpc, and kserve's
InferenceRESTClient and InferenceGRPCClient (protocol v2). Every answer is
compared with ONNX Runtime's own output for the same inputs.

Run by tests/tests/e2e/oip.rs with .venv-clients/bin/python:
  clients.py HTTP_ADDR GRPC_ADDR MODELS_DIR KEYS_JSON triton|kserve
KEYS_JSON maps each endpoint to its primary key, and "admin" to the
admin token. The endpoints (deployed
with `--model` only, so the built-in module serves them): identity,
simple (versions v1 and v2), simple_fp32, simple_fp64, simple_int64; and
iris and iris-py (examples/iris-rust and iris-python, modules that take the
tensors themselves); helper-py (tests/oip/helper.py, whose run_tensors
answers a BYTES input with each element's bytes reversed and lengths).
Prints one line per check and exits non-zero on the first failure.
"""
import asyncio
import json
import queue
import struct
import sys
import threading
import time

import ml_dtypes
import numpy as np
import onnxruntime as ort
import requests

HTTP, GRPC, MODELS, KEYS, PART = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
# tritonclient and kserve both register the `inference` protobuf package:
# one process runs one of them.
if PART == "triton":
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from google.protobuf.json_format import MessageToJson
    from tritonclient.utils import InferenceServerException
CHECKS = 0

# OIP datatype -> numpy dtype (BYTES: object arrays of bytes, as tritonclient uses).
NP = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "BF16": ml_dtypes.bfloat16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
# The identity model's datatypes. BF16 has a model of its own (halves):
# ONNX Runtime's Python API cannot feed BF16 and BYTES in one run.
IDENTITY = [dt for dt in NP if dt != "BF16"]


def check(what, ok, detail=""):
    global CHECKS
    CHECKS += 1
    if not ok:
        print(f"FAILED: {what} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def refused(name, cases):
    """Each (what, call, codes[, words]): the call raises with one of the
    codes (HTTP status or gRPC code) in its status, and the words in its
    message."""
    for what, call, codes, *words in cases:
        try:
            call()
            check(f"{name}: {what} refused", False)
        except InferenceServerException as e:
            check(f"{name}: {what} -> {codes}",
                  any(x in str(e.status()) for x in codes) and all(w in e.message() for w in words),
                  (e.status(), e.message()))


def auth(endpoint):
    return {"Authorization": f"Bearer {KEYS[endpoint]}"}


def gauth(endpoint):
    return {"authorization": f"Bearer {KEYS[endpoint]}"}


def text(a):
    """A BYTES array as numpy strings (what ONNX Runtime takes and gives)."""
    return np.array([x.decode() if isinstance(x, bytes) else x for x in a.ravel()]).reshape(a.shape)


def reference(endpoint, inputs):
    """ONNX Runtime's outputs for these inputs (name -> numpy array)."""
    s = ort.InferenceSession(f"{MODELS}/{endpoint}/model.onnx", providers=["CPUExecutionProvider"])
    feed = {k: (text(v) if v.dtype == np.object_ else v) for k, v in inputs.items()}
    names = [o.name for o in s.get_outputs()]
    bf16 = {k for k, v in feed.items() if v.dtype == ml_dtypes.bfloat16}
    if not bf16:
        return dict(zip(names, s.run(None, feed)))
    # ONNX Runtime's Python API takes no bfloat16 array: BF16 goes in as an
    # OrtValue of its bits, and comes out as bits read back as bfloat16.
    feed = {k: (ort.OrtValue.ortvalue_from_numpy_with_onnx_type(v.view(np.uint16), 16) if k in bf16 else ort.OrtValue.ortvalue_from_numpy(v))
            for k, v in feed.items()}
    outs = s.run_with_ort_values(names, feed)
    return {n: (bf16_out(o) if o.data_type() == "tensor(bfloat16)" else o.numpy()) for n, o in zip(names, outs)}


def bf16_out(v):
    """A bfloat16 OrtValue as a numpy bfloat16 array (its bits, through the raw buffer)."""
    import ctypes
    n = int(np.prod(v.shape()))
    bits = np.ctypeslib.as_array((ctypes.c_uint16 * n).from_address(v.data_ptr())).copy()
    return bits.view(ml_dtypes.bfloat16).reshape(v.shape())


def same(got, want):
    if got.dtype == np.object_:
        got, want = text(got), text(want)
        return got.shape == want.shape and (got == want).all()
    return got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want)


def sample(dt, shape, rng):
    n = int(np.prod(shape))
    if dt == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if dt == "BYTES":
        return np.array([f"s{i}-é".encode() for i in range(n)], dtype=np.object_).reshape(shape)
    if dt in ("FP16", "BF16", "FP32", "FP64"):
        return rng.standard_normal(shape).astype(NP[dt])
    info = np.iinfo(NP[dt])
    return rng.integers(info.min, info.max, shape, dtype=NP[dt], endpoint=True)


# BYTES elements that are not text: a PNG signature (NUL and invalid UTF-8),
# an empty one, a lone NUL, a cut multi-byte character, and text.
ODD = np.array([b"\x89PNG\r\n\x1a\n\x00\xff", b"", b"\x00", "é".encode()[:1], "é".encode()], dtype=np.object_).reshape(5, 1)


def odd_bytes(mod, c, headers, binary_output=True):
    """The identity model with ODD in IN_BYTES: ONNX Runtime holds and gives
    back every byte. Returns OUT_BYTES."""
    arrays = {f"IN_{dt}": sample(dt, [5, 1], np.random.default_rng(5)) for dt in IDENTITY}
    arrays["IN_BYTES"] = ODD
    out = [mod.InferRequestedOutput("OUT_BYTES", binary_data=binary_output) if mod is th else mod.InferRequestedOutput("OUT_BYTES")]
    return c.infer("identity", triton_inputs(mod, arrays, True), outputs=out, headers=headers).as_numpy("OUT_BYTES")


def exact_bytes(got, want):
    return got is not None and got.shape == want.shape and [bytes(x) for x in got.ravel()] == [bytes(x) for x in want.ravel()]


def helper_bytes(mod, c, headers):
    """helper-py's run_tensors on ODD: each element reversed, and its length."""
    r = c.infer("helper-py", triton_inputs(mod, {"B": ODD}, True), headers=headers)
    want_r = np.array([bytes(x)[::-1] for x in ODD.ravel()], dtype=np.object_).reshape(ODD.shape)
    want_n = np.array([len(x) for x in ODD.ravel()], np.int64).reshape(ODD.shape)
    return exact_bytes(r.as_numpy("R"), want_r) and np.array_equal(r.as_numpy("N"), want_n), (r.as_numpy("R"), r.as_numpy("N"))


def triton_inputs(mod, arrays, binary):
    out = []
    for name, a in arrays.items():
        dt = next(k for k, v in NP.items() if v == a.dtype.type) if a.dtype != np.object_ else "BYTES"
        i = mod.InferInput(name, list(a.shape), dt)
        if mod is th:
            # tritonclient sends BF16 only in binary over HTTP.
            i.set_data_from_numpy(a, binary_data=binary or dt == "BF16")
        else:
            i.set_data_from_numpy(a)
        out.append(i)
    return out


def config_matches(cfg, metadata):
    """Triton's model config against the model metadata: each tensor's
    TYPE_ name (BYTES is Triton's TYPE_STRING) and dims with the batch
    dimension, so max_batch_size 0. (protobuf's JSON writes int64 as
    strings and leaves a zero out.)"""
    def same(tensors, meta):
        return [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in tensors] == [
            (t["name"], "TYPE_" + ("STRING" if t["datatype"] == "BYTES" else t["datatype"]), [int(d) for d in t["shape"]]) for t in meta]
    return (cfg["name"] == "identity" and int(cfg.get("max_batch_size", 0)) == 0
            and same(cfg["input"], metadata["inputs"]) and same(cfg["output"], metadata["outputs"]))


def statistics(mod, c, headers, json_of=lambda r: r):
    """Triton's statistics extension as each tritonclient reads it: one
    version's figures move by what it was sent (3 answered, 1 refused),
    its queue and run figures with them; a model's figures need its key,
    every model's the admin token; an unknown model is not found.
    protobuf's JSON writes uint64 as strings and leaves zeros out."""
    n = lambda d, k: int(d.get(k, 0))  # noqa: E731

    def figures():
        s = json_of(c.get_inference_statistics("simple", "v1", headers=headers))["model_stats"]
        assert len(s) == 1 and s[0]["name"] == "simple" and s[0]["version"] == "v1", s
        i = s[0]["inference_stats"]
        return {
            "inferences": n(s[0], "inference_count"), "last": n(s[0], "last_inference"),
            "ok": n(i.get("success", {}), "count"), "ok_ns": n(i.get("success", {}), "ns"),
            "failed": n(i.get("fail", {}), "count"), "queued": n(i.get("queue", {}), "count"),
            "ran": n(i.get("compute_infer", {}), "count"), "ran_ns": n(i.get("compute_infer", {}), "ns"),
        }

    before = figures()
    a = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
    for _ in range(3):
        c.infer("simple", triton_inputs(mod, a, True), model_version="v1", headers=headers)
    try:
        c.infer("simple", triton_inputs(mod, {k: v[:, :8] for k, v in a.items()}, True), model_version="v1", headers=headers)
    except InferenceServerException:
        pass
    after = figures()
    name = mod.__name__
    check(f"{name}: statistics count the version's answers (3 more, 1 more refused)",
          after["ok"] - before["ok"] == 3 and after["failed"] - before["failed"] == 1
          and after["inferences"] == after["ok"] and after["ok_ns"] > before["ok_ns"], (before, after))
    check(f"{name}: statistics' queue and run figures move with the version's runs",
          after["queued"] - before["queued"] >= 3 and after["ran"] - before["ran"] >= 3 and after["ran_ns"] > before["ran_ns"], (before, after))
    check(f"{name}: last_inference is now, in ms", abs(after["last"] / 1000 - time.time()) < 60, after)
    for what, model, hdrs, code in (
        ("a model's statistics without its key", "simple", {}, ("401", "UNAUTHENTICATED")),
        ("every model's statistics with a model's key", "", headers, ("401", "UNAUTHENTICATED")),
        ("an unknown model's statistics", "nope", headers, ("404", "NOT_FOUND")),
    ):
        try:
            c.get_inference_statistics(model, headers=hdrs)
            check(f"{name}: {what} refused", False)
        except InferenceServerException as e:
            check(f"{name}: {what} -> {code}", any(x in str(e.status()) for x in code), (e.status(), e.message()))


def repository(mod, c, hdr, json_of=lambda r: r):
    """Triton's repository index as each tritonclient reads it: every
    endpoint's versions (all serving here) under the admin token, refused under a
    model's key; load and unload refused (models are deployed)."""
    name = mod.__name__
    index = json_of(c.get_model_repository_index(headers=hdr("admin")))
    models = index if isinstance(index, list) else index.get("models", [])
    got = {(m["name"], m.get("version", ""), m.get("state", "")) for m in models}
    check(f"{name}: the repository index lists every endpoint's versions, READY",
          {("simple", "v1", "READY"), ("simple", "v2", "READY"), ("iris", "v1", "READY")} <= got and len(got) == len(models), models)
    refused(name, (
        ("the repository index under a model's key", lambda: c.get_model_repository_index(headers=hdr("simple")), ("401", "UNAUTHENTICATED")),
        ("loading a model", lambda: c.load_model("simple", headers=hdr("admin")), ("501", "UNIMPLEMENTED")),
    ))


def log_settings(mod, c, hdr, json_of=lambda r: r):
    """Triton's logging extension as each client reads and changes it, under
    the admin token: the settings, a change answered with them all, what a
    level cannot say refused, a model's key refused."""
    name = mod.__name__

    def flat(r):
        r = json_of(r)
        r = r.get("settings", r)
        # gRPC: {"log_info": {"bool_param": true}, ...}
        return {k: (next(iter(v.values())) if isinstance(v, dict) else v) for k, v in r.items()}

    now = flat(c.get_log_settings(headers=hdr("admin")))
    check(f"{name}: the log settings read", now.get("log_info") is True and now.get("log_error") is True
          and int(now.get("log_verbose_level", -1)) == 0 and now.get("log_file") == "" and now.get("log_format") == "default", now)
    changed = flat(c.update_log_settings({"log_verbose_level": 1}, headers=hdr("admin")))
    check(f"{name}: log_verbose_level changed to 1, the others kept",
          int(changed["log_verbose_level"]) == 1 and changed["log_info"] is True, changed)
    refused(name, (
        ("log_warning off under log_info on", lambda: c.update_log_settings({"log_warning": False}, headers=hdr("admin")), ("400", "INVALID_ARGUMENT")),
        ("a log file", lambda: c.update_log_settings({"log_file": "/tmp/triton.log"}, headers=hdr("admin")), ("400", "INVALID_ARGUMENT")),
        ("the log settings under a model's key", lambda: c.get_log_settings(headers=hdr("simple")), ("401", "UNAUTHENTICATED")),
    ))
    back = flat(c.update_log_settings({"log_verbose_level": 0}, headers=hdr("admin")))
    check(f"{name}: the refused changes changed nothing", int(back["log_verbose_level"]) == 0 and back["log_warning"] is True, back)


def trace_settings(mod, c, hdr, json_of=lambda r: r):
    """Triton's trace extension as each client reads and changes it, under the
    admin token: the global settings and a model's own, a model's own cleared
    with None, what this server (no OTLP exporter) cannot do refused, a model's
    key and an unknown model refused."""
    name = mod.__name__
    admin = hdr("admin")

    def flat(r):
        r = json_of(r)
        r = r.get("settings", r)
        # gRPC: {"trace_rate": {"value": ["1"]}, ...}; REST: strings, trace_level a list.
        out = {k: (v.get("value", []) if isinstance(v, dict) else v) for k, v in r.items()}
        return {k: (v if k == "trace_level" or not isinstance(v, list) else (v[0] if v else "")) for k, v in out.items()}

    now = flat(c.get_trace_settings(headers=admin))
    check(f"{name}: the trace settings read (no exporter: OFF)", now.get("trace_level") == ["OFF"] and now.get("trace_rate") == "1"
          and now.get("trace_count") == "-1" and now.get("trace_mode") == "opentelemetry", now)
    changed = flat(c.update_trace_settings(settings={"trace_rate": "10"}, headers=admin))
    check(f"{name}: trace_rate changed, the others kept", changed["trace_rate"] == "10" and changed["trace_count"] == "-1", changed)
    own = flat(c.update_trace_settings(model_name="simple", settings={"trace_count": "5"}, headers=admin))
    check(f"{name}: a model's own trace_count, the global rate beside it", own["trace_count"] == "5" and own["trace_rate"] == "10", own)
    check(f"{name}: the global settings keep their own", flat(c.get_trace_settings(headers=admin))["trace_count"] == "-1")
    check(f"{name}: a model's settings read", flat(c.get_trace_settings(model_name="simple", headers=admin))["trace_count"] == "5")
    cleared = flat(c.update_trace_settings(model_name="simple", settings={"trace_count": None}, headers=admin))
    check(f"{name}: None clears the model's own", cleared["trace_count"] == "-1", cleared)
    refused(name, (
        ("TIMESTAMPS with no exporter", lambda: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, headers=admin), ("400", "INVALID_ARGUMENT")),
        ("trace_level TENSORS", lambda: c.update_trace_settings(settings={"trace_level": ["TENSORS"]}, headers=admin), ("400", "INVALID_ARGUMENT")),
        ("a trace file", lambda: c.update_trace_settings(settings={"trace_file": "/tmp/trace.json"}, headers=admin), ("400", "INVALID_ARGUMENT")),
        ("trace_rate 0", lambda: c.update_trace_settings(settings={"trace_rate": "0"}, headers=admin), ("400", "INVALID_ARGUMENT")),
        ("an unknown model's", lambda: c.get_trace_settings(model_name="nope", headers=admin), ("404", "NOT_FOUND")),
        ("the trace settings under a model's key", lambda: c.get_trace_settings(headers=hdr("simple")), ("401", "UNAUTHENTICATED")),
    ))
    kept = flat(c.get_trace_settings(headers=admin))
    check(f"{name}: the refused changes changed nothing", kept["trace_rate"] == "10" and kept["trace_level"] == ["OFF"]
          and kept["trace_file"] == "", kept)
    back = flat(c.update_trace_settings(settings={"trace_rate": "1"}, headers=admin))
    check(f"{name}: trace_rate back to 1", back["trace_rate"] == "1", back)


def shared_memory(mod, c, hdr, json_of=lambda r: r):
    """Triton's system shared memory extension as tritonclient.utils.shared_memory
    and each client use it (Triton's simple_*_shm_client): simple's inputs
    read from one region, OUTPUT0 written into another beside OUTPUT1 in the
    response, a raw input beside one in shared memory; registering, status and
    unregistering under the admin token; the mistakes refused, and an object
    shrunk while registered fails the call, not the server."""
    import os
    import tritonclient.utils.shared_memory as shm
    name = mod.__name__
    tag = name.replace(".", "_")
    a0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    a1 = np.full((1, 16), 3, np.int32)
    n = a0.nbytes
    admin = hdr("admin")
    ins, outs = f"{tag}_in", f"{tag}_out"
    c.unregister_system_shared_memory(headers=admin)
    ip = shm.create_shared_memory_region(ins, f"/{ins}", 2 * n)
    op = shm.create_shared_memory_region(outs, f"/{outs}", 2 * n)
    try:
        shm.set_shared_memory_region(ip, [a0])
        shm.set_shared_memory_region(ip, [a1], offset=n)
        c.register_system_shared_memory(ins, f"/{ins}", 2 * n, headers=admin)
        c.register_system_shared_memory(outs, f"/{outs}", 2 * n, headers=admin)
        status = json_of(c.get_system_shared_memory_status(headers=admin))
        regions = status if isinstance(status, list) else list(status.get("regions", {}).values())
        got = {(r["name"], r["key"], int(r["byte_size"])) for r in regions}
        check(f"{name}: both regions registered, as status lists them", got == {(ins, f"/{ins}", 2 * n), (outs, f"/{outs}", 2 * n)}, status)

        def infer(inputs, outputs):
            return c.infer("simple", inputs, outputs=outputs, headers=hdr("simple"))

        def tensor(r, o):
            out = r.get_output(o)
            return (out["shape"], out.get("parameters", {})) if isinstance(out, dict) else (list(out.shape), json_of(out).get("parameters", {}))

        i0 = mod.InferInput("INPUT0", [1, 16], "INT32")
        i0.set_shared_memory(ins, n)
        i1 = mod.InferInput("INPUT1", [1, 16], "INT32")
        i1.set_shared_memory(ins, n, offset=n)
        o0 = mod.InferRequestedOutput("OUTPUT0")
        o0.set_shared_memory(outs, n)
        r = infer([i0, i1], [o0, mod.InferRequestedOutput("OUTPUT1")])
        shape, params = tensor(r, "OUTPUT0")
        got = shm.get_contents_as_numpy(op, np.int32, shape)
        check(f"{name}: inputs read from shared memory, OUTPUT0 written into it", np.array_equal(got, a0 + a1), (got, params))
        check(f"{name}: OUTPUT1 in the response beside it", np.array_equal(r.as_numpy("OUTPUT1"), a0 - a1), r.as_numpy("OUTPUT1"))
        check(f"{name}: OUTPUT0's parameters name its region", "shared_memory_region" in json.dumps(params) and ins not in json.dumps(params), params)
        i1 = mod.InferInput("INPUT1", [1, 16], "INT32")
        i1.set_data_from_numpy(a0)
        o0 = mod.InferRequestedOutput("OUTPUT0")
        o0.set_shared_memory(outs, n, offset=n)
        infer([i0, i1], [o0])
        got = shm.get_contents_as_numpy(op, np.int32, [1, 16], offset=n)
        check(f"{name}: one input in shared memory, one sent; OUTPUT0 at an offset", np.array_equal(got, a0 + a0), got)

        def refused(what, call, codes, words):
            try:
                call()
                check(f"{name}: {what} refused", False)
            except InferenceServerException as e:
                check(f"{name}: {what} -> {codes}", any(x in str(e.status()) for x in codes) and words in e.message(), (e.status(), e.message()))

        small = mod.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory(outs, 8)
        refused("an output region too small", lambda: infer([i0, i1], [small]), ("400", "INVALID_ARGUMENT"), "takes 64 bytes")
        twice = [mod.InferRequestedOutput("OUTPUT1"), mod.InferRequestedOutput("OUTPUT1")]
        refused("an output asked for twice", lambda: infer([i0, i1], twice), ("400", "INVALID_ARGUMENT"), "asked for twice")
        nowhere = mod.InferInput("INPUT1", [1, 16], "INT32")
        nowhere.set_shared_memory("nowhere", n)
        refused("an input in a region not registered", lambda: infer([i0, nowhere], None), ("400", "INVALID_ARGUMENT"), "no shared memory region")
        refused("registering under a model's key", lambda: c.register_system_shared_memory("x", f"/{ins}", n, headers=hdr("simple")), ("401", "UNAUTHENTICATED"), "admin token")
        refused("registering a name twice", lambda: c.register_system_shared_memory(ins, f"/{ins}", n, headers=admin), ("409", "ALREADY_EXISTS"), "already registered")
        refused("registering a key that is no object", lambda: c.register_system_shared_memory("x", "/wasmscore-none", n, headers=admin), ("400", "INVALID_ARGUMENT"), "cannot open")
        refused("registering past the object's end", lambda: c.register_system_shared_memory("x", f"/{ins}", n, offset=2 * n, headers=admin), ("400", "INVALID_ARGUMENT"), "fewer than")
        refused("a region's status that is not registered", lambda: c.get_system_shared_memory_status("x", headers=admin), ("404", "NOT_FOUND"), "no shared memory region")
        # Shrunk while registered: a server that mapped it would die of SIGBUS.
        os.truncate(f"/dev/shm/{outs}", 8)
        o0 = mod.InferRequestedOutput("OUTPUT0")
        o0.set_shared_memory(outs, n, offset=n)
        refused("an output into an object shrunk while registered", lambda: infer([i0, i1], [o0]), ("400", "INVALID_ARGUMENT"), "holds 8 bytes now")
        r = infer([i0, i1], None)
        check(f"{name}: still served after the shrunk object", np.array_equal(r.as_numpy("OUTPUT0"), a0 + a0))
        c.unregister_system_shared_memory(ins, headers=admin)
        status = json_of(c.get_system_shared_memory_status(headers=admin))
        regions = status if isinstance(status, list) else list(status.get("regions", {}).values())
        check(f"{name}: one region unregistered", [r["name"] for r in regions] == [outs], status)
        c.unregister_system_shared_memory(headers=admin)
        refused("an input in a region unregistered", lambda: infer([i0, i1], None), ("400", "INVALID_ARGUMENT"), "no shared memory region")
    finally:
        shm.destroy_shared_memory_region(ip)
        shm.destroy_shared_memory_region(op)


def triton_http():
    c = th.InferenceServerClient(HTTP)
    check("tritonclient.http: server live and ready", c.is_server_live() and c.is_server_ready())
    md = c.get_server_metadata()
    check("tritonclient.http: server metadata", md["name"] == "wasmscore" and {"binary_tensor_data", "statistics", "system_shared_memory", "logging", "trace"} <= set(md["extensions"]), md)
    m = c.get_model_metadata("identity")
    check("tritonclient.http: model metadata lists every datatype",
          sorted(i["datatype"] for i in m["inputs"]) == sorted(IDENTITY) and m["inputs"][0]["shape"] == [-1, -1], m)
    check("tritonclient.http: model ready", c.is_model_ready("identity") and c.is_model_ready("simple", "v2"))
    cfg = c.get_model_config("identity")
    check("tritonclient.http: model config states the metadata's tensors as Triton does", config_matches(cfg, m), (cfg, m))
    check("tritonclient.http: a pinned version's config", c.get_model_config("simple", "v2")["input"][0]["name"] == "INPUT0")
    try:
        c.get_model_config("nope")
        check("tritonclient.http: unknown model's config", False)
    except InferenceServerException as e:
        check("tritonclient.http: unknown model's config -> 404", e.status() == "404", (e.status(), e.message()))
    rng = np.random.default_rng(7)
    arrays = {f"IN_{dt}": sample(dt, [2, 3], rng) for dt in IDENTITY}
    want = reference("identity", arrays)
    for binary in (True, False):
        outs = [th.InferRequestedOutput(f"OUT_{dt}", binary_data=binary) for dt in IDENTITY]
        r = c.infer("identity", triton_inputs(th, arrays, binary), outputs=outs, headers=auth("identity"))
        for dt in IDENTITY:
            got = r.as_numpy(f"OUT_{dt}")
            check(f"tritonclient.http identity {dt} binary={binary}", same(got, want[f"OUT_{dt}"]), (got, want[f"OUT_{dt}"]))
        check("tritonclient.http: model_version answered", r.get_response()["model_version"] == "v1")
    # BYTES that are not UTF-8, in binary (JSON cannot carry them).
    got = odd_bytes(th, c, auth("identity"))
    check("tritonclient.http identity BYTES that are not UTF-8, every byte back", exact_bytes(got, ODD), got)
    try:
        odd_bytes(th, c, auth("identity"), binary_output=False)
        check("tritonclient.http BYTES that are not UTF-8 asked for in JSON refused", False)
    except InferenceServerException as e:
        check("tritonclient.http BYTES that are not UTF-8 asked for in JSON -> 400 saying binary",
              e.status() == "400" and "not UTF-8" in e.message() and "binary" in e.message(), (e.status(), e.message()))
    check("tritonclient.http BYTES to a Python module's run_tensors and back", *helper_bytes(th, c, auth("helper-py")))
    # FP16 and BF16 (BF16 in binary only: tritonclient sends it no other way).
    halves = {"H": sample("FP16", [2, 3], rng), "B": sample("BF16", [2, 3], rng)}
    want = reference("halves", halves)
    for binary in (True, False):
        outs = [th.InferRequestedOutput(o, binary_data=binary) for o in ("H2", "B2", "HF")]
        r = c.infer("halves", triton_inputs(th, halves, binary), outputs=outs, headers=auth("halves"))
        for o in ("H2", "B2", "HF"):
            check(f"tritonclient.http halves {o} binary={binary}", same(r.as_numpy(o), want[o]), (r.as_numpy(o), want[o]))
    for ep in ("simple", "simple_fp32", "simple_fp64", "simple_int64"):
        dt = {"simple": "INT32", "simple_fp32": "FP32", "simple_fp64": "FP64", "simple_int64": "INT64"}[ep]
        a = {"INPUT0": sample(dt, [3, 16], rng), "INPUT1": sample(dt, [3, 16], rng)}
        if dt.startswith("INT"):
            a = {k: (v // 4) for k, v in a.items()}  # no overflow in the sum
        want = reference(ep, a)
        for binary in (True, False):
            r = c.infer(ep, triton_inputs(th, a, binary), headers=auth(ep))
            for o in ("OUTPUT0", "OUTPUT1"):
                check(f"tritonclient.http {ep} {o} binary={binary}", same(r.as_numpy(o), want[o]))
    # Version pinning: the path names the version.
    for v in ("v1", "v2"):
        a = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
        r = c.infer("simple", triton_inputs(th, a, True), model_version=v, headers=auth("simple"))
        check(f"tritonclient.http pinned to {v}", r.get_response()["model_version"] == v, r.get_response())
    # Errors: a clear message, and the next request is served.
    bad = [
        ("wrong shape", {"INPUT0": np.ones((1, 8), np.int32), "INPUT1": np.ones((1, 8), np.int32)}, "shape"),
        ("wrong dtype", {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}, "must be INT32"),
        ("unknown input", {"INPUT0": np.ones((1, 16), np.int32), "NOPE": np.ones((1, 16), np.int32)}, "has no input"),
    ]
    for what, a, words in bad:
        try:
            c.infer("simple", triton_inputs(th, a, True), headers=auth("simple"))
            check(f"tritonclient.http {what} refused", False)
        except InferenceServerException as e:
            check(f"tritonclient.http {what} -> 400 saying {words!r}", e.status() == "400" and words in e.message(), (e.status(), e.message()))
    try:
        c.infer("simple", triton_inputs(th, bad[0][1], True))
        check("tritonclient.http without a key refused", False)
    except InferenceServerException as e:
        check("tritonclient.http without a key -> 401", e.status() == "401", e)
    r = c.infer("simple", triton_inputs(th, {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}, True), headers=auth("simple"))
    check("tritonclient.http still served after the errors", (r.as_numpy("OUTPUT0") == 2).all())
    statistics(th, c, auth("simple"))
    repository(th, c, auth)
    log_settings(th, c, auth)
    trace_settings(th, c, auth)
    shared_memory(th, c, auth)
    # A module that takes the tensors itself (examples/iris-rust).
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    want = ort.InferenceSession(f"{MODELS}/iris.onnx", providers=["CPUExecutionProvider"]).run(None, {"X": x})
    r = c.infer("iris", triton_inputs(th, {"X": x}, True), outputs=[th.InferRequestedOutput("probabilities")], headers=auth("iris"))
    check("tritonclient.http iris (Rust module, tensors in and out)", np.allclose(r.as_numpy("probabilities"), want[1], atol=1e-6) and r.as_numpy("label") is None)
    r = c.infer("iris-py", triton_inputs(th, {"X": x}, False), headers=auth("iris-py"))
    check("tritonclient.http iris (Python module's run_tensors)", np.allclose(r.as_numpy("probabilities"), want[1], atol=1e-6) and (r.as_numpy("label") == want[0]).all())


def triton_grpc():
    c = tg.InferenceServerClient(GRPC)
    check("tritonclient.grpc: server live and ready", c.is_server_live() and c.is_server_ready())
    md = c.get_server_metadata(as_json=True)
    check("tritonclient.grpc: server metadata", md["name"] == "wasmscore", md)
    m = c.get_model_metadata("identity", as_json=True)
    check("tritonclient.grpc: model metadata", sorted(i["datatype"] for i in m["inputs"]) == sorted(IDENTITY), m)
    check("tritonclient.grpc: model ready", c.is_model_ready("identity") and c.is_model_ready("simple", "v2"))
    cfg = c.get_model_config("identity", as_json=True)["config"]
    check("tritonclient.grpc: model config states the metadata's tensors as Triton does", config_matches(cfg, m), (cfg, m))
    try:
        c.is_model_ready("nope")
        check("tritonclient.grpc: unknown model", False)
    except InferenceServerException as e:
        check("tritonclient.grpc: unknown model -> NOT_FOUND", "NOT_FOUND" in str(e.status()), e)
    rng = np.random.default_rng(11)
    arrays = {f"IN_{dt}": sample(dt, [3, 2], rng) for dt in IDENTITY}
    want = reference("identity", arrays)
    r = c.infer("identity", triton_inputs(tg, arrays, True), headers=gauth("identity"))
    for dt in IDENTITY:
        check(f"tritonclient.grpc identity {dt} (raw contents)", same(r.as_numpy(f"OUT_{dt}"), want[f"OUT_{dt}"]))
    got = odd_bytes(tg, c, gauth("identity"))
    check("tritonclient.grpc identity BYTES that are not UTF-8, every byte back", exact_bytes(got, ODD), got)
    check("tritonclient.grpc BYTES to a Python module's run_tensors and back", *helper_bytes(tg, c, gauth("helper-py")))
    halves = {"H": sample("FP16", [3, 2], rng), "B": sample("BF16", [3, 2], rng)}
    want = reference("halves", halves)
    r = c.infer("halves", triton_inputs(tg, halves, True), headers=gauth("halves"))
    for o in ("H2", "B2", "HF"):
        check(f"tritonclient.grpc halves {o} (raw contents)", same(r.as_numpy(o), want[o]), (r.as_numpy(o), want[o]))
    for ep, dt in (("simple", "INT32"), ("simple_fp32", "FP32"), ("simple_fp64", "FP64"), ("simple_int64", "INT64")):
        a = {"INPUT0": sample(dt, [2, 16], rng), "INPUT1": sample(dt, [2, 16], rng)}
        if dt.startswith("INT"):
            a = {k: (v // 4) for k, v in a.items()}
        want = reference(ep, a)
        r = c.infer(ep, triton_inputs(tg, a, True), outputs=[tg.InferRequestedOutput("OUTPUT1")], headers=gauth(ep))
        check(f"tritonclient.grpc {ep} OUTPUT1 only", same(r.as_numpy("OUTPUT1"), want["OUTPUT1"]) and r.as_numpy("OUTPUT0") is None)
    for v in ("v1", "v2"):
        a = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
        r = c.infer("simple", triton_inputs(tg, a, True), model_version=v, headers=gauth("simple"))
        check(f"tritonclient.grpc pinned to {v}", r.get_response().model_version == v)
    a = {"INPUT0": np.ones((1, 8), np.int32), "INPUT1": np.ones((1, 8), np.int32)}
    for what, headers, code, words in (
        ("wrong shape", gauth("simple"), "INVALID_ARGUMENT", "shape"),
        ("no key", {}, "UNAUTHENTICATED", "Bearer"),
        ("a wrong key", {"authorization": "Bearer nope"}, "UNAUTHENTICATED", ""),
    ):
        try:
            c.infer("simple", triton_inputs(tg, a, True), headers=headers)
            check(f"tritonclient.grpc {what} refused", False)
        except InferenceServerException as e:
            check(f"tritonclient.grpc {what} -> {code}", code in str(e.status()) and words in e.message(), (e.status(), e.message()))
    as_json = lambda r: json.loads(MessageToJson(r, preserving_proto_field_name=True))  # noqa: E731
    statistics(tg, c, gauth("simple"), json_of=as_json)
    repository(tg, c, gauth, json_of=as_json)
    log_settings(tg, c, gauth, json_of=as_json)
    trace_settings(tg, c, gauth, json_of=as_json)
    shared_memory(tg, c, gauth, json_of=as_json)
    # Typed contents (not raw): what grpcio users build by hand.
    from tritonclient.grpc import service_pb2
    req = service_pb2.ModelInferRequest(model_name="simple_fp32")
    for n in ("INPUT0", "INPUT1"):
        t = req.inputs.add(name=n, datatype="FP32", shape=[1, 16])
        t.contents.fp32_contents.extend([1.5] * 16)
    resp = c._client_stub.ModelInfer(req, metadata=list(gauth("simple_fp32").items()))
    got = np.frombuffer(resp.raw_output_contents[0], np.float32)
    check("grpc typed contents in, raw_output_contents out", (got == 3.0).all() and len(resp.raw_output_contents) == 2, resp)
    # Typed bytes_contents that are not UTF-8, to a Python module's run_tensors.
    req = service_pb2.ModelInferRequest(model_name="helper-py")
    t = req.inputs.add(name="B", datatype="BYTES", shape=[2, 1])
    t.contents.bytes_contents.extend([b"\x89PNG\x00\xff", b"ok"])
    resp = c._client_stub.ModelInfer(req, metadata=list(gauth("helper-py").items()))
    names = [o.name for o in resp.outputs]
    raw = resp.raw_output_contents[names.index("R")]
    check("grpc typed bytes_contents that are not UTF-8 in, every byte back",
          raw == struct.pack("<I", 6) + b"\xff\x00GNP\x89" + struct.pack("<I", 2) + b"ko", raw)


def triton_stream():
    """Triton's stream (ModelStreamInfer), as tritonclient.grpc's
    start_stream and async_stream_infer drive it: answers in the order
    of the requests, a bad request answered by its error while the stream
    goes on, and the stream's key checked for every request."""
    rng = np.random.default_rng(13)
    sent = [{"INPUT0": sample("FP32", [1, 16], rng), "INPUT1": sample("FP32", [1, 16], rng)} for _ in range(20)]
    answers = []
    done = threading.Event()

    def callback(result, error):
        answers.append((result, error))
        if len(answers) == len(sent) + 1:
            done.set()

    c = tg.InferenceServerClient(GRPC)
    c.start_stream(callback, headers=gauth("simple_fp32"))
    for i, a in enumerate(sent):
        c.async_stream_infer("simple_fp32", triton_inputs(tg, a, True), request_id=str(i))
        if i == 9:
            bad = {"INPUT0": np.ones((1, 8), np.float32), "INPUT1": np.ones((1, 8), np.float32)}
            c.async_stream_infer("simple_fp32", triton_inputs(tg, bad, True), request_id="bad")
    check("tritonclient.grpc stream: every request answered", done.wait(30), len(answers))
    c.stop_stream()
    ids = [r.get_response().id if r is not None else "error" for r, _ in answers]
    check("tritonclient.grpc stream: answers in the order of the requests",
          ids == [str(i) for i in range(10)] + ["error"] + [str(i) for i in range(10, 20)], ids)
    _, err = answers[10]
    check("tritonclient.grpc stream: a wrong shape is answered by its error, the stream goes on",
          err is not None and "[request id: bad] InvalidArgument" in err.message() and "shape" in err.message(), err)
    oks = [r for r, _ in answers if r is not None]
    check("tritonclient.grpc stream: every answer is ONNX Runtime's",
          all(same(r.as_numpy("OUTPUT0"), reference("simple_fp32", a)["OUTPUT0"]) for r, a in zip(oks, sent)))
    check("tritonclient.grpc stream: each answer names its version",
          all(r.get_response().model_version == "v1" for r in oks), [r.get_response().model_version for r in oks])
    # A wrong key: each request of the stream is refused.
    refused = []
    c = tg.InferenceServerClient(GRPC)
    c.start_stream(lambda result, error: refused.append(error), headers={"authorization": "Bearer nope"})
    c.async_stream_infer("simple_fp32", triton_inputs(tg, sent[0], True), request_id="k")
    deadline = time.time() + 30
    while not refused and time.time() < deadline:
        time.sleep(0.01)
    c.stop_stream()
    check("tritonclient.grpc stream: a wrong key -> Unauthenticated",
          refused and refused[0] is not None and "Unauthenticated" in refused[0].message(), refused)


def triton_decoupled():
    """A decoupled version (Triton's decoupled transaction policy): over
    the stream, a request is answered as many times as the module says,
    each response as it is made, the last flagged when the client asks
    (enable_empty_final_response); a unary call to it is refused."""
    got = queue.Queue()
    c = tg.InferenceServerClient(GRPC)
    c.start_stream(lambda result, error: got.put((result, error)), headers=gauth("counter"))

    def count(n, rid, final):
        x = tg.InferInput("COUNT", [1], "INT64")
        x.set_data_from_numpy(np.array([n], np.int64))
        c.async_stream_infer("counter", [x], request_id=rid, enable_empty_final_response=final)

    def take(k):
        out = []
        for _ in range(k):
            try:
                out.append(got.get(timeout=30))
            except queue.Empty:
                break
        return out

    def final(r):
        p = r.get_response().parameters
        return p["triton_final_response"].bool_param if "triton_final_response" in p else None

    check("decoupled: the model config states the policy over gRPC",
          c.get_model_config("counter", headers=gauth("counter")).config.model_transaction_policy.decoupled is True
          and c.get_model_config("counter-unary", headers=gauth("counter-unary")).config.model_transaction_policy.decoupled is False)
    hc = th.InferenceServerClient(HTTP)
    check("decoupled: the model config states the policy over REST",
          hc.get_model_config("counter", headers=auth("counter"))["model_transaction_policy"] == {"decoupled": True}
          and hc.get_model_config("counter-unary", headers=auth("counter-unary"))["model_transaction_policy"] == {"decoupled": False})
    count(5, "five", False)
    answers = take(5)
    check("decoupled: five responses to one request", len(answers) == 5 and all(e is None for _, e in answers), answers)
    check("decoupled: each response as the module made it, in order",
          [int(r.as_numpy("INDEX")[0]) for r, _ in answers] == [0, 1, 2, 3, 4]
          and all(r.get_response().id == "five" for r, _ in answers), answers)
    count(3, "flagged", True)
    answers = take(3)
    check("decoupled: the last response flagged final, the others not (enable_empty_final_response)",
          [final(r) for r, _ in answers] == [False, False, True], [final(r) for r, _ in answers])
    count(0, "none", True)
    answers = take(1)
    check("decoupled: a request answered by no tensor gets the empty final response alone",
          len(answers) == 1 and final(answers[0][0]) is True and not answers[0][0].get_response().outputs, answers)
    count(0, "silent", False)
    count(1, "after", False)
    answers = take(1)
    check("decoupled: nothing at all for an empty answer the client did not ask to be told of",
          len(answers) == 1 and answers[0][0].get_response().id == "after", answers)
    # A Python module's wasmscore.send.
    x = tg.InferInput("COUNT", [1], "INT64")
    x.set_data_from_numpy(np.array([3], np.int64))
    c.stop_stream()
    c.start_stream(lambda result, error: got.put((result, error)), headers=gauth("counter-py"))
    c.async_stream_infer("counter-py", [x], request_id="py")
    answers = take(3)
    check("decoupled: a Python module's wasmscore.send answers as the Rust one's",
          [int(r.as_numpy("INDEX")[0]) for r, e in answers if e is None] == [0, 1, 2], [(e.message() if e else r.as_numpy("INDEX")) for r, e in answers])
    c.stop_stream()
    x = tg.InferInput("COUNT", [1], "INT64")
    x.set_data_from_numpy(np.array([2], np.int64))
    hx = th.InferInput("COUNT", [1], "INT64")
    hx.set_data_from_numpy(np.array([2], np.int64))
    h = th.InferenceServerClient(HTTP)
    refused("decoupled", [
        ("a unary ModelInfer", lambda: c.infer("counter", [x], headers=gauth("counter")),
         ["INVALID_ARGUMENT"], "ModelStreamInfer"),
        ("a REST infer", lambda: h.infer("counter", [hx], headers=auth("counter")), ["400"], "decoupled"),
        # The same module on a version that is not decoupled: its second
        # response is refused, and its call fails saying why.
        ("a second response from a version that is not decoupled",
         lambda: c.infer("counter-unary", [x], headers=gauth("counter-unary")), ["INTERNAL"], "not decoupled"),
    ])

def raw_http_errors():
    """What the clients never send: a lying header length, a missing binary
    section, an oversize body. Each gets 400/413 with {"error": ...}."""
    url = f"http://{HTTP}/v2/models/simple/infer"
    head = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}]}).encode()
    data = np.ones(16, np.int32).tobytes()
    cases = [
        ("a header length that lies", head + data + data, str(len(head) + 500), 400, "the body holds"),
        ("a missing binary section", head + data, str(len(head)), 400, "binary data are left"),
        ("a header length that is not a number", head + data + data, "x", 400, "byte count"),
    ]
    for what, body, hl, status, words in cases:
        r = requests.post(url, data=body, headers={**auth("simple"), "Inference-Header-Content-Length": hl})
        check(f"raw http: {what} -> {status}", r.status_code == status and words in r.json()["error"], (r.status_code, r.text))
    r = requests.post(url, data=head + data + data, headers={**auth("simple"), "Inference-Header-Content-Length": str(len(head))})
    check("raw http: the same request framed right -> 200", r.status_code == 200 and r.headers["x-wasmscore-version"] in ("v1", "v2"), r.text)
    r = requests.post(url, data=b"x" * (2 * 1024 * 1024), headers=auth("simple"))
    check("raw http: an oversize body -> 413", r.status_code == 413 and "error" in r.json(), (r.status_code, r.text))
    r = requests.get(f"http://{HTTP}/v2/models/nope")
    check("raw http: unknown model metadata -> 404 {error}", r.status_code == 404 and isinstance(r.json()["error"], str), r.text)


async def kserve_clients():
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
    x = np.array([[1.0] * 16, [2.0] * 16], np.float32)
    want = reference("simple_fp32", {"INPUT0": x, "INPUT1": x})
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    base = f"http://{HTTP}"
    check("kserve REST: server and model ready", await rest.is_server_ready(base) and await rest.is_model_ready(base, "simple_fp32"))
    for binary in (False, True):
        ins = []
        for n in ("INPUT0", "INPUT1"):
            i = InferInput(n, list(x.shape), "FP32")
            i.set_data_from_numpy(x, binary_data=binary)
            ins.append(i)
        r = await rest.infer(base, InferRequest(model_name="simple_fp32", infer_inputs=ins), model_name="simple_fp32", headers=auth("simple_fp32"))
        got = {o.name: o.as_numpy() for o in r.outputs}
        check(f"kserve REST infer binary={binary}", np.array_equal(got["OUTPUT0"], want["OUTPUT0"]) and np.array_equal(got["OUTPUT1"], want["OUTPUT1"]), got)
    await rest.close()
    g = InferenceGRPCClient(GRPC)
    check("kserve gRPC: server ready", await g.is_server_ready())
    ins = []
    for n in ("INPUT0", "INPUT1"):
        i = InferInput(n, list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        ins.append(i)
    r = await g.infer(InferRequest(model_name="simple_fp32", infer_inputs=ins), headers=list(gauth("simple_fp32").items()))
    got = {o.name: o.as_numpy() for o in r.outputs}
    check("kserve gRPC infer", np.array_equal(got["OUTPUT0"], want["OUTPUT0"]), got)
    await g.close()


if PART == "triton":
    triton_http()
    triton_grpc()
    triton_stream()
    triton_decoupled()
    raw_http_errors()
else:
    asyncio.run(kserve_clients())
print(f"all {CHECKS} checks passed")
