#!/usr/bin/env bash
# Triton's system shared memory extension against sending the tensor
# (bench/shm.py): an FP32 identity model, tritonclient http and grpc, three
# tensor sizes. Writes a section of BENCHMARKS.md. Usage: bench/shm.sh [SECONDS_PER_CASE]
. "$(dirname "$0")/lib.sh"
built
mkdir -p target/compare/echo
.venv/bin/python - target/compare/echo/model.onnx <<'PY'
import sys
import onnx
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [-1])
y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [-1])
graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "echo", [x], [y])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), sys.argv[1])
PY
.venv-clients/bin/python bench/shm.py target/compare/echo/model.onnx --seconds "${1:-3}" --write
