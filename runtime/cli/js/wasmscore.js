// The wasmscore host API for score.js authors.
//
//     import { loadModel, tensor } from "wasmscore";
//
//     let model;
//
//     export function init() {
//       model = loadModel("model.onnx");
//     }
//
//     export function run(rawData) {
//       const x = JSON.parse(rawData).data;
//       const out = model.run({ X: tensor(x, "float32") });
//       return { probabilities: out.probabilities.toList() };
//     }
//
// Tensors live on the host; `tensor()` copies nested arrays (or a typed array)
// there, `.toList()` and `.flat()` copy one back. Throw `BadInput` for a client
// error (HTTP 400); any other exception is a module failure (HTTP 500).
//
// Host tensors count against the version's memory limit, and JavaScript's
// garbage collector does not know their size, so the tensors a `run()` makes
// are freed when that `run()` returns. Make the ones a module keeps across
// requests in `init()`, or call `.keep()` on them.
//
// The module's top level runs when `wasmscore build` snapshots it, where the
// host is not there: load models and make tensors in `init()`. Log lines from
// the top level are kept and written when a replica starts.
import { Tensor as HostTensor } from "wasmscore:scoring/tensors@0.1.0";
import { Model as HostModel } from "wasmscore:scoring/inference@0.1.0";
import {
  matmul as hostMatmul,
  gemm as hostGemm,
  add as hostAdd,
  relu as hostRelu,
  softmax as hostSoftmax,
  conv2d as hostConv2d,
} from "wasmscore:scoring/ops@0.1.0";
import { log as hostLog } from "wasmscore:scoring/log@0.1.0";
import { record as hostRecord } from "wasmscore:scoring/metrics@0.1.0";
import { collect as hostCollect } from "wasmscore:scoring/data-collection@0.1.0";
import {
  typeOf as halfTypeOf,
  modelTypes as halfModelTypes,
  fromF32 as halfFromF32,
  toF32 as halfToF32,
} from "wasmscore:scoring/half-floats@0.1.0";
import { fromBytes as bytesFrom, toBytes as bytesOf } from "wasmscore:scoring/byte-strings@0.1.0";

/** Throw from run() when the request is wrong: the client gets 400. */
export class BadInput extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = "BadInput";
  }
}

// dtype name -> how its elements travel: the WIT tensor-data tag, the typed
// array the bindings copy from (they copy its bytes, so it must be exactly
// this class), and the range of integer types.
const DTYPES = {
  float32: { tag: "float32", array: Float32Array, kind: "float" },
  float64: { tag: "float64", array: Float64Array, kind: "float" },
  int8: { tag: "int8", array: Int8Array, kind: "int", min: -(2 ** 7), max: 2 ** 7 - 1 },
  int16: { tag: "int16", array: Int16Array, kind: "int", min: -(2 ** 15), max: 2 ** 15 - 1 },
  int32: { tag: "int32", array: Int32Array, kind: "int", min: -(2 ** 31), max: 2 ** 31 - 1 },
  int64: { tag: "int64", array: BigInt64Array, kind: "bigint", min: -(2n ** 63n), max: 2n ** 63n - 1n },
  uint8: { tag: "uint8", array: Uint8Array, kind: "int", min: 0, max: 2 ** 8 - 1 },
  uint16: { tag: "uint16", array: Uint16Array, kind: "int", min: 0, max: 2 ** 16 - 1 },
  uint32: { tag: "uint32", array: Uint32Array, kind: "int", min: 0, max: 2 ** 32 - 1 },
  uint64: { tag: "uint64", array: BigUint64Array, kind: "bigint", min: 0n, max: 2n ** 64n - 1n },
  bool: { tag: "boolean", array: null, kind: "bool" },
  string: { tag: "string", array: null, kind: "string" },
  // 16-bit floats travel as float32 through the half-floats import (the
  // contract's dtype calls them uint16).
  float16: { half: "float16", array: Float32Array, kind: "float" },
  bfloat16: { half: "bfloat16", array: Float32Array, kind: "float" },
};

// The host's dtype enum -> our names (the same, but "boolean" is "bool").
function dtypeName(hostDtype) {
  return hostDtype === "boolean" ? "bool" : hostDtype;
}

// The bindings throw a ComponentError whose `payload` is the WIT error
// variant ({tag: "bad-input" | "failed", val: message}); it is not an
// `instanceof Error` here. This makes it BadInput or Error.
function fromHost(e) {
  const p = e !== null && typeof e === "object" && Object.hasOwn(e, "payload") ? e.payload : undefined;
  if (p && p.tag === "bad-input") return new BadInput(String(p.val));
  if (p && p.tag === "failed") return new Error(String(p.val));
  return e;
}

// Whether the host is there: false while `wasmscore build` evaluates the
// module's top level (calling an import then fails the build), true once
// init() or run() is called.
let live = false;
// Log lines from the top level, written when the host is there.
const early = [];
const EARLY_MAX = 100;

function needHost(name) {
  if (!live) {
    throw new Error(`${name} needs the host, which is not there at the module's top level; call it in init()`);
  }
}

function host(name, call) {
  needHost(name);
  try {
    return call();
  } catch (e) {
    throw fromHost(e);
  }
}

// The tensors made during the current run(); null outside run().
let scope = null;

// Called by the generated entry (_wasmscore_app.js), not by modules.
export function _start() {
  if (live) return;
  live = true;
  for (const [level, message] of early.splice(0)) hostLog(level, message);
}

export function _beginRun() {
  _start();
  scope = [];
}

export function _endRun() {
  const made = scope;
  scope = null;
  if (made) for (const t of made) t.dispose();
}

function isArrayLike(x) {
  return Array.isArray(x) || (ArrayBuffer.isView(x) && !(x instanceof DataView));
}

const RAGGED = "ragged nested array: rows have different lengths";

// Nested arrays -> [shape, flat elements]. IS_DIM says what is a level
// of nesting (a string tensor's Uint8Array is an element: its bytes).
function flatten(data, isDim = isArrayLike) {
  if (isDim === isArrayLike && ArrayBuffer.isView(data) && !(data instanceof DataView)) return [[data.length], data];
  const shape = [];
  let level = data;
  while (isDim(level)) {
    shape.push(level.length);
    if (level.length === 0) break;
    level = level[0];
  }
  const flat = [];
  const walk = (x, depth) => {
    if (depth === shape.length) {
      if (isDim(x)) throw new BadInput(RAGGED);
      flat.push(x);
      return;
    }
    if (!isDim(x) || x.length !== shape[depth]) throw new BadInput(RAGGED);
    for (let i = 0; i < x.length; i++) walk(x[i], depth + 1);
  };
  walk(data, 0);
  return [shape, flat];
}

function what(v) {
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

// Flat elements -> what the WIT tensor-data variant carries for DT.
function elements(flat, dtype) {
  const d = DTYPES[dtype];
  // Already the right typed array (by its tag: the bindings' arrays come from
  // another realm, where `instanceof` fails).
  if (d.array && Object.prototype.toString.call(flat) === `[object ${d.array.name}]`) return flat;
  const n = flat.length;
  const bad = (i, why) => new BadInput(`cannot make a ${dtype} tensor: element ${i} ${why}`);
  switch (d.kind) {
    case "float": {
      const out = new d.array(n);
      for (let i = 0; i < n; i++) {
        const v = flat[i];
        if (typeof v === "number") out[i] = v;
        else if (typeof v === "bigint" || typeof v === "boolean") out[i] = Number(v);
        else throw bad(i, `is ${what(v)}`);
      }
      return out;
    }
    case "int": {
      const out = new d.array(n);
      for (let i = 0; i < n; i++) {
        let v = flat[i];
        if (typeof v === "number") {
          if (!Number.isFinite(v)) throw bad(i, `is ${v}`);
          v = Math.trunc(v);
        } else if (typeof v === "bigint" || typeof v === "boolean") {
          v = Number(v);
        } else {
          throw bad(i, `is ${what(v)}`);
        }
        if (v < d.min || v > d.max) throw bad(i, `(${flat[i]}) is out of range`);
        out[i] = v;
      }
      return out;
    }
    case "bigint": {
      const out = new d.array(n);
      for (let i = 0; i < n; i++) {
        let v = flat[i];
        if (typeof v === "number") {
          if (!Number.isFinite(v)) throw bad(i, `is ${v}`);
          v = BigInt(Math.trunc(v));
        } else if (typeof v === "boolean") {
          v = v ? 1n : 0n;
        } else if (typeof v !== "bigint") {
          throw bad(i, `is ${what(v)}`);
        }
        if (v < d.min || v > d.max) throw bad(i, `(${flat[i]}) is out of range`);
        out[i] = v;
      }
      return out;
    }
    case "bool": {
      const out = new Array(n);
      for (let i = 0; i < n; i++) {
        const v = flat[i];
        if (typeof v === "boolean") out[i] = v;
        else if (typeof v === "number") out[i] = v !== 0;
        else if (typeof v === "bigint") out[i] = v !== 0n;
        else throw bad(i, `is ${what(v)}`);
      }
      return out;
    }
    default: {
      const out = new Array(n);
      for (let i = 0; i < n; i++) {
        const v = flat[i];
        if (typeof v === "string") out[i] = v;
        else if (typeof v === "number" || typeof v === "bigint" || typeof v === "boolean") out[i] = String(v);
        else throw bad(i, `is ${what(v)}`);
      }
      return out;
    }
  }
}

function shapeOf(shape) {
  if (!isArrayLike(shape)) throw new TypeError(`a shape is an array of dimensions, not ${what(shape)}`);
  const dims = Array.from(shape, (d) => (typeof d === "bigint" ? d : Number(d)));
  for (const d of dims) {
    if (typeof d === "bigint" ? d < 0n : !Number.isSafeInteger(d) || d < 0) {
      throw new TypeError(`a shape is a list of non-negative integers, not [${dims.join(", ")}]`);
    }
  }
  return BigUint64Array.from(dims, (d) => BigInt(d));
}

const disposeSymbol = Symbol.dispose || Symbol.for("dispose");

/** A host tensor. */
export class Tensor {
  #handle;
  #shape;
  #dtype;

  /** Wraps a handle from the WIT bindings; modules make tensors with tensor(). */
  constructor(handle) {
    this.#handle = handle;
    if (scope) scope.push(this);
  }

  /** The WIT `tensor` resource, for calling the bindings directly. */
  get handle() {
    if (this.#handle === undefined) {
      throw new Error(
        "this tensor was freed: tensors made in run() are freed when it returns; " +
          "make the ones you keep in init(), or call keep() on them",
      );
    }
    return this.#handle;
  }

  /** The shape, as an array of Numbers. */
  get shape() {
    if (this.#shape === undefined) this.#shape = Array.from(this.handle.shape(), Number);
    return this.#shape.slice();
  }

  /** "float32", "int64", "bool", "string", ... */
  get dtype() {
    if (this.#dtype === undefined) {
      const name = dtypeName(this.handle.dtype());
      // Only a tensor that says uint16 can be a 16-bit float.
      this.#dtype = name === "uint16" ? (halfTypeOf(this.handle) ?? name) : name;
    }
    return this.#dtype;
  }

  /** The device that holds the data ("cpu", ...). */
  get device() {
    return this.handle.device();
  }

  /** The elements in row-major order: a typed array (BigInt64Array for int64,
   * Float32Array for float16 and bfloat16), or an array for bool and string
   * (a string element that is not UTF-8, an image say, is a Uint8Array). */
  flat() {
    if (DTYPES[this.dtype].half) return host("flat()", () => halfToF32(this.handle));
    if (this.dtype === "string") return host("flat()", () => bytesOf(this.handle)).map(textOrBytes);
    return this.handle.data().val;
  }

  /** The elements as nested arrays of the tensor's shape; 64-bit integers
   * become Numbers. */
  toList() {
    const raw = this.flat();
    // Number() makes 64-bit integers Numbers (and leaves the rest alone). The
    // arrays come from the bindings' realm, so `instanceof` is not a test.
    const flat = ArrayBuffer.isView(raw) ? Array.from(raw, Number) : Array.from(raw);
    const shape = this.shape;
    if (shape.length === 0) return flat[0];
    const build = (offset, depth) => {
      const n = shape[depth];
      if (depth === shape.length - 1) return flat.slice(offset, offset + n);
      let stride = 1;
      for (let k = depth + 1; k < shape.length; k++) stride *= shape[k];
      const rows = new Array(n);
      for (let i = 0; i < n; i++) rows[i] = build(offset + i * stride, depth + 1);
      return rows;
    };
    return build(0, 0);
  }

  /** JSON.stringify writes a tensor as its nested list. */
  toJSON() {
    return this.toList();
  }

  /** Keeps this tensor after the run() that made it returns. */
  keep() {
    if (scope) {
      const i = scope.indexOf(this);
      if (i >= 0) scope.splice(i, 1);
    }
    return this;
  }

  /** Frees the host's copy now; the tensor cannot be used afterwards. */
  dispose() {
    const h = this.#handle;
    this.#handle = undefined;
    if (h !== undefined) h[disposeSymbol]();
  }

  [disposeSymbol]() {
    this.dispose();
  }
}

function checkDevice(device) {
  if (device !== undefined && device !== null && typeof device !== "string") {
    throw new TypeError(`a device is a name such as "cpu", not ${what(device)}`);
  }
  return device ?? undefined;
}

/**
 * Makes a host tensor from nested arrays, a typed array or a single value;
 * the shape is inferred from the nesting unless given (then the data may be
 * flat, or nested in any way with that many elements).
 */
export function tensor(data, dtype = "float32", shape = undefined) {
  if (!Object.hasOwn(DTYPES, dtype)) {
    throw new BadInput(`unknown dtype ${JSON.stringify(dtype)}; use one of ${Object.keys(DTYPES).sort().join(", ")}`);
  }
  let flat;
  const strings = dtype === "string";
  const isDim = strings ? Array.isArray : isArrayLike;
  if (shape === undefined || shape === null) {
    [shape, flat] = flatten(data, isDim);
  } else if (!strings && ArrayBuffer.isView(data) && !(data instanceof DataView)) {
    flat = data;
  } else {
    flat = [];
    const walk = (x) => {
      if (!isDim(x)) flat.push(x);
      else for (let i = 0; i < x.length; i++) walk(x[i]);
    };
    walk(data);
  }
  // Byte elements (an image, say) make a string tensor of bytes, as
  // bytesTensor does.
  if (strings && Array.from(flat).some((e) => ArrayBuffer.isView(e))) return bytesTensor(flat, shape);
  const dims = shapeOf(shape);
  const val = elements(flat, dtype);
  const half = DTYPES[dtype].half;
  if (half) return new Tensor(host("tensor()", () => halfFromF32(half, dims, val)));
  return new Tensor(host("tensor()", () => HostTensor.create(dims, { tag: DTYPES[dtype].tag, val })));
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

function textOrBytes(b) {
  try {
    return UTF8.decode(b);
  } catch {
    return b;
  }
}

/**
 * Makes a string tensor from its elements' bytes (Uint8Array, or strings,
 * which go as UTF-8): for data that is not text, such as an image in an
 * Open Inference Protocol BYTES tensor. The shape defaults to one dimension.
 */
export function bytesTensor(elements, shape = [elements.length]) {
  const encoder = new TextEncoder();
  const raw = Array.from(elements, (e, i) => {
    if (typeof e === "string") return encoder.encode(e);
    if (ArrayBuffer.isView(e)) return new Uint8Array(e.buffer, e.byteOffset, e.byteLength);
    throw new BadInput(`bytesTensor: element ${i} is ${what(e)}, not a Uint8Array or a string`);
  });
  return new Tensor(host("bytesTensor()", () => bytesFrom(shapeOf(shape), raw)));
}

// A Tensor stays; anything else becomes a float32 tensor that the caller frees.
function asTensor(x, temps, dtype = "float32") {
  if (x instanceof Tensor) return x;
  const t = tensor(x, dtype).keep();
  temps.push(t);
  return t;
}

function freeing(temps, call) {
  try {
    return call();
  } finally {
    for (const t of temps) t.dispose();
  }
}

function infos(list, halves) {
  const half = new Map(halves);
  return Array.from(list, (i) => ({
    name: i.name,
    dtype: half.get(i.name) ?? dtypeName(i.dtype),
    shape: Array.from(i.shape, Number),
  }));
}

/** A model that ships with the version, run by the host. */
export class Model {
  #inputs;
  #outputs;

  constructor(handle) {
    this.handle = handle;
  }

  /** [{name, dtype, shape}]; -1 in a shape is a dynamic dimension. */
  get inputs() {
    if (this.#inputs === undefined) {
      this.#inputs = infos(
        host("Model.inputs", () => this.handle.inputs()),
        halfModelTypes(this.handle),
      );
    }
    return this.#inputs.map((i) => ({ ...i, shape: i.shape.slice() }));
  }

  get outputs() {
    if (this.#outputs === undefined) {
      this.#outputs = infos(
        host("Model.outputs", () => this.handle.outputs()),
        halfModelTypes(this.handle),
      );
    }
    return this.#outputs.map((o) => ({ ...o, shape: o.shape.slice() }));
  }

  /**
   * Runs the model. inputs: {name: Tensor or nested arrays} (or a Map);
   * arrays become tensors of the input's dtype. outputs: the names wanted,
   * empty for all. Returns {name: Tensor}.
   */
  run(inputs, outputs = []) {
    const entries = inputs instanceof Map ? [...inputs.entries()] : Object.entries(inputs);
    const temps = [];
    return freeing(temps, () => {
      const pairs = entries.map(([name, value]) => {
        let dtype = "float32";
        if (!(value instanceof Tensor)) {
          const info = this.inputs.find((i) => i.name === name);
          if (info) dtype = info.dtype;
        }
        return [String(name), asTensor(value, temps, dtype).handle];
      });
      const names = Array.from(outputs, String);
      const out = host("Model.run", () => this.handle.run(pairs, names));
      return Object.fromEntries(out.map(([name, h]) => [name, new Tensor(h)]));
    });
  }
}

/** Loads a model file shipped with the version, e.g. "model.onnx". Call it in init(). */
export function loadModel(name) {
  return new Model(host("loadModel()", () => HostModel.load(String(name))));
}

/** The same on a named device ("cpu", "cuda", a plugin's name) instead of the version's. */
export function loadModelOn(name, device) {
  return new Model(host("loadModelOn()", () => HostModel.loadOn(String(name), String(device))));
}

/**
 * Reports a number (a click, a score) for the verdict to compare between
 * versions (`wasmscore endpoint compare`). Call it from init() or run().
 */
export function record(name, value) {
  if (!live) {
    throw new Error("record() works in init() and run(), not at the module's top level");
  }
  hostRecord(String(name), Number(value));
}

const DESIGNATIONS = ["inputs", "predictions", "labels", "signals", "general"];

/**
 * Collects `data` for analysis (Azure ML's ModelDataCollector): kept with
 * the request's correlation id under DATA_DIR/collected when the version
 * has collect_model_data and the request is sampled; otherwise nothing
 * happens. A string goes as it is, anything else as JSON.
 */
export function collect(data, designation = "general", name = "") {
  if (!DESIGNATIONS.includes(designation)) {
    throw new TypeError(`unknown designation ${JSON.stringify(designation)}; use one of ${DESIGNATIONS.join(", ")}`);
  }
  if (!live) {
    throw new Error("collect() works in init() and run(), not at the module's top level");
  }
  hostCollect(designation, String(name), typeof data === "string" ? data : JSON.stringify(data));
}

const LEVELS = ["debug", "info", "warn", "error"];

/** Writes a line to the version's logs: level "debug", "info", "warn" or "error". */
export function log(message, level = "info") {
  if (!LEVELS.includes(level)) {
    throw new TypeError(`unknown log level ${JSON.stringify(level)}; use one of ${LEVELS.join(", ")}`);
  }
  const text = String(message);
  if (live) {
    hostLog(level, text);
  } else if (early.length < EARLY_MAX) {
    early.push([level, text]);
  }
}

/**
 * Single tensor ops on a device (undefined = the version's device). Arguments
 * are Tensors, or nested arrays that become float32 tensors.
 */
export const ops = Object.freeze({
  /** [m, k] x [k, n] -> [m, n]. */
  matmul(a, b, device = undefined) {
    const temps = [];
    return freeing(temps, () => {
      const [ta, tb] = [asTensor(a, temps), asTensor(b, temps)];
      return new Tensor(host("ops.matmul", () => hostMatmul(ta.handle, tb.handle, checkDevice(device))));
    });
  },

  /** alpha * op(a) * op(b) + beta * c, as ONNX Gemm; c broadcasts to [m, n]. */
  gemm(a, b, { c = undefined, alpha = 1.0, beta = 1.0, transA = false, transB = false, device = undefined } = {}) {
    const temps = [];
    return freeing(temps, () => {
      const [ta, tb] = [asTensor(a, temps), asTensor(b, temps)];
      const tc = c === undefined || c === null ? undefined : asTensor(c, temps);
      return new Tensor(
        host("ops.gemm", () =>
          hostGemm(ta.handle, tb.handle, tc && tc.handle, Number(alpha), Number(beta), !!transA, !!transB, checkDevice(device)),
        ),
      );
    });
  },

  /** Element-wise sum; b may have the shape of a suffix of a's shape (a bias). */
  add(a, b, device = undefined) {
    const temps = [];
    return freeing(temps, () => {
      const [ta, tb] = [asTensor(a, temps), asTensor(b, temps)];
      return new Tensor(host("ops.add", () => hostAdd(ta.handle, tb.handle, checkDevice(device))));
    });
  },

  relu(x, device = undefined) {
    const temps = [];
    return freeing(temps, () => {
      const tx = asTensor(x, temps);
      return new Tensor(host("ops.relu", () => hostRelu(tx.handle, checkDevice(device))));
    });
  },

  /** Softmax along axis (negative counts from the end). */
  softmax(x, axis = -1, device = undefined) {
    const temps = [];
    return freeing(temps, () => {
      const tx = asTensor(x, temps);
      return new Tensor(host("ops.softmax", () => hostSoftmax(tx.handle, Number(axis), checkDevice(device))));
    });
  },

  /**
   * 2-D convolution, NCHW: x [n, c, h, w], w [o, c, kh, kw], bias [o];
   * strides and pads are [along h, along w].
   */
  conv2d(x, w, { bias = undefined, strides = [1, 1], pads = [0, 0], device = undefined } = {}) {
    const temps = [];
    return freeing(temps, () => {
      const [tx, tw] = [asTensor(x, temps), asTensor(w, temps)];
      const tb = bias === undefined || bias === null ? undefined : asTensor(bias, temps);
      const pair = (p, name) => {
        const [h, v] = Array.from(p, Number);
        if (!(Number.isInteger(h) && Number.isInteger(v) && h >= 0 && v >= 0)) {
          throw new TypeError(`conv2d ${name} are two non-negative integers [h, w]`);
        }
        return [h, v];
      };
      const s = pair(strides, "strides");
      const p = pair(pads, "pads");
      return new Tensor(host("ops.conv2d", () => hostConv2d(tx.handle, tw.handle, tb && tb.handle, s, p, checkDevice(device))));
    });
  },
});
