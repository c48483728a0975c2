#!/usr/bin/env python3
"""Models for the batching benchmark and tests, made with the onnx package.

  mlp/model.onnx       X float32 [-1, 256] -> 2048 (ReLU) -> 2048 (ReLU) -> 10
                 (softmax) as `probabilities`: about 4.7 M weights (19 MB), so
                 one row is a matrix-vector product bound by reading the
                 weights, and a batch reads them once for all its rows.
  centered/model.onnx  Y = X - mean(X over the batch): rows depend on each other,
                 so the batching probe must refuse it.

Each is named model.onnx, the file examples/rows-rust loads.

Usage: .venv/bin/python bench/batch_models.py OUT_DIR
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def mlp(path):
    rng = np.random.default_rng(7)
    sizes = [256, 2048, 2048, 10]
    nodes, inits, x = [], [], "X"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        limit = np.sqrt(6.0 / (a + b))
        inits.append(nh.from_array(rng.uniform(-limit, limit, (a, b)).astype(np.float32), f"W{i}"))
        inits.append(nh.from_array(np.zeros(b, np.float32), f"B{i}"))
        nodes.append(h.make_node("Gemm", [x, f"W{i}", f"B{i}"], [f"G{i}"]))
        x = f"G{i}"
        if i < len(sizes) - 2:
            nodes.append(h.make_node("Relu", [x], [f"R{i}"]))
            x = f"R{i}"
    nodes.append(h.make_node("Softmax", [x], ["probabilities"], axis=1))
    g = h.make_graph(
        nodes,
        "mlp",
        [h.make_tensor_value_info("X", T.FLOAT, [None, 256])],
        [h.make_tensor_value_info("probabilities", T.FLOAT, [None, 10])],
        inits,
    )
    save(g, path)


def centered(path):
    g = h.make_graph(
        [h.make_node("ReduceMean", ["X"], ["M"], axes=[0], keepdims=1), h.make_node("Sub", ["X", "M"], ["Y"])],
        "centered",
        [h.make_tensor_value_info("X", T.FLOAT, [None, 4])],
        [h.make_tensor_value_info("Y", T.FLOAT, [None, 4])],
    )
    save(g, path, opset=17)


def save(g, path, opset=17):
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name, make in (("mlp", mlp), ("centered", centered)):
        (out / name).mkdir(parents=True, exist_ok=True)
        make(out / name / "model.onnx")
        print(out / name / "model.onnx")
