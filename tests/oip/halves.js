// A JavaScript module on tests/oip/make_models.py's halves model: FP16 and
// BF16 tensors made from JSON numbers with tensor(x, "float16" / "bfloat16")
// and read back with toList() (the helper goes through the contract's
// half-floats import). Built by tests/tests/e2e/oip.rs.
import { loadModel, tensor } from "wasmscore";

let model;

export function init() {
  model = loadModel("model.onnx");
}

export function run(rawData) {
  const body = JSON.parse(rawData);
  const out = model.run({ H: tensor(body.H, "float16"), B: tensor(body.B, "bfloat16") });
  const outputs = {};
  for (const [name, t] of Object.entries(out)) outputs[name] = { dtype: t.dtype, data: t.toList() };
  return { inputs: model.inputs.map((i) => [i.name, i.dtype, i.shape]), outputs };
}
