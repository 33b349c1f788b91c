"""The secondary models behind the service: TF-Serving routes, /predict for digits, metadata, bad input."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from imgclf.core.precision import native_bf16_flags, onednn_enabled
from imgclf.models.data import quadratic
from imgclf.models.digit_image import to_mnist
from imgclf.models.serving import load_secondary
from imgclf.service import create_app
from tests.support.mnist_data import make_digits

MAX_INSTANCES = 64


@pytest.fixture(scope="module")
def repo(secondary_repo, model_repo, tmp_path_factory):
    """The three secondary models plus the "shapes" image classifier, in one repository."""
    combined = tmp_path_factory.mktemp("combined") / "models"
    shutil.copytree(secondary_repo, combined)
    shutil.copytree(model_repo / "shapes", combined / "shapes")
    return combined


@pytest.fixture(scope="module")
def client(repo):
    app = create_app({"model_repository": repo, "load_in_background": False, "max_instances": MAX_INSTANCES})
    assert app.extensions["imgclf.models"].ready, app.extensions["imgclf.models"].error
    return app.test_client()


@pytest.fixture(scope="module")
def digits():
    """Synthetic test digits the models never saw: uint8 [60, 28, 28] white on black, and their labels."""
    return make_digits(6, seed=99)


def _model(repo, name):
    return load_secondary(repo / name / "1")


def _png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _paper_picture(digit: np.ndarray) -> np.ndarray:
    """Return the digit as a phone photo of paper would show it: dark ink on light, 10× bigger, wide margins."""
    big = np.kron(255 - digit.astype(np.int32), np.ones((10, 10), np.int32)).astype(np.uint8)
    page = np.full((big.shape[0] + 120, big.shape[1] + 60), 255, np.uint8)
    page[70:70 + big.shape[0], 20:20 + big.shape[1]] = big
    return np.repeat(page[:, :, None], 3, axis=2)


def test_the_model_list_names_each_kind(client):
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["models"]}
    assert {n: m["kind"] for n, m in models.items()} == {
        "lenet5": "digit-classifier", "mnist-mlp": "digit-classifier", "quadratic": "regression",
        "shapes": "image-classifier"}
    assert models["lenet5"]["labels"] == [str(d) for d in range(10)]
    assert models["quadratic"]["labels"] == []


def test_predict_without_a_model_name_uses_the_image_classifier(client):
    from tests.support import images

    response = client.post("/predict", data=images.jpeg(3), content_type="image/jpeg")
    assert response.status_code == 200 and response.get_json()["model"] == "shapes"


# --- the quadratic -----------------------------------------------------------------------------------------------


def test_quadratic_answers_raw_y_for_raw_x(client, repo):
    xs = [-20.0, -7.5, 0.0, 2.5, 13.0, 20.0]
    response = client.post("/v1/models/quadratic:predict", json={"instances": [[x] for x in xs]})
    assert response.status_code == 200, response.get_json()
    predictions = response.get_json()["predictions"]
    assert [len(p) for p in predictions] == [1] * len(xs)  # one output: TF Serving answers its values unnamed
    y = np.array(predictions)[:, 0]
    reference = _model(repo, "quadratic").predict(np.array(xs, np.float32)[:, None])["y"][:, 0]
    np.testing.assert_allclose(y, reference, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(y, quadratic(np.array(xs)), atol=4.0)  # the curve itself, within a few RMSE


@pytest.mark.parametrize("body", [
    {"instances": [3.0, -4.0]},
    {"instances": [{"x": 3.0}, {"x": [-4.0]}]},
    {"inputs": [[3.0], [-4.0]]},
    {"inputs": {"x": [3.0, -4.0]}},
    {"signature_name": "serving_default", "instances": [[3], [-4]]},
])
def test_quadratic_accepts_every_tf_serving_form(client, body):
    response = client.post("/v1/models/quadratic/versions/1:predict", json=body)
    assert response.status_code == 200, response.get_json()
    values = response.get_json()["predictions" if "instances" in body else "outputs"]
    reference = client.post("/v1/models/quadratic:predict", json={"instances": [[3.0], [-4.0]]}).get_json()
    assert values == reference["predictions"]


@pytest.mark.parametrize("body, message", [
    ('{"instances": [[NaN]]}', "finite"),
    ('{"instances": [[Infinity], [1.0]]}', "finite"),
    ('{"instances": [[1e39]]}', "finite"),
    ('{"instances": [["3"]]}', "must be a number x or [x]"),
    ('{"instances": [[1.0, 2.0]]}', "must be a number x or [x]"),
    ('{"instances": [true]}', "must be a number x or [x]"),
    ('{"instances": [null]}', "must be a number x or [x]"),
    ('{"instances": []}', "non-empty list"),
    ('{"instances": [[1.0]], "inputs": [[1.0]]}', "exactly one"),
    ('{"signature_name": "bottleneck", "instances": [[1.0]]}', "unknown signature_name"),
    ('{"instances": [[1.0]], "signature_name": 7}', "must be a string"),
    ('{"instances": ' + str([[1.0]] * (MAX_INSTANCES + 1)) + "}", f"at most {MAX_INSTANCES}"),
    ('{"instances": ' + str([[1.0]] * 10_000) + "}", f"at most {MAX_INSTANCES}"),
    ("[1, 2]", "JSON object"),
])
def test_bad_quadratic_input_is_a_400_with_a_reason(client, body, message):
    response = client.post("/v1/models/quadratic:predict", data=body, content_type="application/json")
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_predict_refuses_the_regression_model_with_a_pointer(client):
    response = client.post("/predict?model=quadratic", data=b"\x89PNG", content_type="image/png")
    assert response.status_code == 400
    assert "/v1/models/quadratic:predict" in response.get_json()["error"]


# --- the digit models --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist-mlp", "lenet5"])
def test_digit_arrays_in_0_1_and_0_255_give_the_models_own_answer(client, repo, digits, name):
    x, _ = digits
    reference = _model(repo, name).predict(x[:8].astype(np.float32) / 255.0)
    for scale, values in (("0-255", x[:8].tolist()), ("0-1", (x[:8] / 255.0).tolist())):
        response = client.post(f"/v1/models/{name}:predict", json={"instances": values})
        assert response.status_code == 200, (scale, response.get_json())
        rows = response.get_json()["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], reference["probabilities"], atol=1e-6)
        assert [r["classes"] for r in rows] == reference["classes"].tolist()


def test_digit_models_recognise_unseen_digits_through_the_route(client, digits):
    x, y = digits
    for name in ("mnist-mlp", "lenet5"):
        response = client.post(f"/v1/models/{name}:predict", json={"inputs": {"images": x.tolist()}})
        outputs = response.get_json()["outputs"]
        accuracy = float(np.mean(np.array(outputs["classes"]) == y))
        assert accuracy >= 0.6, (name, accuracy)  # chance is 0.1; the test fixture trains briefly
        assert np.allclose(np.sum(outputs["probabilities"], axis=1), 1.0, atol=1e-5)


def test_a_picture_of_a_digit_on_paper_is_read_like_mnist(client, repo, digits):
    x, y = digits
    pictures = [_paper_picture(d) for d in x[:20]]
    response = client.post("/v1/models/lenet5:predict",
                           json={"instances": [{"b64": _png_b64(p)} for p in pictures]})
    assert response.status_code == 200, response.get_json()
    classes = [row["classes"] for row in response.get_json()["predictions"]]
    # The route's conversion is to_mnist's; the model's answer to that input is the reference.
    reference = _model(repo, "lenet5").predict(np.stack([to_mnist(p) for p in pictures]))["classes"]
    assert classes == reference.tolist()
    assert np.mean(np.array(classes) == y[:20]) >= 0.6  # and it still reads the digits


def test_predict_route_serves_digit_models_with_top_k_and_annotation(client, digits):
    x, _ = digits
    data = base64.b64decode(_png_b64(_paper_picture(x[0])))
    response = client.post("/predict?model=lenet5&top_k=3&annotate=true", data=data, content_type="image/png")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model"] == "lenet5" and len(body["predictions"]) == 3
    assert all(p["label"] in [str(d) for d in range(10)] for p in body["predictions"])
    tf_serving = client.post("/v1/models/lenet5:predict",
                             json={"instances": [{"b64": base64.b64encode(data).decode()}]})
    probabilities = tf_serving.get_json()["predictions"][0]["probabilities"]
    assert body["predictions"][0]["label"] == str(int(np.argmax(probabilities)))
    assert body["predictions"][0]["score"] == pytest.approx(max(probabilities), abs=1e-6)
    Image.open(io.BytesIO(base64.b64decode(body["annotated_image"]))).verify()


def test_digit_models_accept_a_trailing_channel_and_named_rows(client, digits):
    x, _ = digits
    plain = client.post("/v1/models/mnist-mlp:predict", json={"instances": [x[0].tolist()]}).get_json()
    channel = client.post("/v1/models/mnist-mlp:predict",
                          json={"instances": [{"images": x[0][:, :, None].tolist()}]}).get_json()
    assert plain == channel


def _grid(value=0.5, rows=28, cols=28):
    return [[value] * cols for _ in range(rows)]


@pytest.mark.parametrize("instance, message", [
    (_grid(rows=27), "28x28"),
    (_grid(cols=29), "28x28"),
    ([[[0.1, 0.2]] * 28] * 28, "only numbers"),
    ([["a"] * 28] * 28, "only numbers"),
    (_grid(value=300), "0-1 or 0-255"),
    (_grid(value=-1), "0-1 or 0-255"),
    ({"b64": "not base64!"}, "not valid base64"),
    ({"b64": base64.b64encode(b"plain text").decode()}, "not an image"),
    ({"b64": "x", "extra": 1}, "28x28 array or"),
    ("a string", "28x28"),
    (7, "28x28"),
])
def test_bad_digit_input_is_a_400_naming_the_instance(client, instance, message):
    response = client.post("/v1/models/lenet5:predict", json={"instances": [_grid(), instance]})
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert "instance 1" in error and message in error, error


def test_nan_in_a_digit_is_a_400(client):
    rows = ",".join(["[" + ",".join(["NaN"] * 28) + "]"] * 28)
    response = client.post("/v1/models/mnist-mlp:predict", data='{"instances": [[' + rows + "]]}",
                           content_type="application/json")
    assert response.status_code == 400 and "finite" in response.get_json()["error"]


def test_metadata_describes_the_signature_and_the_accepted_inputs(client):
    quad = client.get("/v1/models/quadratic/metadata").get_json()
    signature = quad["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "1"]
    assert "y" in signature["outputs"] and quad["input"]["key"] == "x"
    assert quad["model_card"]["kind"] == "regression"
    digits = client.get("/v1/models/lenet5/versions/1/metadata").get_json()
    signature = digits["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in signature["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "28", "28"]
    assert set(signature["outputs"]) == {"probabilities", "classes"}
    assert "0-255" in digits["input"]["range"] and digits["labels"] == [str(d) for d in range(10)]
    assert client.get("/v1/models/lenet5").get_json()["model_version_status"][0]["state"] == "AVAILABLE"


def test_openapi_lists_every_kind(client):
    spec = client.get("/openapi.json").get_json()
    kinds = spec["components"]["schemas"]["ModelList"]["properties"]["models"]["items"]["properties"]["kind"]
    assert set(kinds["enum"]) == {"image-classifier", "digit-classifier", "regression"}
    request = spec["components"]["schemas"]["TFServingPredictRequest"]
    assert "28x28" in request["description"] and "quadratic" in request["description"]


FULL_PRECISION_SCRIPT = """
import json, sys
import numpy as np
from imgclf.service import create_app
x = np.linspace(-20, 20, 301).tolist()
digits = np.load(sys.argv[2], allow_pickle=False)["x_test"][:20].tolist()
def ask(client):
    quad = client.post("/v1/models/quadratic:predict", json={"instances": [[v] for v in x]}).get_json()
    lenet = client.post("/v1/models/lenet5:predict", json={"instances": digits}).get_json()
    return {"y": quad["predictions"], "p": [row["probabilities"] for row in lenet["predictions"]]}
out = {}
for precision in ("fp32", "bf16"):  # fp32 first: the bf16 switch is process-wide and stays on
    app = create_app({"model_repository": sys.argv[1], "load_in_background": False, "precision": precision,
                      "max_instances": 400})
    out[precision] = ask(app.test_client())
    out[precision]["served"] = app.test_client().get("/readyz").get_json()["precision"]
print(json.dumps(out))
"""


@pytest.mark.skipif(not (native_bf16_flags() and onednn_enabled()),
                    reason="this CPU has no native bf16 (AMX_BF16/AVX512_BF16) or oneDNN is off")
def test_secondary_models_stay_float32_in_a_bf16_worker(secondary_repo):
    """bf16 is for the featurizer; the quadratic and the digits must answer exactly as in fp32."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "IMGCLF_DEVICE": "/cpu:0"}
    result = subprocess.run([sys.executable, "-c", FULL_PRECISION_SCRIPT, str(secondary_repo),
                             str(secondary_repo.parent / "mnist.npz")], cwd=Path(__file__).resolve().parents[3],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["fp32"]["served"], out["bf16"]["served"]) == ("fp32", "bf16")
    np.testing.assert_allclose(out["bf16"]["y"], out["fp32"]["y"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["bf16"]["p"], out["fp32"]["p"], rtol=0, atol=1e-6)
