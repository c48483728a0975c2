// A JavaScript module that exercises the helper's 16-bit floats and byte
// strings, on tests/oip/make_models.py's halves model. Built by
// tests/tests/e2e/oip.rs. FP16 and BF16 tensors made from JSON numbers with
// tensor(x, "float16" / "bfloat16") and read back with toList() (through
// the contract's half-floats import); a string tensor made from bytes that
// are not UTF-8 with bytesTensor() and with tensor(x, "string") and read
// back (byte-strings import).
import { bytesTensor, loadModel, tensor } from "wasmscore";

let model;

export function init() {
  model = loadModel("model.onnx");
}

export function run(rawData) {
  const body = JSON.parse(rawData);
  const out = model.run({ H: tensor(body.H, "float16"), B: tensor(body.B, "bfloat16") });
  const outputs = {};
  for (const [name, t] of Object.entries(out)) outputs[name] = { dtype: t.dtype, data: t.toList() };
  const raw = bytesTensor([new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x00, 0xff]), "t\u00e9xt"]);
  const data = raw.toList().map((e) => (typeof e === "string" ? e : Array.from(e)));
  // The same through tensor(x, "string"): a Uint8Array is one element.
  const viaTensor = tensor([new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x00, 0xff]), "t\u00e9xt"], "string");
  const again = viaTensor.toList().map((e) => (typeof e === "string" ? e : Array.from(e)));
  return {
    inputs: model.inputs.map((i) => [i.name, i.dtype, i.shape]),
    outputs,
    bytes: { dtype: raw.dtype, data },
    strings: { shape: viaTensor.shape, data: again },
  };
}
