// Iris scoring module, Azure ML style: init() once per replica, run() per request.
// Build: wasmscore build examples/iris-js/score.js -o iris-js.wasm
import { loadModel, tensor } from "wasmscore";

/** @type {import("wasmscore").Model} */
let model;

export function init() {
  // model.onnx ships with the version (`wasmscore deploy --model examples/iris/model.onnx`).
  model = loadModel("model.onnx");
}

/** @param {string} rawData */
export function run(rawData) {
  const data = JSON.parse(rawData).data; // malformed JSON -> 400 (bad input)
  const out = model.run({ X: tensor(data, "float32") }, ["probabilities"]);
  return { probabilities: out.probabilities.toList() };
}
