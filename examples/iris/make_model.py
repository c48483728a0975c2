"""Makes model.onnx: a scikit-learn logistic regression on the iris data set,
converted with skl2onnx. Input "X" float32 [N, 4]; outputs "label" int64 [N]
and "probabilities" float32 [N, 3] (zipmap off, so every output is a tensor).

Run from the repository root: .venv/bin/python examples/iris/make_model.py
The iris data ships inside scikit-learn, so nothing is downloaded.
"""
import pathlib

from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
import numpy as np

X, y = load_iris(return_X_y=True)
clf = LogisticRegression(max_iter=1000, random_state=0).fit(X, y)
onx = to_onnx(
    clf,
    X[:1].astype(np.float32),
    options={id(clf): {"zipmap": False}},
    target_opset={"": 17, "ai.onnx.ml": 3},
)
out = pathlib.Path(__file__).with_name("model.onnx")
out.write_bytes(onx.SerializeToString())
print(f"wrote {out} ({out.stat().st_size} bytes); training accuracy {clf.score(X, y):.3f}")
