"""gRPC beside REST under gunicorn (two workers sharing the port), called by real clients, unchanged.

``tritonclient.grpc`` (the Open Inference Protocol's GRPCInferenceService),
TF Serving's own stubs (``tensorflow-serving-api``: PredictionService and
ModelService) and ``grpc_health.v1``. Every answer is checked against the same
server's REST routes asked the same inputs, and every error against the REST
message. One server for the whole module keeps it to a few seconds.
"""

from __future__ import annotations

import base64
import shutil
import sys

import grpc
import numpy as np
import pytest
import requests

from tests.support.client_venv import no_deps_target
from tests.support.gunicorn_server import gunicorn
from tests.support.processes import free_port
from tests.support.proto_descriptors import check_file

pytestmark = pytest.mark.system

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient is a test extra")
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def tfs():
    """TF Serving's stubs, installed alone: the package requires `tensorflow`, which tensorflow-cpu provides."""
    sys.path.insert(0, str(no_deps_target("tensorflow-serving-api", "tensorflow-serving-api==2.21.0")))
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    return dict(classification=classification_pb2, metadata=get_model_metadata_pb2, status=get_model_status_pb2,
                model_service=model_service_pb2_grpc, predict=predict_pb2, prediction=prediction_service_pb2_grpc)


def test_our_tf_serving_messages_have_the_stubs_names_and_numbers(tfs):
    published = {}
    for module in (m for m in tfs.values() if hasattr(m, "DESCRIPTOR")):  # the _pb2 modules, not the stubs
        for file in (module.DESCRIPTOR, *module.DESCRIPTOR.dependencies):
            published.update({m.full_name: m for m in file.message_types_by_name.values()})
    check_file("tensorflow_serving.proto", published)


@pytest.fixture(scope="module")
def repo(secondary_repo, model_repo, tmp_path_factory):
    """One model of each kind: shapes (image classifier), mnist-mlp (digits), quadratic (regression)."""
    combined = tmp_path_factory.mktemp("grpc") / "models"
    for name in ("quadratic", "mnist-mlp"):
        shutil.copytree(secondary_repo / name, combined / name)
    shutil.copytree(model_repo / "shapes", combined / "shapes")
    return combined


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """gunicorn with two workers, each with its gRPC server on one shared port; yields (http, grpc) addresses."""
    grpc_address = f"127.0.0.1:{free_port()}"
    with gunicorn(repo, tmp_path_factory.mktemp("grpc-serve"), workers=2, threads=4,
                  env={"IMGCLF_GRPC_BIND": grpc_address, "IMGCLF_MAX_INSTANCES": "8"}) as started:
        # Each worker starts its server before it reports ready: both hold the port (SO_REUSEPORT) by now.
        assert started.log_text().count(f"gRPC on {grpc_address}") == 2, started.log_text()
        channel = grpc.insecure_channel(grpc_address)
        grpc.channel_ready_future(channel).result(timeout=60)
        yield started.address, grpc_address, channel
        channel.close()


@pytest.fixture(scope="module")
def images(model_repo) -> list[bytes]:
    paths = sorted((model_repo.parent / "images").glob("*/*.jpg"))
    return [paths[i].read_bytes() for i in (0, 9, 18)]


def rest(server, name: str, body: dict) -> requests.Response:
    return requests.post(f"http://{server[0]}/v1/models/{name}:predict", json=body, timeout=60)


def rest_outputs(server, name: str, instances: list) -> dict:
    response = rest(server, name, {"inputs": instances})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    return {k: np.asarray(v) for k, v in (outputs if isinstance(outputs, dict) else {"y": outputs}).items()}


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def test_grpc_health_says_serving_for_the_server_and_each_service(server):
    stub = health_pb2_grpc.HealthStub(server[2])
    for service in ("", "tensorflow.serving.PredictionService", "inference.GRPCInferenceService"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_tritonclient_health_metadata_and_infer_bytes_and_fp32(server, images):
    client = grpcclient.InferenceServerClient(url=server[1])
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata(as_json=True)["name"] == "imgclf"
    assert client.is_model_ready("shapes") and not client.is_model_ready("nope")
    metadata = client.get_model_metadata("shapes", as_json=True)
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [("image_bytes", "BYTES"),
                                                                          ("bottleneck", "FP32")]
    assert metadata["inputs"][1]["shape"] == ["-1", "2048"]  # int64 in JSON, as Triton's

    pictures = grpcclient.InferInput("image_bytes", [len(images)], "BYTES")
    pictures.set_data_from_numpy(np.array(images, dtype=np.object_))
    result = client.infer("shapes", [pictures], outputs=[grpcclient.InferRequestedOutput("probabilities"),
                                                          grpcclient.InferRequestedOutput("labels")])
    reference = rest_outputs(server, "shapes", [b64(image) for image in images])
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference["probabilities"], rtol=1e-5, atol=1e-6)
    assert [label.decode() for label in result.as_numpy("labels")] == list(reference["labels"])
    assert result.as_numpy("classes") is None  # not asked for
    # The unfamiliar-input outputs come through as in REST (BOOL and FP32), and the request's threshold moves the flag
    flagged = client.infer("shapes", [pictures], outputs=[grpcclient.InferRequestedOutput("unfamiliar"),
                                                           grpcclient.InferRequestedOutput("unfamiliar_score")])
    np.testing.assert_array_equal(flagged.as_numpy("unfamiliar"), reference["unfamiliar"])
    np.testing.assert_allclose(flagged.as_numpy("unfamiliar_score"), reference["unfamiliar_score"], rtol=1e-5)
    lowest = float(np.min(reference["unfamiliar_score"]))
    moved = client.infer("shapes", [pictures], outputs=[grpcclient.InferRequestedOutput("unfamiliar")],
                         parameters={"unfamiliar_threshold": lowest - 1.0})
    assert moved.as_numpy("unfamiliar").all()  # every score is above a threshold below the lowest

    x = grpcclient.InferInput("x", [3, 1], "FP32")
    x.set_data_from_numpy(np.array([[-2.0], [0.5], [3.0]], np.float32))
    answered = client.infer("quadratic", [x]).as_numpy("y")
    np.testing.assert_allclose(answered, rest_outputs(server, "quadratic", [[-2.0], [0.5], [3.0]])["y"], rtol=1e-6)

    wrong = grpcclient.InferInput("x", [1, 1], "FP64")
    wrong.set_data_from_numpy(np.array([[1.0]], np.float64))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("quadratic", [wrong])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x' must be of datatype FP32; received 'FP64'" in caught.value.message()
    client.close()


def test_tf_serving_predict_every_kind_matches_rest(server, images, tfs):
    import tensorflow as tf

    stub = tfs["prediction"].PredictionServiceStub(server[2])

    def predict(name: str, key: str, values, version: int | None = None):
        request = tfs["predict"].PredictRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[key].CopyFrom(tf.make_tensor_proto(values))
        reply = stub.Predict(request, timeout=60)
        return reply, {k: tf.make_ndarray(v) for k, v in reply.outputs.items()}

    reply, outputs = predict("shapes", "image_bytes", images, version=1)
    assert reply.model_spec.name == "shapes" and reply.model_spec.version.value == 1
    reference = rest_outputs(server, "shapes", [b64(image) for image in images])
    np.testing.assert_allclose(outputs["probabilities"], reference["probabilities"], rtol=1e-5, atol=1e-6)
    assert outputs["classes"].tolist() == reference["classes"].tolist()
    assert [label.decode() for label in outputs["labels"]] == list(reference["labels"])
    assert list(reply.outputs["probabilities"].float_val)  # typed values, as TF Serving answers

    digits = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    _, outputs = predict("mnist-mlp", "images", digits)
    np.testing.assert_allclose(outputs["probabilities"], rest_outputs(server, "mnist-mlp", digits.tolist())[
        "probabilities"], rtol=1e-5, atol=1e-6)
    _, outputs = predict("quadratic", "x", np.array([[1.5], [-4.0]], np.float32))
    np.testing.assert_allclose(outputs["y"], rest_outputs(server, "quadratic", [[1.5], [-4.0]])["y"], rtol=1e-6)


def test_tf_serving_classify_metadata_and_status(server, images, tfs):
    stub = tfs["prediction"].PredictionServiceStub(server[2])
    request = tfs["classification"].ClassificationRequest()
    request.model_spec.name = "shapes"
    for image in images:
        request.input.example_list.examples.add().features.feature["image/encoded"].bytes_list.value.append(image)
    result = stub.Classify(request, timeout=60).result
    reference = rest_outputs(server, "shapes", [b64(image) for image in images])
    for classes, probabilities, label in zip(result.classifications, reference["probabilities"], reference["labels"]):
        assert classes.classes[0].label == label
        np.testing.assert_allclose(sorted((c.score for c in classes.classes), reverse=True),
                                   sorted(probabilities, reverse=True), rtol=1e-5, atol=1e-6)

    request = tfs["metadata"].GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "shapes"
    reply = stub.GetModelMetadata(request, timeout=30)
    defs = tfs["metadata"].SignatureDefMap()
    reply.metadata["signature_def"].Unpack(defs)
    rest_defs = requests.get(f"http://{server[0]}/v1/models/shapes/metadata", timeout=30).json()
    assert sorted(defs.signature_def) == sorted(rest_defs["metadata"]["signature_def"]["signature_def"])
    serving = defs.signature_def["serving_default"]
    assert serving.inputs["image_bytes"].dtype == 7  # DT_STRING
    assert sorted(serving.outputs) == sorted(rest_defs["metadata"]["signature_def"]["signature_def"][
        "serving_default"]["outputs"])

    status_stub = tfs["model_service"].ModelServiceStub(server[2])
    request = tfs["status"].GetModelStatusRequest()
    request.model_spec.name = "shapes"
    versions = status_stub.GetModelStatus(request, timeout=30).model_version_status
    assert [(v.version, tfs["status"].ModelVersionStatus.State.Name(v.state)) for v in versions] == [(1, "AVAILABLE")]


@pytest.mark.parametrize("name, key, values, code", [
    ("shapes", "image_bytes", [b"not a picture"], grpc.StatusCode.INVALID_ARGUMENT),
    ("nope", "image_bytes", [b"x"], grpc.StatusCode.NOT_FOUND),
    ("shapes", "pictures", [b"x"], grpc.StatusCode.INVALID_ARGUMENT),
])
def test_tf_serving_errors_carry_the_rest_message(server, tfs, name, key, values, code):
    import tensorflow as tf

    request = tfs["predict"].PredictRequest()
    request.model_spec.name = name
    request.inputs[key].CopyFrom(tf.make_tensor_proto(values))
    with pytest.raises(grpc.RpcError) as caught:
        tfs["prediction"].PredictionServiceStub(server[2]).Predict(request, timeout=30)
    assert caught.value.code() == code
    body = {"inputs": {key: [b64(v) for v in values]}}
    rest_error = rest(server, name, body).json()["error"]
    assert caught.value.details() == rest_error


def test_wrong_dtype_is_invalid_argument_and_workers_live_on(server, tfs):
    import tensorflow as tf

    request = tfs["predict"].PredictRequest()
    request.model_spec.name = "quadratic"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float64)))
    with pytest.raises(grpc.RpcError) as caught:
        tfs["prediction"].PredictionServiceStub(server[2]).Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "input 'x' must be of dtype DT_FLOAT; received DT_DOUBLE"
    metrics = requests.get(f"http://{server[0]}/metrics", timeout=30).text
    assert 'imgclf_grpc_requests_total{code="INVALID_ARGUMENT",method="/tensorflow.serving.PredictionService/' \
           'Predict"}' in metrics
    assert requests.get(f"http://{server[0]}/readyz", timeout=30).status_code == 200
