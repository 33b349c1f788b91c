"""The real ``kserve`` SDK's REST client (``InferenceRESTClient``, protocols v1 and v2) against real gunicorn.

kserve pins protobuf<7 and ~30 packages that imgclf's venv does not have, so
the client runs in its own cached venv (tests/support/client_venv.py, pinned by
tests/support/kserve-client-requirements.txt) as a subprocess:
tests/support/kserve_calls.py makes every call once per module and answers JSON.
The answers are checked against the same repository served in this process
through the Flask test client. The SDK's REST client has no model metadata call
(only its gRPC client has), so metadata is tritonclient's and ovmsclient's part.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from imgclf.service import create_app
from tests.support.client_venv import client_python
from tests.support.gunicorn_server import gunicorn

SUPPORT = Path(__file__).resolve().parents[1] / "support"
REQUIREMENTS = SUPPORT / "kserve-client-requirements.txt"
CALLS_WITHIN_S = 300


@pytest.fixture(scope="module")
def repo(secondary_repo, model_repo, tmp_path_factory):
    combined = tmp_path_factory.mktemp("kserve") / "models"
    shutil.copytree(model_repo / "shapes", combined / "shapes")
    for name in ("quadratic", "lenet5"):
        shutil.copytree(secondary_repo / name, combined / name)
    return combined


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    return client_python("kserve", REQUIREMENTS)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    with gunicorn(repo, tmp_path_factory.mktemp("kserve-serve"), env={"IMGCLF_MAX_INSTANCES": "8"}) as started:
        yield started


@pytest.fixture(scope="module")
def reference(repo):
    """The same repository served in this process: the answers the SDK must get."""
    app = create_app({"model_repository": repo, "load_in_background": False, "max_instances": 8})
    yield app.test_client()
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def images(model_repo) -> list[bytes]:
    paths = sorted((model_repo.parent / "images").glob("*/*.jpg"))
    return [paths[i].read_bytes() for i in (0, 9, 18, 27)]  # one of each class


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


DIGITS = np.random.default_rng(11).uniform(0, 1, (2, 28, 28)).astype(np.float32)
BOTTLENECKS = np.random.default_rng(12).gamma(2.0, 0.3, (3, 2048)).astype(np.float32)
X = np.array([[3.0], [-12.5], [0.5]], np.float32)


def calls(images: list[bytes]) -> dict[str, dict]:
    """Every SDK call this module checks, by name."""
    image_tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [len(images)], "data": list(map(b64, images))}
    outputs = ["probabilities", "classes", "labels"]
    out = {
        "server_ready": {"op": "is_server_ready", "protocol": "v2"},
        "server_live": {"op": "is_server_live", "protocol": "v2"},
        "v2_ready": {"op": "is_model_ready", "protocol": "v2", "model": "shapes"},
        "v2_ready_nope": {"op": "is_model_ready", "protocol": "v2", "model": "nope"},
        "v1_ready": {"op": "is_model_ready", "protocol": "v1", "model": "lenet5"},
        "v1_ready_nope": {"op": "is_model_ready", "protocol": "v1", "model": "nope"},
        "v1_images": {"op": "infer_v1", "model": "shapes", "body": {"instances": [{"b64": b64(i)} for i in images]}},
        "v1_quadratic": {"op": "infer_v1", "model": "quadratic", "body": {"instances": X.tolist()}},
        "v1_bad": {"op": "infer_v1", "model": "shapes", "body": {"instances": [{"b64": b64(b"not an image")}]}},
        "v2_digits": {"op": "infer_v2", "model": "lenet5", "inputs": [
            {"name": "images", "datatype": "FP32", "shape": list(DIGITS.shape), "data": DIGITS.ravel().tolist()}]},
        "v2_quadratic": {"op": "infer_v2", "model": "quadratic", "binary_input": True, "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(X.shape), "data": X.ravel().tolist()}]},
        "v2_bottlenecks": {"op": "infer_v2", "model": "shapes", "binary_input": True,
                           "outputs": [*outputs, "unfamiliar", "unfamiliar_score"],  # BOOL and FP32, binary too
                           "binary_output": True, "inputs": [{"name": "bottleneck", "datatype": "FP32", "shape": [
                               *BOTTLENECKS.shape], "data": BOTTLENECKS.ravel().tolist()}]},
        "v2_nope": {"op": "infer_v2", "model": "nope", "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]},
        "v2_wrong_input": {"op": "infer_v2", "model": "quadratic", "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]},
    }
    for binary in (False, True):
        out[f"v2_images_{binary}"] = {"op": "infer_v2", "model": "shapes", "inputs": [image_tensor],
                                      "id": f"i-{binary}", "outputs": outputs, "binary_input": binary,
                                      "binary_output": binary}
    return out


@pytest.fixture(scope="module")
def results(kserve_python, server, images) -> dict[str, dict]:
    """Run every call of :func:`calls` in the kserve venv, once; return the results by name."""
    named = calls(images)
    job = {"url": server.url, "calls": list(named.values())}
    done = subprocess.run([str(kserve_python), str(SUPPORT / "kserve_calls.py")], input=json.dumps(job),
                          capture_output=True, text=True, timeout=CALLS_WITHIN_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(zip(named, json.loads(done.stdout)))


def ok(results: dict, name: str):
    assert "ok" in results[name], f"{name}: {results[name]}"
    return results[name]["ok"]


def reference_columns(reference, name: str, body: dict) -> dict:
    response = reference.post(f"/v1/models/{name}:predict", json=body)
    assert response.status_code == 200, response.get_json()
    outputs = response.get_json()["outputs"]
    return outputs if isinstance(outputs, dict) else {"y": outputs}


def tensors(answer: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def test_health_and_readiness(results):
    assert ok(results, "server_ready") is True and ok(results, "server_live") is True
    assert ok(results, "v2_ready") is True and ok(results, "v2_ready_nope") is False
    assert ok(results, "v1_ready") is True  # KServe v1: {"name", "ready"} at TF Serving's status URL
    assert results["v1_ready_nope"]["status"] == 404 and "unknown model 'nope'" in results["v1_ready_nope"]["error"]


def test_v1_infer(results, reference, images):
    want = reference.post("/v1/models/shapes:predict", json={"instances": [{"b64": b64(i)} for i in images]})
    assert ok(results, "v1_images") == want.get_json()
    want = reference.post("/v1/models/quadratic:predict", json={"instances": X.tolist()})
    assert ok(results, "v1_quadratic") == want.get_json()
    assert results["v1_bad"]["status"] == 400 and "instance 0: not an image" in results["v1_bad"]["error"]


@pytest.mark.parametrize("binary", [False, True])
def test_v2_infer_images(results, reference, images, binary):
    answer = ok(results, f"v2_images_{binary}")
    assert (answer["id"], answer["model_name"]) == (f"i-{binary}", "shapes")  # the SDK drops model_version
    want = reference_columns(reference, "shapes", {"inputs": [{"b64": b64(i)} for i in images]})
    got = tensors(answer)
    assert [o["name"] for o in answer["outputs"]] == ["probabilities", "classes", "labels"]
    np.testing.assert_array_equal(got["probabilities"], np.float32(want["probabilities"]))
    np.testing.assert_array_equal(got["classes"], want["classes"])
    assert got["labels"].tolist() == want["labels"]


def test_v2_infer_fp32(results, reference):
    for name, model, body, array in (("v2_digits", "lenet5", {}, DIGITS), ("v2_quadratic", "quadratic", {}, X),
                                     ("v2_bottlenecks", "shapes", {"signature_name": "bottleneck"}, BOTTLENECKS)):
        want = reference_columns(reference, model, {**body, "inputs": array.tolist()})
        got = tensors(ok(results, name))
        assert set(got) == set(want), name
        for output, values in want.items():
            if output == "labels":
                assert got[output].tolist() == values, name
            else:
                np.testing.assert_array_equal(got[output], np.asarray(values).astype(got[output].dtype),
                                              err_msg=f"{name} {output}")


def test_v2_errors_reach_the_client(results):
    assert results["v2_nope"]["status"] == 404 and "unknown model 'nope'" in results["v2_nope"]["error"]
    assert results["v2_wrong_input"]["status"] == 400 and "x (FP32)" in results["v2_wrong_input"]["error"]
