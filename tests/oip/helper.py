# A Python module that exercises the helper's 16-bit floats and byte
# strings. Built by tests/tests/e2e/oip.rs and deployed with
# tests/oip/make_models.py's halves model.
# - run() (/score JSON): FP16 and BF16 tensors made from JSON numbers with
#   wasmscore.tensor(..., dtype="float16" / "bfloat16") and read back with
#   .tolist() (through the contract's half-floats import); a string tensor
#   made from bytes that are not UTF-8 and read back (byte-strings import);
#   INT8 and UINT8 tensors made and read back (the bindings carry them as
#   bytes), a BOOL tensor's dtype, values a dtype cannot hold refused with
#   BadInput, and a NaN in the answer (written as null); with a
#   "surrogate" key, an error whose message holds a lone surrogate.
# - run_tensors() (OIP, tests/oip/clients.py): a BYTES input B, answered
#   with each element's bytes reversed (R, not UTF-8 for most text) and
#   their lengths (N); an INT64 input COUNT of N, answered N times (a
#   decoupled version): N - 1 responses sent with wasmscore.send, the last
#   returned, each an INT64 INDEX.
import json

import wasmscore

model = None


def init():
    global model
    model = wasmscore.load_model("model.onnx")


def run(raw_data):
    body = json.loads(raw_data)
    if "surrogate" in body:
        # json.loads makes a lone surrogate of "\ud800": a message holding
        # one is not UTF-8, which a WIT string must be.
        if body.get("fail"):
            raise ValueError(f"failed on {body['surrogate']}")
        raise wasmscore.BadInput(f"refused {body['surrogate']}")
    out = model.run({"H": wasmscore.tensor(body["H"], dtype="float16"), "B": wasmscore.tensor(body["B"], dtype="bfloat16")})
    raw = wasmscore.tensor([b"\x89PNG\x00\xff", "t\u00e9xt"], dtype="string")
    refused = []
    for data, dtype in [([256], "uint8"), ([-129], "int8"), ([-1], "uint32"), (["false"], "bool")]:
        try:
            wasmscore.tensor(data, dtype=dtype)
            refused.append(None)
        except wasmscore.BadInput as e:
            refused.append(str(e))
    return {
        "ints": {
            "int8": wasmscore.tensor([[-1, 127], [-128, 0]], dtype="int8").tolist(),
            "uint8": wasmscore.tensor([0, 255], dtype="uint8").tolist(),
            "bool": wasmscore.tensor([True, False], dtype="bool").dtype,
        },
        "refused": refused,
        "nan": float("nan"),
        "inputs": model.inputs,
        "outputs": {name: {"dtype": t.dtype, "data": t.tolist()} for name, t in out.items()},
        "bytes": {"dtype": raw.dtype, "data": [list(e) if isinstance(e, bytes) else e for e in raw.tolist()]},
    }


def run_tensors(inputs):
    if "COUNT" in inputs:
        n = inputs["COUNT"].tolist()[0]
        for i in range(n - 1):
            wasmscore.send({"INDEX": wasmscore.tensor([i], dtype="int64")})
        return {"INDEX": wasmscore.tensor([n - 1], dtype="int64")}
    b = inputs["B"]
    raw = [e if isinstance(e, bytes) else e.encode("utf-8") for e in b.flat()]
    return {
        "R": wasmscore.tensor([e[::-1] for e in raw], dtype="string", shape=b.shape),
        "N": wasmscore.tensor([len(e) for e in raw], dtype="int64", shape=b.shape),
    }
