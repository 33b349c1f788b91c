"""The TensorFlow-Serving-compatible REST routes, with request bodies as TF Serving's docs write them.

Predictions are checked against the exported model called directly (Python
decode + ``predict_rgb``, and ``predict_bottlenecks``), not against the service.
"""

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imgclf.service import create_app
from imgclf.training.classifier import load_model
from tests.support.images import jpeg

MAX_INSTANCES = 4
MAX_PIXELS = 300_000


@pytest.fixture(scope="module")
def app(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False, "max_instances": MAX_INSTANCES,
                      "max_pixels": MAX_PIXELS})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def reference(model_repo):
    """The exported model, loaded on its own: the reference the service must agree with."""
    return load_model(model_repo / "shapes" / "1")


@pytest.fixture(scope="module")
def images(model_repo) -> list[bytes]:
    paths = sorted((model_repo.parent / "images").glob("*/*.jpg"))
    return [paths[i].read_bytes() for i in (0, 9, 18, 27)]  # one of each class


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def expected(reference, images: list[bytes]) -> np.ndarray:
    return reference.predict_rgb([reference.decode(b) for b in images])


def check_rows(predictions: list[dict], probabilities: np.ndarray, labels: list[str]) -> None:
    assert len(predictions) == len(probabilities)
    for row, p in zip(predictions, probabilities):
        assert set(row) == {"probabilities", "classes", "labels", "unfamiliar", "unfamiliar_score"}
        np.testing.assert_allclose(row["probabilities"], p, rtol=1e-5, atol=1e-6)
        assert row["classes"] == int(np.argmax(p)) and row["labels"] == labels[int(np.argmax(p))]


def test_row_format_b64_instances(client, reference, images):
    response = client.post("/v1/models/shapes:predict", json={"instances": [{"b64": b64(b)} for b in images]})
    assert response.status_code == 200, response.get_json()
    check_rows(response.get_json()["predictions"], expected(reference, images), reference.labels)


def test_row_format_named_input_and_signature(client, reference, images):
    body = {"signature_name": "serving_default", "instances": [{"image_bytes": {"b64": b64(images[1])}}]}
    response = client.post("/v1/models/shapes/versions/1:predict", json=body)
    assert response.status_code == 200, response.get_json()
    check_rows(response.get_json()["predictions"], expected(reference, images[1:2]), reference.labels)


def test_columnar_format_answers_outputs(client, reference, images):
    # curl -d sends no JSON content type; TF Serving reads the body as JSON regardless.
    body = json.dumps({"inputs": {"image_bytes": [{"b64": b64(b)} for b in images[:3]]}})
    response = client.post("/v1/models/shapes:predict", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.get_json()
    outputs = response.get_json()["outputs"]
    want = expected(reference, images[:3])
    np.testing.assert_allclose(outputs["probabilities"], want, rtol=1e-5, atol=1e-6)
    assert outputs["classes"] == [int(i) for i in want.argmax(1)]
    assert outputs["labels"] == [reference.labels[i] for i in want.argmax(1)]


def test_url_safe_unpadded_base64_is_accepted(client, reference, images):
    token = base64.urlsafe_b64encode(images[2]).decode().rstrip("=")
    response = client.post("/v1/models/shapes:predict", json={"instances": [{"b64": token}]})
    assert response.status_code == 200, response.get_json()
    check_rows(response.get_json()["predictions"], expected(reference, images[2:3]), reference.labels)


def test_bottleneck_signature(client, reference):
    vectors = np.random.default_rng(0).gamma(2.0, 0.3, size=(3, reference.bottleneck_dim)).astype(np.float32)
    want = reference.predict_bottlenecks(vectors)
    rows = vectors.tolist()
    response = client.post("/v1/models/shapes:predict", json={"signature_name": "bottleneck", "instances": rows})
    assert response.status_code == 200, response.get_json()
    check_rows(response.get_json()["predictions"], want, reference.labels)
    named = client.post("/v1/models/shapes:predict",
                        json={"signature_name": "bottleneck", "instances": [{"bottleneck": r} for r in rows]})
    check_rows(named.get_json()["predictions"], want, reference.labels)
    columnar = client.post("/v1/models/shapes:predict", json={"signature_name": "bottleneck",
                                                               "inputs": {"bottleneck": rows}})
    np.testing.assert_allclose(columnar.get_json()["outputs"]["probabilities"], want, rtol=1e-5, atol=1e-6)


def test_status_has_tf_servings_shape(client):
    want = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}],
            "name": "shapes", "ready": True}  # KServe v1's model readiness at the same URL
    assert client.get("/v1/models/shapes").get_json() == want
    assert client.get("/v1/models/shapes/versions/1").get_json() == want


def test_metadata_describes_signatures(client, reference):
    for url in ("/v1/models/shapes/metadata", "/v1/models/shapes/versions/1/metadata"):
        body = client.get(url).get_json()
        assert body["model_spec"] == {"name": "shapes", "signature_name": "", "version": "1"}
        assert body["labels"] == ["bubbles", "checkers", "stripes", "sunsets"] == reference.labels
        assert body["model_card"]["labels"] == reference.labels
        defs = body["metadata"]["signature_def"]["signature_def"]
        assert set(defs) == {"serving_default", "bottleneck"}
        image_input = defs["serving_default"]["inputs"]["image_bytes"]
        assert image_input["dtype"] == "DT_STRING" and image_input["tensor_shape"]["dim"][0]["size"] == "-1"
        bottleneck = defs["bottleneck"]["inputs"]["bottleneck"]["tensor_shape"]["dim"]
        assert [d["size"] for d in bottleneck] == ["-1", str(reference.bottleneck_dim)]
        outputs = defs["bottleneck"]["outputs"]
        assert {k: v["dtype"] for k, v in outputs.items()} == {"probabilities": "DT_FLOAT", "classes": "DT_INT64",
                                                               "labels": "DT_STRING", "unfamiliar": "DT_BOOL",
                                                               "unfamiliar_score": "DT_FLOAT"}
        assert [d["size"] for d in outputs["probabilities"]["tensor_shape"]["dim"]] == ["-1", "4"]
        assert defs["serving_default"]["method_name"] == "tensorflow/serving/predict"
        # OpenVINO Model Server's spelling beside it (ovmsclient reads only that; see test_ovms_json)
        assert body["modelSpec"] == {"name": "shapes", "signatureName": "", "version": "1"}
        camel = body["metadata"]["signature_def"]["signatureDef"]["serving_default"]
        assert camel["inputs"]["image_bytes"]["tensorShape"]["dim"] == image_input["tensor_shape"]["dim"]


def test_the_model_card_keeps_its_calibration_and_unfamiliar_entries(client, model_repo):
    card = json.loads((model_repo / "shapes" / "1" / "model_card.json").read_text())
    shown = client.get("/v1/models/shapes/metadata").get_json()["model_card"]
    assert shown["calibration"] == card["calibration"] and shown["unfamiliar"] == card["unfamiliar"]
    assert {"method", "temperature", "validation", "test"} <= set(shown["calibration"])
    assert {"method", "threshold", "tpr"} <= set(shown["unfamiliar"])


def test_the_reliability_diagram_is_served_and_404_for_an_export_without_one(client, model_repo, two_versions):
    png = (model_repo / "shapes" / "1" / "reliability.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    for url in ("/v1/models/shapes/reliability.png", "/v1/models/shapes/versions/1/reliability.png"):
        response = client.get(url)
        assert response.status_code == 200 and response.mimetype == "image/png" and response.data == png
    for url in ("/v1/models/shapes/reliability.png", "/v1/models/shapes/versions/2/reliability.png",
                "/v1/models/shapes/versions/0/reliability.png"):  # version 2 is the default, and has none
        response = two_versions.get(url)
        assert response.status_code == 404, url
        message = response.get_json()["error"]
        assert message.startswith("model 'shapes' version 2 has no reliability diagram") and "/" not in message


def test_model_list(client):
    assert client.get("/v1/models").get_json() == {"models": [
        {"name": "shapes", "version": 1, "labels": ["bubbles", "checkers", "stripes", "sunsets"],
         "kind": "image-classifier", "versions": [1]}]}


def _image(fmt: str, size=(16, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, fmt)
    return out.getvalue()


ROW = [[0.5] * 2048]
GOOD = {"b64": b64(jpeg(1, size=(40, 30)))}


@pytest.mark.parametrize("method, url, body, status, message", [
    ("get", "/v1/models/nope", None, 404, "unknown model 'nope'"),
    ("get", "/v1/models/nope/metadata", None, 404, "unknown model"),
    ("post", "/v1/models/nope:predict", {"instances": [GOOD]}, 404, "unknown model"),
    ("get", "/v1/models/shapes/versions/9", None, 404, "version 9 is not served"),
    ("post", "/v1/models/shapes/versions/2:predict", {"instances": [GOOD]}, 404, "version 2"),
    ("get", "/v1/models/shapes/versions/one", None, 400, "version must be a non-negative integer"),
    ("post", "/v1/models/shapes/versions/-1:predict", {"instances": [GOOD]}, 400, "version must be"),
    ("get", "/v1/models/shapes:predict", None, 405, ""),
    ("post", "/v1/models/shapes:classify", {"instances": [GOOD]}, 404, ""),
    ("post", "/v1/models/shapes:predict", b"{\"instances\": [", 400, "not valid JSON"),
    ("post", "/v1/models/shapes:predict", b"[" * 100_000, 400, "not valid JSON"),
    ("post", "/v1/models/shapes:predict", [GOOD], 400, "must be a JSON object"),
    ("post", "/v1/models/shapes:predict", {}, 400, 'exactly one of "instances"'),
    ("post", "/v1/models/shapes:predict", {"instances": [GOOD], "inputs": [GOOD]}, 400, "exactly one of"),
    ("post", "/v1/models/shapes:predict", {"instances": []}, 400, "non-empty list"),
    ("post", "/v1/models/shapes:predict", {"instances": GOOD}, 400, "non-empty list"),
    ("post", "/v1/models/shapes:predict", {"signature_name": "images", "instances": [GOOD]}, 400,
     "unknown signature_name 'images'"),
    ("post", "/v1/models/shapes:predict", {"signature_name": 3, "instances": [GOOD]}, 400, "must be a string"),
    ("post", "/v1/models/shapes:predict", {"instances": [GOOD] * (MAX_INSTANCES + 1)}, 400, "at most 4"),
    ("post", "/v1/models/shapes:predict", {"inputs": {"image_bytes": [GOOD] * (MAX_INSTANCES + 1)}}, 400,
     "at most 4"),
    ("post", "/v1/models/shapes:predict", {"instances": [GOOD, {"b64": b64(b"not an image")}]}, 400,
     "instance 1: "),
    ("post", "/v1/models/shapes:predict", {"instances": [GOOD, GOOD, {"b64": "@@@"}]}, 400,
     "instance 2: b64 is not valid base64"),
    ("post", "/v1/models/shapes:predict", {"instances": [{"b64": 7}]}, 400, "instance 0: b64 must be a string"),
    ("post", "/v1/models/shapes:predict", {"instances": ["abc"]}, 400, 'instance 0 must be {"b64"'),
    ("post", "/v1/models/shapes:predict", {"instances": [{"b64": b64(_image("TIFF"))}]}, 415,
     "instance 0: unsupported image type TIFF"),
    ("post", "/v1/models/shapes:predict", {"instances": [{"b64": b64(_image("PNG", (600, 600)))}]}, 413,
     "instance 0: "),
    ("post", "/v1/models/shapes:predict", {"inputs": {"images": [GOOD]}}, 400, "must name the one input"),
    ("post", "/v1/models/shapes:predict", {"signature_name": "bottleneck", "instances": [[0.5] * 10]}, 400,
     "list of 2048 numbers"),
    ("post", "/v1/models/shapes:predict", {"signature_name": "bottleneck", "instances": ROW + [[0.5] * 2047]}, 400,
     "instance 1 must be a list of 2048"),
    ("post", "/v1/models/shapes:predict", {"signature_name": "bottleneck", "instances": [["0.5"] * 2048]}, 400,
     "only numbers; received ['str']"),
    ("post", "/v1/models/shapes:predict", {"signature_name": "bottleneck", "instances": [[True] * 2048]}, 400,
     "only numbers"),
    ("post", "/v1/models/shapes:predict", {"signature_name": "bottleneck", "instances": [GOOD]}, 400,
     "list of 2048 numbers"),
    ("post", "/v1/models/shapes:predict", {"signature_name": "bottleneck", "instances": [[1e39] * 2048]}, 400,
     "finite float32"),
    ("post", "/v1/models/shapes:predict", {"signature_name": "bottleneck", "instances": [[10 ** 400] * 2048]}, 400,
     "finite float32"),
    ("post", "/v1/models/shapes:predict", {"instances": [GOOD], "unfamiliar_threshold": "low"}, 400,
     "unfamiliar_threshold must be a finite number (unfamiliar_score above it is flagged unfamiliar); "
     "received 'low'"),
    ("post", "/v1/models/shapes:predict", {"inputs": [GOOD], "unfamiliar_threshold": [0.5]}, 400,
     "unfamiliar_threshold must be a finite number"),
    ("post", "/v1/models/shapes:predict", json.dumps({"instances": [GOOD]})[:-1].encode()
     + b', "unfamiliar_threshold": -Infinity}', 400, "flagged unfamiliar); received -inf"),
    ("get", "/v1/models/nope/reliability.png", None, 404, "unknown model 'nope'"),
    ("get", "/v1/models/shapes/versions/x/reliability.png", None, 400, "version must be a non-negative integer"),
])
def test_errors(client, method, url, body, status, message):
    if isinstance(body, bytes):
        response = client.open(url, method=method.upper(), data=body, content_type="application/json")
    else:
        response = client.open(url, method=method.upper(), json=body)
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert message in response.get_json()["error"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(client, token):
    # Python's json (and Flask's) accepts NaN and Infinity; TF Serving's parser does not, nor do we.
    row = ", ".join(["0.5"] * 2047 + [token])
    body = '{"signature_name": "bottleneck", "instances": [[0.5' + ", 0.5" * 2047 + "], [" + row + "]]}"
    response = client.post("/v1/models/shapes:predict", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": "bottleneck values must be finite float32 numbers (no NaN or "
                                            "Infinity); instance 1 is not"}


def test_405_says_which_methods(client):
    response = client.get("/v1/models/shapes/versions/1:predict")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    assert "error" in response.get_json()


def test_not_ready_is_503(tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False})
    app.extensions["imgclf.models"].state = "loading"
    client = app.test_client()
    for response in (client.get("/v1/models"), client.get("/v1/models/shapes"),
                     client.post("/v1/models/shapes:predict", json={"instances": [GOOD]})):
        assert response.status_code == 503 and response.get_json() == {"error": "models are still loading"}
        assert response.headers["Retry-After"] == "1"


def test_an_empty_repository_lists_no_models(tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False})
    assert app.test_client().get("/v1/models").get_json() == {"models": []}
    assert app.test_client().get("/v1/models/shapes").status_code == 404


@pytest.fixture(scope="module")
def two_versions(model_repo, tmp_path_factory):
    """A repository where "shapes" has versions 1 and 2 (the same export twice); version 2 is the default.

    Version 2 lacks the reliability diagram, as exports made before calibration do.
    """
    repo = tmp_path_factory.mktemp("two-versions") / "models"
    shutil.copytree(model_repo / "shapes" / "1", repo / "shapes" / "1")
    shutil.copytree(model_repo / "shapes" / "1", repo / "shapes" / "2")
    (repo / "shapes" / "2" / "reliability.png").unlink()
    app = create_app({"model_repository": repo, "load_in_background": False})
    yield app.test_client()
    app.extensions["imgclf.models"].close()


def test_version_0_is_the_default_version(two_versions, reference, images):
    """OpenVINO Model Server's clients send version 0 for "the default": every v1 route answers the default's."""
    client = two_versions
    status = client.get("/v1/models/shapes/versions/0")
    assert status.status_code == 200 and status.get_json() == client.get("/v1/models/shapes").get_json()
    assert status.get_json()["model_version_status"][0]["version"] == "2"
    metadata = client.get("/v1/models/shapes/versions/000/metadata").get_json()
    assert metadata == client.get("/v1/models/shapes/metadata").get_json()
    assert metadata["model_spec"]["version"] == "2"
    response = client.post("/v1/models/shapes/versions/0:predict", json={"instances": [{"b64": b64(images[1])}]})
    assert response.status_code == 200, response.get_json()
    check_rows(response.get_json()["predictions"], expected(reference, images[1:2]), reference.labels)
    # 0 is the default, not "any version": a version that is not served is still 404
    assert client.get("/v1/models/shapes/versions/1").status_code == 404
