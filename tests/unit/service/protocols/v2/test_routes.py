"""The Open Inference Protocol (KServe v2) routes, for every kind of model, in JSON and binary form.

The reference is the TF Serving route of the same app, asked the same inputs:
both must answer the same numbers. Binary bodies are built and read here with
``struct`` from the protocol's text, not with the service's own encoder.
"""

import ast
import base64
import inspect
import io
import json
import shutil
import struct

import numpy as np
import pytest
from openapi_schema_validator import OAS30Validator
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from imgclf.service import create_app
from imgclf.service.protocols.v2 import routes as routes_v2
from tests.support.images import encode, jpeg
from tests.support.source_ast import parse_source

MAX_INSTANCES = 4
MAX_PIXELS = 300_000
HEADER = "Inference-Header-Content-Length"
# What an image classifier answers, in its signature's order.
IMAGE_OUTPUTS = ["probabilities", "classes", "labels", "unfamiliar", "unfamiliar_score"]


@pytest.fixture(scope="module")
def repo(secondary_repo, model_repo, tmp_path_factory):
    """Every kind in one repository: "shapes" (image classifier), mnist-mlp and lenet5 (digits), quadratic."""
    combined = tmp_path_factory.mktemp("v2") / "models"
    shutil.copytree(secondary_repo, combined)
    shutil.copytree(model_repo / "shapes", combined / "shapes")
    return combined


@pytest.fixture(scope="module")
def app(repo):
    app = create_app({"model_repository": repo, "load_in_background": False, "max_instances": MAX_INSTANCES,
                      "max_pixels": MAX_PIXELS, "max_upload_bytes": 2_000_000})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def images(model_repo) -> list[bytes]:
    paths = sorted((model_repo.parent / "images").glob("*/*.jpg"))
    return [paths[i].read_bytes() for i in (0, 9, 18, 27)]  # one of each class


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 1, (3, 28, 28)).astype(np.float32)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def tfserving(client, name: str, body: dict) -> dict:
    """Return the TF Serving route's columnar answer ({output: values}) for ``body``."""
    response = client.post(f"/v1/models/{name}:predict", json=body)
    assert response.status_code == 200, response.get_json()
    outputs = response.get_json()["outputs"]
    return outputs if isinstance(outputs, dict) else {"y": outputs}


def infer(client, name: str, body: dict, binary: bytes | None = None, url: str | None = None):
    """POST an infer request: JSON alone, or JSON then ``binary`` with the header length."""
    url = url or f"/v2/models/{name}/infer"
    if binary is None:
        return client.post(url, json=body)
    header = json.dumps(body).encode()
    return client.post(url, data=header + binary, headers={HEADER: str(len(header))},
                       content_type="application/octet-stream")


def bytes_tensor(elements: list[bytes]) -> bytes:
    """Encode BYTES elements as the binary extension says: each after its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def read_outputs(response) -> dict:
    """Return {output name: (datatype, shape, values)} of an infer response, binary outputs decoded here."""
    body = response.get_data()
    length = response.headers.get(HEADER)
    header = json.loads(body if length is None else body[:int(length)])
    rest = b"" if length is None else body[int(length):]
    found = {}
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            values = output["data"]
        else:
            blob, rest = rest[:size], rest[size:]
            if output["datatype"] == "BYTES":
                values, at = [], 0
                while at < len(blob):
                    (n,) = struct.unpack_from("<I", blob, at)
                    values.append(blob[at + 4:at + 4 + n].decode())
                    at += 4 + n
            else:
                fmt = {"FP32": "f", "INT64": "q", "BOOL": "?"}[output["datatype"]]
                values = list(struct.unpack(f"<{size // struct.calcsize(fmt)}{fmt}", blob))
        found[output["name"]] = (output["datatype"], output["shape"], values)
    assert rest == b""  # every binary byte belongs to an output
    return found


def check_equal(found: dict, reference: dict, names: list[str]) -> None:
    """Assert that v2 outputs equal the TF Serving route's, output by output."""
    assert list(found) == names
    for name in names:
        datatype, shape, values = found[name]
        want = reference[name]
        if datatype in ("BYTES", "BOOL"):
            assert all(type(v) is (str if datatype == "BYTES" else bool) for v in values)
            assert values == want
        else:
            np.testing.assert_array_equal(np.asarray(values).reshape(shape),
                                          np.asarray(want, np.float32 if datatype == "FP32" else np.int64))


# --- server ---------------------------------------------------------------------------------------------------------


def test_server_metadata_and_health(client):
    body = client.get("/v2").get_json()
    assert body["name"] == "imgclf" and "binary_tensor_data" in body["extensions"] and body["version"]
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}


def test_a_loading_service_is_live_but_not_ready(tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False})
    app.extensions["imgclf.models"].state = "loading"
    client = app.test_client()
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/readyz").status_code == 503
    for response in (client.get("/v2/health/ready"), client.get("/v2/models/shapes"),
                     client.get("/v2/models/shapes/ready"),
                     client.post("/v2/models/shapes/infer", json={"inputs": []})):
        assert response.status_code == 503 and response.get_json() == {"error": "models are still loading"}
        assert response.headers["Retry-After"] == "1"


def test_a_failed_load_is_not_ready_and_says_why(tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False, "default_model": "gone"})
    response = app.test_client().get("/v2/health/ready")
    assert response.status_code == 503 and "the default model 'gone'" in response.get_json()["error"]


# --- model metadata and readiness -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, inputs, outputs", [
    ("shapes", [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
                {"name": "bottleneck", "datatype": "FP32", "shape": [-1, 2048]}],
     [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]},
      {"name": "classes", "datatype": "INT64", "shape": [-1]},
      {"name": "labels", "datatype": "BYTES", "shape": [-1]},
      {"name": "unfamiliar", "datatype": "BOOL", "shape": [-1]},
      {"name": "unfamiliar_score", "datatype": "FP32", "shape": [-1]}]),
    ("mnist-mlp", [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}],
     [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
      {"name": "classes", "datatype": "INT64", "shape": [-1]}]),
    ("lenet5", [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}],
     [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
      {"name": "classes", "datatype": "INT64", "shape": [-1]}]),
    ("quadratic", [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
     [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]),
])
def test_model_metadata(client, name, inputs, outputs):
    want = {"name": name, "versions": ["1"], "platform": "tensorflow_savedmodel", "inputs": inputs,
            "outputs": outputs}
    assert client.get(f"/v2/models/{name}").get_json() == want
    assert client.get(f"/v2/models/{name}/versions/1").get_json() == want
    assert client.get(f"/v2/models/{name}/ready").get_json() == {"name": name, "ready": True}
    assert client.get(f"/v2/models/{name}/versions/1/ready").status_code == 200


@pytest.fixture(scope="module")
def two_versions(secondary_repo, tmp_path_factory):
    """A repository where "quadratic" has versions 1 and 2 (the same export twice); version 2 is the default."""
    repo = tmp_path_factory.mktemp("v2-two-versions") / "models"
    shutil.copytree(secondary_repo / "quadratic" / "1", repo / "quadratic" / "1")
    shutil.copytree(secondary_repo / "quadratic" / "1", repo / "quadratic" / "2")
    app = create_app({"model_repository": repo, "load_in_background": False})
    yield app.test_client()
    app.extensions["imgclf.models"].close()


def test_version_0_is_the_default_version(two_versions):
    """OpenVINO Model Server's clients send version 0 for "the default": every v2 model route answers the default's."""
    client = two_versions
    metadata = client.get("/v2/models/quadratic/versions/0")
    assert metadata.status_code == 200 and metadata.get_json() == client.get("/v2/models/quadratic").get_json()
    assert metadata.get_json()["versions"] == ["2"]
    assert client.get("/v2/models/quadratic/versions/0/ready").get_json() == {"name": "quadratic", "ready": True}
    body = {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [3.0, -12.5]}]}
    default, zero = infer(client, "quadratic", body), infer(client, "quadratic", body,
                                                           url="/v2/models/quadratic/versions/000/infer")
    assert zero.status_code == 200 and zero.get_json()["model_version"] == "2", zero.get_json()
    assert zero.get_json()["outputs"] == default.get_json()["outputs"]
    # 0 is the default, not "any version": a version that is not served is still 404
    assert client.get("/v2/models/quadratic/versions/1/ready").status_code == 404


# --- infer: every kind, JSON and binary -----------------------------------------------------------------------------


def test_images_as_base64_json_equal_the_tfserving_route(client, images):
    reference = tfserving(client, "shapes", {"inputs": [{"b64": b64(i)} for i in images]})
    body = {"inputs": [{"name": "image_bytes", "shape": [len(images)], "datatype": "BYTES",
                        "data": [b64(i) for i in images]}]}
    response = infer(client, "shapes", body)
    assert response.status_code == 200 and response.mimetype == "application/json", response.get_json()
    assert HEADER not in response.headers
    answer = response.get_json()
    assert (answer["model_name"], answer["model_version"]) == ("shapes", "1") and "id" not in answer
    found = read_outputs(response)
    check_equal(found, reference, IMAGE_OUTPUTS)
    assert found["probabilities"][:2] == ("FP32", [4, 4]) and found["classes"][:2] == ("INT64", [4])
    assert found["labels"][:2] == ("BYTES", [4]) and found["unfamiliar"][:2] == ("BOOL", [4])
    assert found["unfamiliar_score"][:2] == ("FP32", [4])


def test_images_as_binary_tensor_data_equal_the_tfserving_route(client, images):
    reference = tfserving(client, "shapes", {"inputs": [{"b64": b64(i)} for i in images[:3]]})
    blob = bytes_tensor(images[:3])
    body = {"inputs": [{"name": "image_bytes", "shape": [3, 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(blob)}}],
            "parameters": {"binary_data_output": True}}
    response = infer(client, "shapes", body, blob, url="/v2/models/shapes/versions/1/infer")
    assert response.status_code == 200, response.get_data()[:300]
    assert response.mimetype == "application/octet-stream" and int(response.headers[HEADER]) > 0
    check_equal(read_outputs(response), reference, IMAGE_OUTPUTS)


def test_requested_outputs_choose_order_and_form_and_the_id_is_echoed(client, images):
    reference = tfserving(client, "shapes", {"inputs": [{"b64": b64(images[1])}]})
    body = {"id": "req-7", "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                       "data": [b64(images[1])]}],
            "outputs": [{"name": "labels"}, {"name": "probabilities", "parameters": {"binary_data": True}}]}
    response = infer(client, "shapes", body)
    assert response.status_code == 200
    header = json.loads(response.get_data()[:int(response.headers[HEADER])])
    assert header["id"] == "req-7"
    assert "data" in header["outputs"][0] and "data" not in header["outputs"][1]  # labels JSON, probabilities binary
    check_equal(read_outputs(response), reference, ["labels", "probabilities"])
    # binary_data false overrides the request's binary_data_output
    body["outputs"] = [{"name": "classes", "parameters": {"binary_data": False}}]
    body["parameters"] = {"binary_data_output": True}
    response = infer(client, "shapes", body)
    assert response.mimetype == "application/json"
    check_equal(read_outputs(response), reference, ["classes"])


def test_the_unfamiliar_outputs_can_be_chosen_binary_and_the_threshold_set_per_request(client, images):
    body = {"inputs": [{"name": "image_bytes", "shape": [len(images)], "datatype": "BYTES",
                        "data": [b64(i) for i in images]}],
            "outputs": [{"name": "unfamiliar_score"}, {"name": "unfamiliar", "parameters": {"binary_data": True}}]}
    found = read_outputs(infer(client, "shapes", body))
    assert list(found) == ["unfamiliar_score", "unfamiliar"] and found["unfamiliar"][:2] == ("BOOL", [4])
    scores = np.asarray(found["unfamiliar_score"][2], np.float32)
    # A threshold between the scores: the flag is the score above it, recomputed for this request only.
    middle = float(np.median(scores))
    flagged = read_outputs(infer(client, "shapes", {**body, "parameters": {"unfamiliar_threshold": middle}}))
    assert flagged["unfamiliar"][2] == (scores.astype(np.float64) > middle).tolist()
    assert flagged["unfamiliar_score"][2] == found["unfamiliar_score"][2]
    assert read_outputs(infer(client, "shapes", body))["unfamiliar"][2] == found["unfamiliar"][2]


@pytest.mark.parametrize("binary", [False, True])
def test_bottlenecks_equal_the_tfserving_route(client, binary):
    vectors = np.random.default_rng(0).gamma(2.0, 0.3, size=(3, 2048)).astype(np.float32)
    reference = tfserving(client, "shapes", {"signature_name": "bottleneck", "inputs": vectors.tolist()})
    tensor = {"name": "bottleneck", "shape": [3, 2048], "datatype": "FP32"}
    if binary:
        blob = vectors.astype("<f4").tobytes()
        response = infer(client, "shapes", {"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]},
                         blob)
    else:
        response = infer(client, "shapes", {"inputs": [{**tensor, "data": vectors.reshape(-1).tolist()}]})
    assert response.status_code == 200, response.get_data()[:300]
    check_equal(read_outputs(response), reference, IMAGE_OUTPUTS)


@pytest.mark.parametrize("name", ["mnist-mlp", "lenet5"])
@pytest.mark.parametrize("form", ["flat", "nested", "channel", "binary"])
def test_digits_equal_the_tfserving_route(client, digits, name, form):
    reference = tfserving(client, name, {"inputs": digits.tolist()})
    tensor = {"name": "images", "datatype": "FP32", "shape": [3, 28, 28]}
    if form == "binary":
        blob = digits.astype("<f4").tobytes()
        response = infer(client, name, {"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]}, blob)
    elif form == "channel":  # [N, 28, 28, 1], as the TF Serving route also takes
        response = infer(client, name, {"inputs": [{**tensor, "shape": [3, 28, 28, 1],
                                                    "data": digits.reshape(-1).tolist()}]})
    else:
        data = digits.tolist() if form == "nested" else digits.reshape(-1).tolist()
        response = infer(client, name, {"inputs": [{**tensor, "data": data}]})
    assert response.status_code == 200, response.get_data()[:300]
    check_equal(read_outputs(response), reference, ["probabilities", "classes"])


@pytest.mark.parametrize("shape", [[3, 1], [3]])
def test_the_quadratic_equals_the_tfserving_route(client, shape):
    x = [3.0, -12.5, 0.25]
    reference = tfserving(client, "quadratic", {"inputs": [[v] for v in x]})
    response = infer(client, "quadratic", {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": x}]})
    assert response.status_code == 200, response.get_data()[:300]
    found = read_outputs(response)
    check_equal(found, reference, ["y"])
    assert found["y"][:2] == ("FP32", [3, 1])
    blob = np.asarray(x, "<f4").tobytes()
    binary = infer(client, "quadratic", {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape,
                                                     "parameters": {"binary_data_size": len(blob)}}],
                                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, blob)
    check_equal(read_outputs(binary), reference, ["y"])


# --- errors ---------------------------------------------------------------------------------------------------------


def _png(size) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


GOOD = b64(jpeg(1, size=(40, 30)))


def image_input(data, shape=None, **extra) -> dict:
    shape = [len(data)] if shape is None else shape
    return {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": shape, "data": data, **extra}]}


@pytest.mark.parametrize("method, url, body, status, message", [
    ("get", "/v2/models/nope", None, 404, "unknown model 'nope'"),
    ("get", "/v2/models/nope/ready", None, 404, "unknown model 'nope'"),
    ("get", "/v2/models/shapes/versions/2", None, 404, "version 2 is not served"),
    ("get", "/v2/models/shapes/versions/2/ready", None, 404, "version 2"),
    ("get", "/v2/models/shapes/versions/one", None, 400, "version must be a non-negative integer"),
    ("post", "/v2/models/nope/infer", image_input([GOOD]), 404, "unknown model"),
    ("post", "/v2/models/shapes/versions/3/infer", image_input([GOOD]), 404, "version 3"),
    ("post", "/v2/models/shapes/infer", b"{\"inputs\": [", 400, "not valid JSON"),
    ("post", "/v2/models/shapes/infer", b"[" * 100_000, 400, "not valid JSON"),
    ("post", "/v2/models/shapes/infer", [1], 400, "must be a JSON object"),
    ("post", "/v2/models/shapes/infer", {}, 400, '"inputs" must be a non-empty list'),
    ("post", "/v2/models/shapes/infer", {"inputs": []}, 400, '"inputs" must be a non-empty list'),
    ("post", "/v2/models/shapes/infer", {"inputs": ["x"]}, 400, "input 0 must be an object"),
    ("post", "/v2/models/shapes/infer", {"inputs": [{"shape": [1]}]}, 400, 'input 0: "name" must be a string'),
    ("post", "/v2/models/shapes/infer", image_input([GOOD], datatype=3), 400, '"datatype" must be a string'),
    ("post", "/v2/models/shapes/infer", image_input([GOOD], shape=[-1]), 400, "non-negative integers"),
    ("post", "/v2/models/shapes/infer", image_input([GOOD], shape=[True]), 400, "non-negative integers"),
    ("post", "/v2/models/shapes/infer", image_input([GOOD], shape=[2]), 400, "holds 2 elements; data holds 1"),
    ("post", "/v2/models/shapes/infer", image_input([GOOD], shape=[10 ** 30]), 400,
     f"holds {10 ** 30} items; at most 4 are allowed"),  # before its data is looked at
    ("post", "/v2/models/shapes/infer", image_input([GOOD, GOOD], shape=[1, 2]), 400,
     "input 'image_bytes' takes 1 element(s) per batch entry (shape [-1], -1: the batch); received shape [1, 2]"),
    ("post", "/v2/models/shapes/infer", image_input([], shape=[0]), 400, "must be at least 1"),
    ("post", "/v2/models/shapes/infer", image_input([GOOD], shape=[]), 400, "first dimension is the batch"),
    ("post", "/v2/models/shapes/infer", image_input(GOOD, shape=[1]), 400, '"data" must be a list'),
    ("post", "/v2/models/shapes/infer", {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1]}]},
     400, 'has no "data" and no binary_data_size'),
    ("post", "/v2/models/shapes/infer", image_input([GOOD], datatype="FP32"), 400,
     "input 'image_bytes' must be of datatype BYTES; received 'FP32'"),
    ("post", "/v2/models/shapes/infer", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1],
                                                     "data": [1]}]}, 400,
     "has no input 'pixels'; its inputs: image_bytes (BYTES), bottleneck (FP32)"),
    ("post", "/v2/models/shapes/infer", {"inputs": image_input([GOOD])["inputs"] * 2}, 400, "takes one input tensor"),
    ("post", "/v2/models/shapes/infer", image_input([GOOD] * (MAX_INSTANCES + 1)), 400, "at most 4"),
    ("post", "/v2/models/shapes/infer", image_input([GOOD, "@@@"]), 400, "instance 1: b64 is not valid base64"),
    ("post", "/v2/models/shapes/infer", image_input([7]), 400, "instance 0: a BYTES element in JSON must be"),
    ("post", "/v2/models/shapes/infer", image_input([b64(b"not an image")]), 400, "instance 0: "),
    ("post", "/v2/models/shapes/infer", image_input([b64(_png((600, 600)))]), 413, "instance 0: "),
    ("post", "/v2/models/shapes/infer", image_input([b64(encode(np.zeros((8, 8, 3), np.uint8), "TIFF"))]), 415,
     "instance 0: unsupported image type TIFF"),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "id": 5}, 400, '"id" must be a string'),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "parameters": []}, 400, "must be an object"),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "parameters": {"binary_data_output": "yes"}}, 400,
     "binary_data_output must be true or false"),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "outputs": {"name": "labels"}}, 400,
     '"outputs" must be a list'),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "outputs": [{"name": "scores"}]}, 400,
     "has no output 'scores'; its outputs: probabilities, classes, labels"),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "outputs": [{"name": "labels"}] * 2}, 400,
     "requested twice"),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "outputs": [
        {"name": "labels", "parameters": {"classification": 2}}]}, 400, "classification extension"),
    ("post", "/v2/models/shapes/infer", {"inputs": [{"name": "bottleneck", "datatype": "FP32", "shape": [1, 10],
                                                     "data": [0.5] * 10}]}, 400, "takes 2048 element(s) per"),
    ("post", "/v2/models/shapes/infer", {"inputs": [{"name": "bottleneck", "datatype": "FP32", "shape": [1, 2, 1024],
                                                     "data": [0.5] * 2048}]}, 400,
     "instance 0 must be a list of 2048 numbers; received a list of 2"),
    ("post", "/v2/models/shapes/infer", {"inputs": [{"name": "bottleneck", "datatype": "FP32", "shape": [1, 2048],
                                                     "data": ["0.5"] * 2048}]}, 400, "only numbers"),
    ("post", "/v2/models/shapes/infer", {"inputs": [{"name": "bottleneck", "datatype": "FP32", "shape": [1, 2048],
                                                     "data": [1e39] * 2048}]}, 400, "finite float32"),
    ("post", "/v2/models/mnist-mlp/infer", {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 27, 28],
                                                        "data": [0.0] * 27 * 28}]}, 400, "takes 784 element(s)"),
    ("post", "/v2/models/mnist-mlp/infer", {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784],
                                                        "data": [0.0] * 784}]}, 400, "28x28 array"),
    ("post", "/v2/models/mnist-mlp/infer", {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 28, 28],
                                                        "data": [300.0] * 28 * 28}]}, 400, "must lie in 0-1 or 0-255"),
    ("post", "/v2/models/quadratic/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1],
                                                        "data": [[True]]}]}, 400, "must be a number x"),
    ("post", "/v2/models/quadratic/infer", {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1],
                                                        "data": [1.0]}]}, 400, "must be of datatype FP32"),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "parameters": {"unfamiliar_threshold": "high"}}, 400,
     "flagged unfamiliar); received 'high'"),
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "parameters": {"unfamiliar_threshold": None}}, 200,
     None),  # null: the model's threshold, as when absent
    ("post", "/v2/models/shapes/infer", {**image_input([GOOD]), "parameters": {"unfamiliar_threshold": False}}, 400,
     "flagged unfamiliar); received False"),
    ("post", "/v2/models/shapes/infer", b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], '
     b'"data": ["' + GOOD.encode() + b'"]}], "parameters": {"unfamiliar_threshold": NaN}}', 400,
     "flagged unfamiliar); received nan"),
    ("post", "/v2/models/quadratic/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1],
                                                        "data": [1.0]}], "parameters": {"unfamiliar_threshold": 1}},
     400, "model 'quadratic' answers no unfamiliar_score; unfamiliar_threshold applies to image classifiers only"),
])
def test_errors(client, method, url, body, status, message):
    if isinstance(body, bytes):
        response = client.open(url, method=method.upper(), data=body, content_type="application/json")
    else:
        response = client.open(url, method=method.upper(), json=body)
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    if message is not None:
        assert message in response.get_json()["error"]


def _bottleneck(size: int) -> dict:
    return {"inputs": [{"name": "bottleneck", "datatype": "FP32", "shape": [1, 2048],
                        "parameters": {"binary_data_size": size}}]}


@pytest.mark.parametrize("header, body, message", [
    ("abc", b"{}", "must be a non-negative integer; received 'abc'"),
    ("-2", b"{}", "must be a non-negative integer"),
    ("99", b"{}", "is 99, but the body holds only 2 bytes"),
    (None, json.dumps(_bottleneck(8192)).encode() + bytes(8192), "not valid JSON"),
    ("", json.dumps(_bottleneck(8192)).encode(), "must be a non-negative integer"),
    ("json", json.dumps(_bottleneck(8192)).encode() + bytes(100), "runs past the end"),
    ("json", json.dumps(_bottleneck(100)).encode() + bytes(100), "(8192 bytes); binary_data_size is 100"),
    ("json", json.dumps(_bottleneck(8192)).encode() + bytes(8200), "add up to 8192"),
    ("json", json.dumps({"inputs": [{"name": "bottleneck", "datatype": "BF16", "shape": [1, 2048],
                                     "parameters": {"binary_data_size": 8}}]}).encode() + bytes(8),
     "binary data of datatype 'BF16' is not read here"),
    ("json", json.dumps({"inputs": [{"name": "bottleneck", "datatype": "FP64", "shape": [1, 2048],
                                     "parameters": {"binary_data_size": 16384}}]}).encode() + bytes(16384),
     "input 'bottleneck' must be of datatype FP32; received 'FP64'"),
    ("json", json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 3}}]}).encode() + bytes(3),
     "cut length prefix"),
    ("json", json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 6}}]}).encode() + b"\x09\x00\x00\x00ab",
     "claims 9 bytes; 2 are left"),
    ("json", json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": 6}}]}).encode() + b"\x02\x00\x00\x00ab",
     "the shape holds 2 elements; the binary data holds 1"),
    ("json", json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": -1}}]}).encode(),
     "binary_data_size must be a non-negative integer"),
    ("json", json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 9}}]}).encode() + bytes_tensor([b"12345"]),
     "instance 0: "),
])
def test_binary_errors(client, header, body, message):
    headers = {}
    if header == "json":
        header = str(body.index(b"}]}") + 3)
    if header is not None:
        headers[HEADER] = header
    response = client.post("/v2/models/shapes/infer", data=body, headers=headers,
                           content_type="application/octet-stream")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert message in response.get_json()["error"]


def test_a_body_over_the_upload_limit_is_413(client):
    blob = bytes_tensor([b"x" * 2_100_000])
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                        "parameters": {"binary_data_size": len(blob)}}]}
    response = infer(client, "shapes", body, blob)
    assert response.status_code == 413 and "over the limit of 2000000 bytes" in response.get_json()["error"]


def test_405_says_which_methods(client):
    response = client.get("/v2/models/shapes/infer")
    assert response.status_code == 405 and "POST" in response.headers["Allow"] and "error" in response.get_json()


# --- what applies to every prediction route ---------------------------------------------------------------------


def test_infer_is_counted_in_flight_and_batched(app, client, images, monkeypatch):
    from imgclf.service.dataplane.extension import current_plane

    in_flight = current_plane(app).in_flight
    served = app.extensions["imgclf.models"].get("shapes")
    seen, predict = [], served.predict

    def spy(batch, signature):
        seen.append(in_flight.count("shapes"))  # this worker's in-flight count, read by the batcher
        return predict(batch, signature)

    monkeypatch.setattr(served, "predict", spy)
    before = served.batcher  # images go through the model's batcher, not around it
    calls = []
    monkeypatch.setattr(before, "submit", lambda batch, submit=before.submit: calls.append(len(batch)) or submit(batch))
    response = infer(client, "shapes", image_input([b64(images[0]), b64(images[1])]))
    assert response.status_code == 200
    assert seen == [1] and calls == [2] and in_flight.count("shapes") == 0


def test_metrics_count_v2_routes_by_rule(client):
    client.get("/v2/models/quadratic")
    client.post("/v2/models/quadratic/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                                                "data": [1.0]}]})
    client.post("/v2/models/quadratic/infer", json={"inputs": []})
    samples = [s for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
               for s in family.samples if s.name == "imgclf_requests_total"]
    counted = {(s.labels["route"], s.labels["method"], s.labels["status"]) for s in samples}
    assert {("/v2/models/<name>/infer", "POST", "200"), ("/v2/models/<name>/infer", "POST", "400"),
            ("/v2/models/<name>", "GET", "200")} <= counted
    assert not any("quadratic" in route for route, _, _ in counted)  # rules, never raw paths


def test_the_v2_routes_do_not_branch_on_the_model_kind():
    tree = parse_source(inspect.getsource(routes_v2))
    attributes = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    assert "kind" not in attributes


def test_answers_match_the_openapi_document(client, images):
    spec = client.get("/openapi.json").get_json()

    def check(path: str, method: str, response) -> None:
        documented = spec["paths"][path][method]["responses"]
        assert str(response.status_code) in documented, (path, response.status_code)
        content = documented[str(response.status_code)]["content"]
        assert response.mimetype in content, (path, response.mimetype)
        if response.mimetype == "application/json":
            schema = {**content["application/json"]["schema"], "components": spec["components"]}
            OAS30Validator(schema).validate(response.get_json())

    request = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]
    example = request["examples"]["image"]["value"]
    OAS30Validator({**request["schema"], "components": spec["components"]}).validate(example)
    check("/v2/models/{name}/infer", "post", infer(client, "shapes", example))
    blob = bytes_tensor(images[:1])
    binary = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                          "parameters": {"binary_data_size": len(blob)}}], "parameters": {"binary_data_output": True}}
    check("/v2/models/{name}/versions/{version}/infer", "post",
          infer(client, "shapes", binary, blob, url="/v2/models/shapes/versions/1/infer"))
    check("/v2/models/{name}/infer", "post", infer(client, "shapes", {"inputs": []}))
    check("/v2/models/{name}/infer", "post", infer(client, "nope", example))
    for path, url in (("/v2", "/v2"), ("/v2/health/live", "/v2/health/live"), ("/v2/health/ready", "/v2/health/ready"),
                      ("/v2/models/{name}", "/v2/models/shapes"), ("/v2/models/{name}", "/v2/models/nope"),
                      ("/v2/models/{name}/versions/{version}", "/v2/models/quadratic/versions/1"),
                      ("/v2/models/{name}/versions/{version}", "/v2/models/quadratic/versions/x"),
                      ("/v2/models/{name}/ready", "/v2/models/lenet5/ready"),
                      ("/v2/models/{name}/versions/{version}/ready", "/v2/models/lenet5/versions/4/ready")):
        check(path, "get", client.get(url))


# --- cheap requests stay cheap (issue 27, findings 1 and 2) ---------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "binary"])
def test_a_bytes_tensor_over_the_instance_limit_is_refused_before_any_element_is_read(client, monkeypatch, form):
    from imgclf.service.dataplane import budget
    from imgclf.service.protocols.v2 import model as v2_model
    from imgclf.service.protocols.v2 import tensors

    opened = []
    monkeypatch.setattr(budget, "header_pixels", lambda data: opened.append(1) or 0)
    monkeypatch.setattr(v2_model, "_picture", lambda value, index: opened.append(1) or b"")
    monkeypatch.setattr(tensors, "from_binary", lambda *args: opened.append(1) or [])  # not even split
    monkeypatch.setattr(tensors, "_flatten", lambda *args: opened.append(1) or [])
    count = 200_000  # one-byte elements: each would be opened by Pillow (about 30 us) if it were read
    if form == "json":
        response = infer(client, "shapes", image_input([b64(b"x")] * count))
    else:
        blob = bytes_tensor([b"x"] * count)
        header = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [count],
                              "parameters": {"binary_data_size": len(blob)}}]}
        response = infer(client, "shapes", header, binary=blob)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert f"holds {count} items; at most {MAX_INSTANCES} are allowed" in response.get_json()["error"]
    assert opened == []


class CountingName(str):
    """An output name that counts its comparisons with other names."""

    compared = 0

    def __eq__(self, other):
        CountingName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_requested_outputs_are_deduplicated_in_linear_time():
    from imgclf.service.protocols.v2.tensors import _outputs

    names = [CountingName(f"output-{i}") for i in range(2_000)]
    CountingName.compared = 0
    requested = _outputs([{"name": name} for name in names])
    assert [r.name for r in requested] == names
    assert CountingName.compared <= len(names)  # pairwise: 2 million comparisons
    with pytest.raises(Exception, match="'output-7' is requested twice"):
        _outputs([{"name": name} for name in names] + [{"name": "output-7"}])


@pytest.mark.parametrize("what", ["outputs", "inputs"])
def test_a_request_naming_more_tensors_than_allowed_is_refused_before_any_is_read(client, monkeypatch, what):
    from imgclf.service.protocols.v2 import tensors

    read = []
    count = 60_000 if what == "outputs" else 5_000  # 5,000 inputs: 0.5 MB, under this app's upload limit
    if what == "inputs":
        monkeypatch.setattr(tensors, "_input", lambda *args: read.append(1) or pytest.fail("an input was read"))
        body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}] * count}
    else:
        monkeypatch.setattr(tensors, "_parameters", lambda obj, where: read.append(where) or {})
        body = {**image_input([GOOD]), "outputs": [{"name": f"o{i}"} for i in range(count)]}
    response = infer(client, "shapes", body)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"] == (f"the request names {count} {what}; at most 16 are allowed "
                                            "(IMGCLF_MAX_TENSORS)")
    assert read == ([] if what == "inputs" else ["the request", "input 'image_bytes'"])  # no output was read
