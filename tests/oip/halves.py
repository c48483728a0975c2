# A Python module on tests/oip/make_models.py's halves model: FP16 and BF16
# tensors made from JSON numbers with wasmscore.tensor(..., dtype="float16"
# / "bfloat16") and read back with .tolist() (the helper goes through the
# contract's half-floats import). Built by tests/tests/e2e/oip.rs.
import json

import wasmscore

model = None


def init():
    global model
    model = wasmscore.load_model("model.onnx")


def run(raw_data):
    body = json.loads(raw_data)
    out = model.run({"H": wasmscore.tensor(body["H"], dtype="float16"), "B": wasmscore.tensor(body["B"], dtype="bfloat16")})
    return {
        "inputs": model.inputs,
        "outputs": {name: {"dtype": t.dtype, "data": t.tolist()} for name, t in out.items()},
    }
