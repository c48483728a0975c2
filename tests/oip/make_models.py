"""Makes the small ONNX models the Open Inference Protocol tests serve.

- identity/model.onnx: one Identity per OIP datatype but BF16; input
  IN_<DT> -> output OUT_<DT>, each of shape [-1, -1] (BYTES as ONNX
  strings). ONNX Runtime's Python API cannot feed BF16 and BYTES in one
  run, so the reference outputs of a model with both cannot be had.
- halves/model.onnx: FP16 H and BF16 B ([-1, -1]) -> H2 and B2 (Identity)
  and HF (H cast to FP32): the 16-bit floats through `/score` JSON.
- simple/model.onnx: Triton's "simple" example: INT32 INPUT0, INPUT1 [-1, 16]
  -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
- simple_fp32, simple_fp64, simple_int64: the same for those datatypes
  (what ONNX Runtime's CPU Add and Sub take).

Run: .venv/bin/python tests/oip/make_models.py OUT_DIR
"""
import pathlib
import sys

import onnx
from onnx import TensorProto, helper

# OIP datatype -> ONNX element type.
DATATYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "BF16": TensorProto.BFLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def identity(out):
    nodes, inputs, outputs = [], [], []
    for dt, et in DATATYPES.items():
        if dt == "BF16":
            continue
        inputs.append(helper.make_tensor_value_info(f"IN_{dt}", et, ["n", "m"]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{dt}", et, ["n", "m"]))
        nodes.append(helper.make_node("Identity", [f"IN_{dt}"], [f"OUT_{dt}"]))
    save(helper.make_graph(nodes, "identity", inputs, outputs), out / "identity" / "model.onnx")


def halves(out):
    vi = lambda n, et: helper.make_tensor_value_info(n, et, ["n", "m"])
    nodes = [
        helper.make_node("Identity", ["H"], ["H2"]),
        helper.make_node("Identity", ["B"], ["B2"]),
        helper.make_node("Cast", ["H"], ["HF"], to=TensorProto.FLOAT),
    ]
    inputs = [vi("H", TensorProto.FLOAT16), vi("B", TensorProto.BFLOAT16)]
    outputs = [vi("H2", TensorProto.FLOAT16), vi("B2", TensorProto.BFLOAT16), vi("HF", TensorProto.FLOAT)]
    save(helper.make_graph(nodes, "halves", inputs, outputs), out / "halves" / "model.onnx")


def simple(out, name, et):
    vi = lambda n: helper.make_tensor_value_info(n, et, ["batch", 16])
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    graph = helper.make_graph(nodes, name, [vi("INPUT0"), vi("INPUT1")], [vi("OUTPUT0"), vi("OUTPUT1")])
    save(graph, out / name / "model.onnx")


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1])
    identity(out)
    halves(out)
    simple(out, "simple", TensorProto.INT32)
    simple(out, "simple_fp32", TensorProto.FLOAT)
    simple(out, "simple_fp64", TensorProto.DOUBLE)
    simple(out, "simple_int64", TensorProto.INT64)
    print(f"wrote the models under {out}")
