# Iris scoring module, Azure ML style: init() once per replica, run() per request.
# Build: wasmscore build examples/iris-python/score.py -o iris-python.wasm
import json

import wasmscore

model = None


def init():
    global model
    # model.onnx ships with the version (`wasmscore deploy --model examples/iris/model.onnx`).
    model = wasmscore.load_model("model.onnx")


def run(raw_data):
    data = json.loads(raw_data)["data"]  # malformed JSON -> 400 (bad input)
    out = model.run({"X": wasmscore.tensor(data, dtype="float32")}, outputs=["probabilities"])
    probabilities = out["probabilities"].tolist()
    # With collect_model_data on, the host keeps each sampled request and
    # response; this adds the predicted classes (a no-op otherwise).
    wasmscore.collect([max(range(len(p)), key=p.__getitem__) for p in probabilities], "predictions", "class")
    return {"probabilities": probabilities}


def run_tensors(inputs):
    # Open Inference Protocol (POST /v2/models/iris/infer, REST or gRPC): the
    # host decoded the tensors; they go straight to the model, and its
    # outputs go back as tensors the host encodes for the client.
    return model.run(inputs)
