// A JavaScript scoring module that misbehaves on request, for the fault and
// sandbox tests; the JavaScript counterpart of ../hostile (Rust). The body
// names what to do; each probe answers 200 with what it got, unless noted.
//
// Sandbox probes (nothing may be reachable):
//   "file"        reads /etc/passwd through the Node, Deno and Bun APIs, in case
//                 one is there ({"file": "denied", ...}); StarlingMonkey has no
//                 file API, and the two other ways trap (import:, fetch:).
//   "env"         environment variables by every API there could be
//                 ({"env_vars": 0, "home": false, ...}).
//   "globals"     which host-reaching globals exist (process, require, Deno,
//                 WebAssembly, ...): {"found": []}.
//   "socket:PORT" fetch("http://127.0.0.1:PORT/"). The component imports no
//                 wasi:http, and the build's console.js replaces fetch with
//                 one that throws "fetch is not available": 500, and nothing
//                 connects to PORT.
//   "fetch:URL"   fetch(URL), e.g. file:///etc/passwd: the same.
//   "import:PATH" a dynamic import() of PATH (e.g. /etc/passwd) at run time.
//                 No wasi:filesystem either: 500 module_trapped.
//   "clock"       the smallest step of Date.now() and performance.now() (ms).
//   "random"      two Math.random() values and 8 crypto.getRandomValues bytes.
// Limits:
//   "loop"        never returns (scoring timeout, 504).
//   "alloc"       keeps 1 MiB ArrayBuffers until something stops it.
//   "huge"        one 1 GiB ArrayBuffer.
//   "recurse"     unbounded recursion; SpiderMonkey throws "too much recursion",
//                 caught and answered ({"recurse": "InternalError: ...", "depth": N}).
//   "sleep:MS"    awaits a MS ms timer (an async run()).
// The kit's error mapping:
//   "throw"       throws an Error: 500 failed, "Error: asked to throw".
//   "throw-value" throws a string: 500 failed, "thrown string: \"asked\"".
//   "bad"         throws BadInput: 400.
//   "json"        JSON.parse of a broken document: 400 "malformed JSON: ...".
//   "host-bad"    a tensor whose data does not fit its shape, not caught:
//                 the host's bad-input as BadInput, 400.
//   "host-failed" loadModel("nope.onnx"), not caught: the host's failed as Error, 500.
//   "host-errors" both, caught: how they surface ({"bad": {...}, "failed": {...}}).
//   "not-json"    returns a cyclic object: 500 "run() returned something that is not JSON".
//   "bytes"       returns a Uint8Array: application/octet-stream; "bytes-host"
//                 the same from a uint8 tensor's flat().
//   "log"         console.log/info/debug/warn/error and log(), each with "hostile-js".
//   "keep"/"freed" "keep" stores one tensor made in run() and one kept
//                 (.keep()); "freed" reads both back in a later request.
// The kit's tensors:
//   "dtypes"      each dtype round-trips through tensor() / toList().
//   "ops"         matmul, gemm, add, relu, softmax and conv2d on small inputs.
//   "model-on:DEVICE" iris (the version's model.onnx) through loadModelOn(),
//                 its input given as a Map of nested arrays.
// Anything else is echoed: {"echo": BODY}.
import { BadInput, loadModel, loadModelOn, log, ops, tensor } from "wasmscore";

function describe(e) {
  return {
    name: e && e.name,
    message: e && e.message,
    isError: e instanceof Error,
    isBadInput: e instanceof BadInput,
  };
}

function attempt(f) {
  try {
    const v = f();
    return v === undefined ? "undefined" : v;
  } catch (e) {
    return `${e && e.name}: ${e && e.message}`;
  }
}

const HOST_GLOBALS = [
  "process", "require", "module", "Deno", "Bun", "std", "os", "WebAssembly",
  "WebSocket", "XMLHttpRequest", "Worker", "importScripts", "navigator",
];

function file() {
  const out = {};
  out.require = attempt(() => require("fs").readFileSync("/etc/passwd", "utf8").length);
  out.deno = attempt(() => Deno.readTextFileSync("/etc/passwd").length);
  out.bun = attempt(() => Bun.file("/etc/passwd").size);
  const read = [out.require, out.deno, out.bun].some((v) => typeof v === "number");
  out.file = read ? "read" : "denied";
  return out;
}

function env() {
  const sources = {
    process: () => globalThis.process.env,
    deno: () => globalThis.Deno.env.toObject(),
    bun: () => globalThis.Bun.env,
  };
  let vars = 0;
  const out = {};
  for (const [name, get] of Object.entries(sources)) {
    out[name] = attempt(() => {
      const n = Object.keys(get()).length;
      vars += n;
      return n;
    });
  }
  out.env_vars = vars;
  out.home = attempt(() => globalThis.process.env.HOME) !== "undefined" && typeof out.process === "number";
  out.location = attempt(() => String(globalThis.location));
  return out;
}

function clock() {
  const step = (f) => {
    const a = f();
    let b = f();
    let spins = 0;
    while (b === a && spins < 50_000_000) {
      b = f();
      spins++;
    }
    return b - a;
  };
  return { date_now_step_ms: step(() => Date.now()), performance_now_step_ms: step(() => performance.now()) };
}

function recurse() {
  let depth = 0;
  const down = () => {
    depth++;
    return down() + 1;
  };
  try {
    down();
  } catch (e) {
    return { recurse: `${e.name}: ${e.message}`, depth };
  }
  return { recurse: "returned", depth };
}

const close = (a, b) => a.length === b.length && a.every((x, i) => (Array.isArray(x) ? close(x, b[i]) : Math.abs(x - b[i]) < 1e-5));

function dtypes() {
  const cases = [
    ["float32", [[1.5, -2], [0.25, 8]]],
    ["float64", [1e-300, 2.5]],
    ["int8", [-128, 127]],
    ["int16", [-32768, 32767]],
    ["int32", [[-(2 ** 31)], [2 ** 31 - 1]]],
    ["int64", [-(2 ** 53) + 1, 2 ** 53 - 1]],
    ["uint8", [0, 255]],
    ["uint16", [0, 65535]],
    ["uint32", [0, 2 ** 32 - 1]],
    ["uint64", [0, 2 ** 53 - 1]],
    ["bool", [[true, false, true]]],
    ["string", ["a", "é", ""]],
  ];
  const out = {};
  for (const [dtype, data] of cases) {
    const t = tensor(data, dtype);
    const back = t.toList();
    out[dtype] = { dtype: t.dtype, shape: t.shape, same: JSON.stringify(back) === JSON.stringify(data), flat: Object.prototype.toString.call(t.flat()) };
  }
  out.scalar = tensor(3, "int32").toList();
  out.empty = tensor([], "float32").shape;
  out.reshaped = tensor([1, 2, 3, 4, 5, 6], "float32", [2, 3]).toList();
  out.typed = tensor(new Float32Array([1, 2, 3]), "float32", [3, 1]).shape;
  out.nested_typed = tensor([new Int32Array([1, 2]), new Int32Array([3, 4])], "int64", [4]).toList();
  out.out_of_range = attempt(() => tensor([256], "uint8"));
  out.unknown_dtype = attempt(() => tensor([1], "complex64"));
  out.ragged = attempt(() => tensor([[1, 2], [3]]));
  out.host_count = attempt(() => tensor([1, 2, 3], "float32", [2, 2]));
  return out;
}

function opsCheck() {
  const a = tensor([[1, 2], [3, 4]]);
  const b = tensor([[5, 6], [7, 8]]);
  const checks = {
    matmul: [ops.matmul(a, b).toList(), [[19, 22], [43, 50]]],
    gemm: [ops.gemm(a, b, { c: [1, 1], alpha: 2, beta: 1, transB: true }).toList(), [[35, 47], [79, 107]]],
    gemm_no_c: [ops.gemm(a, b).toList(), [[19, 22], [43, 50]]],
    add: [ops.add(a, [10, 20]).toList(), [[11, 22], [13, 24]]],
    relu: [ops.relu([[-1, 2]]).toList(), [[0, 2]]],
    softmax: [ops.softmax([[0, Math.log(3)]]).toList(), [[0.25, 0.75]]],
    conv2d: [
      ops.conv2d([[[[1, 2], [3, 4]]]], [[[[1]]]], { bias: [1], strides: [1, 1], pads: [0, 0] }).toList(),
      [[[[2, 3], [4, 5]]]],
    ],
    conv2d_no_bias: [ops.conv2d(tensor([1, 2, 3, 4, 5, 6, 7, 8, 9], "float32", [1, 1, 3, 3]), [[[[1, 1], [1, 1]]]], { pads: [1, 1], strides: [2, 2] }).toList(), [[[[1, 5], [11, 28]]]]],
  };
  const out = {};
  for (const [name, [got, want]] of Object.entries(checks)) out[name] = { ok: close(got, want), got };
  out.bad_shapes = attempt(() => ops.matmul([[1, 2, 3]], [[1, 2, 3]]));
  return out;
}

function modelOn(device) {
  const model = loadModelOn("model.onnx", device);
  const out = model.run(new Map([["X", [[5.1, 3.5, 1.4, 0.2]]]]), ["probabilities"]);
  return { device: out.probabilities.device, inputs: model.inputs, probabilities: out.probabilities.toList() };
}

let stash = null;

export function init() {
  log("hostile-js init");
}

export async function run(raw) {
  const arg = (prefix) => raw.slice(prefix.length);
  switch (raw) {
    case "file":
      return file();
    case "env":
      return env();
    case "globals":
      return { found: HOST_GLOBALS.filter((g) => g in globalThis), all: Object.getOwnPropertyNames(globalThis).sort() };
    case "clock":
      return clock();
    case "random": {
      const bytes = new Uint8Array(8);
      crypto.getRandomValues(bytes);
      return { math_random: [Math.random(), Math.random()], bytes: Array.from(bytes) };
    }
    case "loop":
      for (;;);
    case "alloc": {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
    }
    case "huge": {
      const v = new Uint8Array(2 ** 30).fill(7);
      return { huge: v.length };
    }
    case "recurse":
      return recurse();
    case "throw":
      throw new Error("asked to throw");
    case "throw-value":
      throw "asked";
    case "bad":
      throw new BadInput("asked for bad input");
    case "json":
      return JSON.parse('{"data": [1, 2');
    case "host-bad":
      return tensor([1, 2, 3], "float32", [2, 2]).toList();
    case "host-failed":
      return loadModel("nope.onnx").inputs;
    case "host-errors": {
      const out = {};
      try {
        tensor([1, 2, 3], "float32", [2, 2]);
      } catch (e) {
        out.bad = describe(e);
      }
      try {
        loadModel("nope.onnx");
      } catch (e) {
        out.failed = describe(e);
      }
      return out;
    }
    case "not-json": {
      const o = {};
      o.self = o;
      return o;
    }
    case "bytes":
      return new TextEncoder().encode("raw bytes");
    case "bytes-host":
      return tensor(new TextEncoder().encode("host bytes"), "uint8").flat();
    case "log":
      console.log("hostile-js console.log", { n: 1 });
      console.info("hostile-js console.info");
      console.debug("hostile-js console.debug");
      console.warn("hostile-js console.warn");
      console.error("hostile-js console.error", new Error("an error"));
      log("hostile-js log() warn", "warn");
      return { logged: 6 };
    case "keep":
      stash = { dropped: tensor([1, 2]), kept: tensor([3, 4]).keep() };
      return { stashed: true };
    case "freed":
      return {
        dropped: attempt(() => stash.dropped.toList()),
        kept: attempt(() => stash.kept.toList()),
      };
    case "dtypes":
      return dtypes();
    case "ops":
      return opsCheck();
  }
  if (raw.startsWith("socket:")) {
    const r = await fetch(`http://127.0.0.1:${arg("socket:")}/`);
    return { socket: "connected", status: r.status };
  }
  if (raw.startsWith("fetch:")) {
    const r = await fetch(arg("fetch:"));
    return { fetch: "answered", status: r.status, bytes: (await r.arrayBuffer()).byteLength };
  }
  if (raw.startsWith("import:")) {
    const m = await import(arg("import:"));
    return { import: "loaded", keys: Object.keys(m) };
  }
  if (raw.startsWith("sleep:")) {
    const ms = Number(arg("sleep:")) || 0;
    const t0 = Date.now();
    await new Promise((resolve) => setTimeout(resolve, ms));
    return { slept_ms: ms, took_ms: Date.now() - t0 };
  }
  if (raw.startsWith("model-on:")) return modelOn(arg("model-on:"));
  return { echo: raw };
}
