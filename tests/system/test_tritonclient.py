"""The real ``tritonclient[http]``, unchanged, against the real gunicorn service: v2 health, metadata, infer.

The answers are checked against the same service's TF Serving route, asked the
same inputs over plain ``requests``. tritonclient's HTTP client needs no
protobuf, so it runs in the test process beside TensorFlow.
"""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest
import requests

from tests.support.gunicorn_server import gunicorn

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test extra")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the importorskip)


@pytest.fixture(scope="module")
def repo(secondary_repo, model_repo, tmp_path_factory):
    """Every kind in one repository: shapes, mnist-mlp, lenet5, quadratic."""
    combined = tmp_path_factory.mktemp("triton") / "models"
    shutil.copytree(secondary_repo, combined)
    shutil.copytree(model_repo / "shapes", combined / "shapes")
    return combined


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """The service under gunicorn (one worker) on 127.0.0.1; yields its host:port."""
    with gunicorn(repo, tmp_path_factory.mktemp("triton-serve"), workers=1, threads=4,
                  env={"IMGCLF_MAX_INSTANCES": "8"}) as started:
        yield started.address


@pytest.fixture(scope="module")
def client(server):
    client = httpclient.InferenceServerClient(url=server, network_timeout=60.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def images(model_repo) -> list[bytes]:
    paths = sorted((model_repo.parent / "images").glob("*/*.jpg"))
    return [paths[i].read_bytes() for i in (0, 9, 18, 27)]  # one of each class


def tfserving(server: str, name: str, body: dict) -> dict:
    """Return the TF Serving route's columnar outputs for ``body``, as {output: array}."""
    response = requests.post(f"http://{server}/v1/models/{name}:predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    return {k: np.asarray(v) for k, v in (outputs if isinstance(outputs, dict) else {"y": outputs}).items()}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "imgclf" and "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready("shapes") and client.is_model_ready("quadratic", model_version="1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("shapes", model_version="2")


def test_model_metadata(client):
    metadata = client.get_model_metadata("shapes")
    assert metadata["name"] == "shapes" and metadata["versions"] == ["1"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("image_bytes", "BYTES", [-1]), ("bottleneck", "FP32", [-1, 2048])]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP32"), ("classes", "INT64"), ("labels", "BYTES"), ("unfamiliar", "BOOL"),
        ("unfamiliar_score", "FP32")]
    assert client.get_model_metadata("lenet5", model_version="1")["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False])
def test_infer_images_as_bytes(client, server, images, binary):
    reference = tfserving(server, "shapes", {"inputs": [{"b64": b64(i)} for i in images]})
    image_input = httpclient.InferInput("image_bytes", [len(images)], "BYTES")
    # binary: the raw encoded images; JSON: each image's base64 text (JSON strings must be UTF-8)
    elements = images if binary else [b64(i).encode() for i in images]
    image_input.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary)
               for name in ("probabilities", "classes", "labels")]
    result = client.infer("shapes", [image_input], outputs=outputs, request_id=f"images-{binary}")
    assert result.get_response()["id"] == f"images-{binary}"
    np.testing.assert_array_equal(result.as_numpy("probabilities"), reference["probabilities"].astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("classes"), reference["classes"])
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("labels")]
    assert labels == reference["labels"].tolist()


def test_infer_without_requested_outputs_answers_all_binary(client, server, images):
    reference = tfserving(server, "shapes", {"inputs": [{"b64": b64(images[2])}]})
    image_input = httpclient.InferInput("image_bytes", [1, 1], "BYTES")
    image_input.set_data_from_numpy(np.array([[images[2]]], dtype=np.object_))
    result = client.infer("shapes", [image_input], model_version="1")  # tritonclient asks binary_data_output
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), reference["probabilities"].astype(np.float32))
    assert [v.decode() for v in result.as_numpy("labels")] == reference["labels"].tolist()
    # BOOL and FP32 [N] read by the client from the binary data as they are from TF Serving's JSON
    assert result.as_numpy("unfamiliar").dtype == np.bool_
    assert result.as_numpy("unfamiliar").tolist() == reference["unfamiliar"].tolist()
    np.testing.assert_array_equal(result.as_numpy("unfamiliar_score"),
                                  reference["unfamiliar_score"].astype(np.float32))


@pytest.mark.parametrize("binary", [True, False])
def test_infer_fp32_inputs(client, server, binary):
    rng = np.random.default_rng(5)
    cases = [("shapes", "bottleneck", rng.gamma(2.0, 0.3, (3, 2048)).astype(np.float32),
              {"signature_name": "bottleneck"}, ["probabilities", "classes", "labels"]),
             ("mnist-mlp", "images", rng.uniform(0, 1, (2, 28, 28)).astype(np.float32), {}, ["probabilities",
                                                                                          "classes"]),
             ("lenet5", "images", rng.uniform(0, 1, (2, 28, 28)).astype(np.float32), {}, ["probabilities", "classes"]),
             ("quadratic", "x", np.array([[3.0], [-12.5]], np.float32), {}, ["y"])]
    for model, name, array, extra, output_names in cases:
        reference = tfserving(server, model, {**extra, "inputs": array.tolist()})
        tensor = httpclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in output_names]
        result = client.infer(model, [tensor], outputs=outputs)
        for output in output_names:
            got, want = result.as_numpy(output), reference[output]
            if output == "labels":
                assert [v.decode() if isinstance(v, bytes) else v for v in got] == want.tolist()
            else:
                np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=f"{model} {output}")


def test_errors_reach_the_client(client):
    tensor = httpclient.InferInput("x", [1, 1], "FP64")
    tensor.set_data_from_numpy(np.array([[1.0]]))
    with pytest.raises(InferenceServerException, match="must be of datatype FP32"):
        client.infer("quadratic", [tensor])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [tensor])
