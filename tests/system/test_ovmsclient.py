"""OpenVINO Model Server's real ``ovmsclient`` (HTTP), unchanged, against the real gunicorn service.

``make_http_client``, ``get_model_status``, ``get_model_metadata`` and
``predict`` with the client's default version (it sends version 0: "the
default version"). "shapes" has versions 1 and 2 here, so the default is 2.
The answers are checked against the same repository served in this process
through the Flask test client. ovmsclient's TF Serving protos live in its own
protobuf package (``ovmsclient.*``), so it runs in the test process beside
TensorFlow.
"""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest

from imgclf.service import create_app
from tests.support.gunicorn_server import gunicorn

ovmsclient = pytest.importorskip("ovmsclient", reason="ovmsclient is a test extra")
from ovmsclient.tfs_compat.base.errors import InvalidInputError, ModelNotFoundError  # noqa: E402


@pytest.fixture(scope="module")
def repo(secondary_repo, model_repo, tmp_path_factory):
    """shapes (versions 1 and 2, the same export), quadratic and lenet5 in one repository."""
    combined = tmp_path_factory.mktemp("ovms") / "models"
    for version in ("1", "2"):
        shutil.copytree(model_repo / "shapes" / "1", combined / "shapes" / version)
    for name in ("quadratic", "lenet5"):
        shutil.copytree(secondary_repo / name, combined / name)
    return combined


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    with gunicorn(repo, tmp_path_factory.mktemp("ovms-serve"), env={"IMGCLF_MAX_INSTANCES": "8"}) as started:
        yield started


@pytest.fixture(scope="module")
def client(server):
    return ovmsclient.make_http_client(server.address)


@pytest.fixture(scope="module")
def reference(repo):
    """The same repository served in this process: the answers ovmsclient must get."""
    app = create_app({"model_repository": repo, "load_in_background": False, "max_instances": 8})
    yield app.test_client()
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def images(model_repo) -> list[bytes]:
    paths = sorted((model_repo.parent / "images").glob("*/*.jpg"))
    return [paths[i].read_bytes() for i in (0, 9, 18, 27)]  # one of each class


def columns(reference, name: str, body: dict):
    response = reference.post(f"/v1/models/{name}:predict", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["outputs"]


def test_model_status_of_the_default_version(client):
    assert client.get_model_status("shapes") == {2: {"state": "AVAILABLE", "error_code": 0, "error_message": ""}}
    assert client.get_model_status("shapes", model_version=2) == client.get_model_status("shapes")
    assert list(client.get_model_status("quadratic")) == [1]
    with pytest.raises(ModelNotFoundError):
        client.get_model_status("shapes", model_version=1)  # not served: the newest version is
    with pytest.raises(ModelNotFoundError):
        client.get_model_status("nope")


def test_model_metadata(client):
    metadata = client.get_model_metadata("shapes")
    assert metadata == {
        "model_version": 2,
        "inputs": {"image_bytes": {"dtype": "DT_STRING", "shape": [-1]}},
        "outputs": {"probabilities": {"dtype": "DT_FLOAT", "shape": [-1, 4]},
                    "classes": {"dtype": "DT_INT64", "shape": [-1]},
                    "labels": {"dtype": "DT_STRING", "shape": [-1]},
                    "unfamiliar": {"dtype": "DT_BOOL", "shape": [-1]},
                    "unfamiliar_score": {"dtype": "DT_FLOAT", "shape": [-1]}}}
    assert client.get_model_metadata("lenet5", model_version=1)["inputs"] == {
        "images": {"dtype": "DT_FLOAT", "shape": [-1, 28, 28]}}
    with pytest.raises(ModelNotFoundError):
        client.get_model_metadata("nope")


def test_predict_images(client, reference, images):
    encoded = [{"b64": base64.b64encode(i).decode()} for i in images]
    want = columns(reference, "shapes", {"inputs": {"image_bytes": encoded}})
    got = client.predict({"image_bytes": images}, "shapes")  # raw bytes: the client sends them as {"b64": ...}
    assert set(got) == {"probabilities", "classes", "labels", "unfamiliar", "unfamiliar_score"}
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6)
    np.testing.assert_array_equal(got["classes"], want["classes"])
    assert got["labels"].tolist() == want["labels"] and got["unfamiliar"].tolist() == want["unfamiliar"]
    np.testing.assert_allclose(got["unfamiliar_score"], want["unfamiliar_score"], rtol=1e-6)
    one = client.predict({"image_bytes": images[2]}, "shapes", model_version=2)  # a scalar: one image
    # one image against the same image in a batch of several: oneDNN's kernels may sum in another order per batch
    # size (1.2e-6 relative on an AVX2 machine), so this compares to 1e-5, not bit for bit
    np.testing.assert_allclose(one["probabilities"], [want["probabilities"][2]], rtol=1e-5)


def test_predict_fp32_models(client, reference):
    x = np.array([[3.0], [-12.5], [0.25]], np.float32)
    want = columns(reference, "quadratic", {"inputs": x.tolist()})
    got = client.predict({"x": x}, "quadratic")
    np.testing.assert_allclose(got if isinstance(got, np.ndarray) else got["y"],
                               want if isinstance(want, list) else want["y"], rtol=1e-6)
    digits = np.random.default_rng(7).uniform(0, 1, (2, 28, 28)).astype(np.float32)
    want = columns(reference, "lenet5", {"inputs": digits.tolist()})
    got = client.predict({"images": digits}, "lenet5")
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6)
    np.testing.assert_array_equal(got["classes"], want["classes"])


def test_errors_reach_the_client(client):
    with pytest.raises(InvalidInputError, match="instance 0: not an image"):
        client.predict({"image_bytes": b"not an image"}, "shapes")
    with pytest.raises(InvalidInputError):
        client.predict({"nope": np.zeros((1, 1), np.float32)}, "quadratic")
    with pytest.raises(ModelNotFoundError):
        client.predict({"x": np.zeros((1, 1), np.float32)}, "nope")
