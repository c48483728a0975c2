"""The wasmscore host API for score.py authors.

    import json
    import wasmscore

    def init():
        global model
        model = wasmscore.load_model("model.onnx")

    def run(raw_data):
        x = json.loads(raw_data)["data"]
        out = model.run({"X": wasmscore.tensor(x, dtype="float32")})
        return {"probabilities": out["probabilities"].tolist()}

Tensors live on the host; `tensor()` copies a nested list there, `.tolist()`
copies one back. Open Inference Protocol requests (`/v2/models/NAME/infer`,
REST or gRPC) come with their tensors already decoded by the host: define
`run_tensors(inputs)` ({name: Tensor} in, {name: Tensor} out) and they go
to it without JSON; without it, `run()` gets the request's JSON part.
String tensors (OIP BYTES) read as `str`, or as `bytes` for an element
that is not UTF-8 (an image, say); `tensor([b"...", ...], dtype="string")`
makes one from bytes. Raise `wasmscore.BadInput` for a client error (HTTP 400);
any other exception is a module failure (HTTP 500). A decoupled version
(deployed with `decoupled: true`) may answer one request several times:
`send({name: Tensor})` sends a response at once, and what `run_tensors`
returns comes last.
"""
from wit_world.imports import byte_strings as _bytes, data_collection as _dc, half_floats as _half, inference, log as _log, metrics as _metrics, ops as _ops, responses as _responses, scoring_types as _scoring_types, tensors, types
from componentize_py_types import Err

__all__ = ["BadInput", "Model", "Tensor", "load_model", "tensor", "log", "record", "collect", "ops", "send"]


class BadInput(Exception):
    """Raise from run() when the request is wrong: the client gets 400."""


_DATA = {
    "float32": types.TensorData_Float32,
    "float64": types.TensorData_Float64,
    "int8": types.TensorData_Int8,
    "int16": types.TensorData_Int16,
    "int32": types.TensorData_Int32,
    "int64": types.TensorData_Int64,
    "uint8": types.TensorData_Uint8,
    "uint16": types.TensorData_Uint16,
    "uint32": types.TensorData_Uint32,
    "uint64": types.TensorData_Uint64,
    "bool": types.TensorData_Boolean,
    "string": types.TensorData_String,
}
# 16-bit floats: made and read as Python floats through the half-floats
# import (the contract's `dtype` calls them uint16).
_HALF = {"float16": _half.HalfType.FLOAT16, "bfloat16": _half.HalfType.BFLOAT16}
_HALF_NAME = {v: k for k, v in _HALF.items()}


# Integer dtypes' ranges: a value outside is the client's error (400), not
# a trap in the bindings.
_RANGE = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}


def _dtype_name(dtype):
    # The contract's enum says BOOLEAN; tensor() and the other helpers say bool.
    name = dtype.name.lower()
    return "bool" if name == "boolean" else name


def _unwrap(call, *args):
    """Calls a host function; turns its typed error into BadInput or RuntimeError."""
    try:
        return call(*args)
    except Err as e:
        if isinstance(e.value, types.Error_BadInput):
            raise BadInput(e.value.value) from None
        raise RuntimeError(getattr(e.value, "value", str(e.value))) from None


def _flatten(data):
    shape = []
    level = data
    while isinstance(level, (list, tuple)):
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    flat = []

    def walk(x, depth):
        if depth == len(shape):
            if isinstance(x, (list, tuple)):
                raise BadInput("ragged nested list: rows have different lengths")
            flat.append(x)
            return
        if not isinstance(x, (list, tuple)) or len(x) != shape[depth]:
            raise BadInput("ragged nested list: rows have different lengths")
        for y in x:
            walk(y, depth + 1)

    walk(data, 0)
    return shape, flat


class Tensor:
    """A host tensor."""

    def __init__(self, handle):
        self.handle = handle

    @property
    def shape(self):
        return list(self.handle.shape())

    @property
    def dtype(self):
        name = _dtype_name(self.handle.dtype())
        if name != "uint16":
            return name
        # Only a tensor that says uint16 can be a 16-bit float.
        half = _half.type_of(self.handle)
        return _HALF_NAME[half] if half is not None else name

    def flat(self):
        """The elements as a flat list (float16 and bfloat16 as floats;
        strings as str, or bytes where an element is not UTF-8)."""
        dtype = self.dtype
        if dtype in _HALF:
            return list(_unwrap(_half.to_f32, self.handle))
        if dtype == "string":
            return [_text_or_bytes(b) for b in _unwrap(_bytes.to_bytes, self.handle)]
        value = self.handle.data().value
        if dtype == "int8":
            # The bindings carry int8 as bytes: two's complement back to signed.
            return [(b ^ 0x80) - 0x80 for b in value]
        return list(value)

    def tolist(self):
        """The elements as a nested list of the tensor's shape."""
        flat = self.flat()
        shape = self.shape
        if not shape:
            return flat[0]

        def build(offset, dims):
            if len(dims) == 1:
                return flat[offset : offset + dims[0]], offset + dims[0]
            out = []
            for _ in range(dims[0]):
                row, offset = build(offset, dims[1:])
                out.append(row)
            return out, offset

        return build(0, shape)[0]


def _text_or_bytes(b):
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(b)


def tensor(data, dtype="float32", shape=None):
    """Makes a host tensor from a (nested) list; the shape is inferred unless given."""
    if dtype not in _DATA and dtype not in _HALF:
        raise BadInput(f"unknown dtype {dtype!r}; use one of {sorted([*_DATA, *_HALF])}")
    if shape is None:
        shape, flat = _flatten(data)
    else:
        flat = list(data)
    try:
        if dtype.startswith("float") or dtype in _HALF:
            flat = [float(v) for v in flat]
        elif dtype == "bool":
            # bool("false") is True: only booleans and numbers are taken.
            if any(not isinstance(v, (bool, int, float)) for v in flat):
                raise BadInput("a bool tensor takes true/false (or numbers)")
            flat = [bool(v) for v in flat]
        elif dtype == "string":
            if any(isinstance(v, (bytes, bytearray)) for v in flat):
                raw = [bytes(v) if isinstance(v, (bytes, bytearray)) else str(v).encode("utf-8") for v in flat]
                return Tensor(_unwrap(_bytes.from_bytes, [int(d) for d in shape], raw))
            flat = [str(v) for v in flat]
        else:
            flat = [int(v) for v in flat]
            lo, hi = _RANGE[dtype]
            if any(v < lo or v > hi for v in flat):
                raise BadInput(f"a {dtype} tensor holds {lo}..{hi}; a value is outside")
            if dtype == "uint8":
                # The bindings carry int8 and uint8 as bytes.
                flat = bytes(flat)
            elif dtype == "int8":
                flat = bytes(v & 0xFF for v in flat)
    except (TypeError, ValueError) as e:
        raise BadInput(f"cannot make a {dtype} tensor: {e}") from None
    if dtype in _HALF:
        return Tensor(_unwrap(_half.from_f32, _HALF[dtype], [int(d) for d in shape], flat))
    return Tensor(_unwrap(tensors.Tensor.create, [int(d) for d in shape], _DATA[dtype](flat)))


class Model:
    """A model that ships with the version, run by the host."""

    def __init__(self, handle):
        self.handle = handle

    def _described(self, infos):
        half = {name: _HALF_NAME[t] for name, t in _half.model_types(self.handle)}
        return [(i.name, half.get(i.name, _dtype_name(i.dtype)), list(i.shape)) for i in infos]

    @property
    def inputs(self):
        return self._described(self.handle.inputs())

    @property
    def outputs(self):
        return self._described(self.handle.outputs())

    def run(self, inputs, outputs=None):
        """inputs: {name: Tensor}; returns {name: Tensor}."""
        pairs = []
        for name, t in inputs.items():
            if not isinstance(t, Tensor):
                t = tensor(t)
            pairs.append((name, t.handle))
        out = _unwrap(self.handle.run, pairs, list(outputs or []))
        return {name: Tensor(h) for name, h in out}


def load_model(name):
    """Loads a model file shipped with the version, e.g. "model.onnx"."""
    return Model(_unwrap(inference.Model.load, name))


def log(message, level="info"):
    lv = {"debug": _log.Level.DEBUG, "info": _log.Level.INFO, "warn": _log.Level.WARN, "error": _log.Level.ERROR}[level]
    _log.log(lv, str(message))


def record(name, value):
    """Reports a number (a click, a score) for the verdict to compare
    between versions: `wasmscore endpoint compare`."""
    _metrics.record(str(name), float(value))


_DESIGNATIONS = {
    "inputs": _dc.Designation.INPUTS,
    "predictions": _dc.Designation.PREDICTIONS,
    "labels": _dc.Designation.LABELS,
    "signals": _dc.Designation.SIGNALS,
    "general": _dc.Designation.GENERAL,
}


def collect(data, designation="general", name=""):
    """Collects `data` for analysis (Azure ML's ModelDataCollector): kept
    with the request's correlation id under DATA_DIR/collected when the
    version has collect_model_data and this request is sampled; otherwise
    nothing happens. A str goes as it is, anything else as JSON.
    `designation` is "inputs", "predictions", "labels", "signals" or
    "general"."""
    import json as _json
    if designation not in _DESIGNATIONS:
        raise ValueError(f"unknown designation {designation!r}; use one of {', '.join(_DESIGNATIONS)}")
    text = data if isinstance(data, str) else _json.dumps(data)
    _dc.collect(_DESIGNATIONS[designation], str(name), text)


class ops:
    """Single tensor ops on a device (None = the version's device)."""

    @staticmethod
    def matmul(a, b, device=None):
        return Tensor(_unwrap(_ops.matmul, a.handle, b.handle, device))

    @staticmethod
    def gemm(a, b, c=None, alpha=1.0, beta=1.0, trans_a=False, trans_b=False, device=None):
        return Tensor(_unwrap(_ops.gemm, a.handle, b.handle, c.handle if c else None, alpha, beta, trans_a, trans_b, device))

    @staticmethod
    def add(a, b, device=None):
        return Tensor(_unwrap(_ops.add, a.handle, b.handle, device))

    @staticmethod
    def relu(x, device=None):
        return Tensor(_unwrap(_ops.relu, x.handle, device))

    @staticmethod
    def softmax(x, axis=-1, device=None):
        return Tensor(_unwrap(_ops.softmax, x.handle, axis, device))


def send(outputs):
    """Sends a response now, before run_tensors returns: {name: Tensor}.
    Only a decoupled version (`decoupled: true`) called over gRPC
    ModelStreamInfer takes it; elsewhere it raises RuntimeError saying why.
    The tensors are handed over, even when it raises: do not use them after."""
    _unwrap(_responses.send, _scoring_types.Response(b"", "", [(name, t.handle) for name, t in outputs.items()]))
