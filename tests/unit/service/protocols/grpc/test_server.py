"""A worker's gRPC server in process: API keys from metadata, the message size limit, health, metrics.

The calls are made by the real ``tritonclient.grpc`` and ``grpc_health.v1``
clients; the reference answers are the same app's REST routes.
"""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from imgclf.service import create_app
from imgclf.service.access.api_keys import key_line

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient is a test extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

API_KEY, METRICS_KEY = "imgclf_grpc-test-key", "imgclf_metrics-only"
UPLOAD_LIMIT = 64_000  # bytes: a 16000-float tensor is over it; the demo pictures are not


@pytest.fixture(scope="module")
def app(secondary_repo, model_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc-unit")
    shutil.copytree(secondary_repo / "quadratic", root / "models" / "quadratic")
    shutil.copytree(model_repo / "shapes", root / "models" / "shapes")  # an image classifier: it batches
    keys = root / "keys"
    keys.write_text(key_line("ci", API_KEY) + "\n" + key_line("prom", METRICS_KEY) + "\n")
    app = create_app({"model_repository": root / "models", "load_in_background": False, "poll_seconds": 0,
                      "grpc_bind": "127.0.0.1:0", "api_keys_file": str(keys), "metrics_keys": "prom",
                      "max_upload_bytes": UPLOAD_LIMIT})
    server = app.extensions["imgclf.grpc"]
    assert server.started.wait(30)
    yield app
    server.stop(0)
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def address(app):
    return f"127.0.0.1:{app.extensions['imgclf.grpc'].port}"


def x_input(values) -> grpcclient.InferInput:
    values = np.asarray(values, np.float32).reshape(-1, 1)
    tensor = grpcclient.InferInput("x", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return tensor


def test_health_is_open_and_serving(address):
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("headers", [None, {"x-api-key": "imgclf_wrong"}, {"x-api-key": METRICS_KEY},
                                     {"authorization": f"Bearer {API_KEY}", "x-api-key": METRICS_KEY}])
def test_a_call_without_a_valid_api_key_is_unauthenticated(address, headers):
    client = grpcclient.InferenceServerClient(url=address)
    assert client.is_server_live(headers=headers)  # open, as GET /v2/health/live
    with pytest.raises(InferenceServerException) as caught:
        client.infer("quadratic", [x_input([1.0])], headers=headers)
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "an API key is required" in caught.value.message()
    client.close()


@pytest.mark.parametrize("headers", [{"x-api-key": API_KEY}, {"authorization": f"Bearer {API_KEY}"}])
def test_a_call_with_a_key_in_its_metadata_answers_what_rest_answers(app, address, headers):
    client = grpcclient.InferenceServerClient(url=address)
    answered = client.infer("quadratic", [x_input([-1.0, 2.5])], headers=headers).as_numpy("y")
    client.close()
    rest = app.test_client().post("/v1/models/quadratic:predict", json={"instances": [[-1.0], [2.5]]},
                                  headers={"X-API-Key": API_KEY})
    np.testing.assert_allclose(answered, np.asarray(rest.get_json()["predictions"]), rtol=1e-6)


def test_a_message_over_the_upload_limit_is_resource_exhausted_and_changes_nothing(app, address):
    client = grpcclient.InferenceServerClient(url=address)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("quadratic", [x_input(np.zeros(UPLOAD_LIMIT // 4))], headers={"x-api-key": API_KEY})
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.infer("quadratic", [x_input([0.0])], headers={"x-api-key": API_KEY}).as_numpy("y").shape == (1, 1)
    client.close()


def test_calls_are_counted_per_method_and_code(app, address):
    client = grpcclient.InferenceServerClient(url=address)
    client.infer("quadratic", [x_input([3.0])], headers={"x-api-key": API_KEY})
    with pytest.raises(InferenceServerException):
        client.infer("nope", [x_input([3.0])], headers={"x-api-key": API_KEY})
    client.close()
    text = app.test_client().get("/metrics", headers={"X-API-Key": METRICS_KEY}).get_data(as_text=True)
    counts = {(s.labels["method"], s.labels["code"]): s.value for family in text_string_to_metric_families(text)
              if family.name == "imgclf_grpc_requests" for s in family.samples if s.name.endswith("_total")}
    assert counts[("/inference.GRPCInferenceService/ModelInfer", "OK")] >= 1
    assert counts[("/inference.GRPCInferenceService/ModelInfer", "NOT_FOUND")] == 1


def grpc_counts(app) -> dict:
    text = app.test_client().get("/metrics", headers={"X-API-Key": METRICS_KEY}).get_data(as_text=True)
    return {(s.labels["method"], s.labels["code"]): s.value for family in text_string_to_metric_families(text)
            if family.name == "imgclf_grpc_requests" for s in family.samples if s.name.endswith("_total")}


def test_a_call_past_its_deadline_leaves_the_batch_queue(app, address, model_repo):
    batcher = app.extensions["imgclf.models"].models["shapes"].batcher
    picture = sorted((model_repo.parent / "images").glob("*/*.jpg"))[0].read_bytes()
    gate, sizes, run = threading.Event(), [], batcher.run

    def held(batch):  # the first batch holds the lane until the test lets it go
        sizes.append(len(batch))
        gate.wait(20)
        return run(batch)

    def infer(timeout: float | None = None):
        tensor = grpcclient.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([picture], dtype=np.object_))
        client = grpcclient.InferenceServerClient(url=address)
        try:
            return client.infer("shapes", [tensor], headers={"x-api-key": API_KEY}, client_timeout=timeout)
        finally:
            client.close()

    method = "/inference.GRPCInferenceService/ModelInfer"
    cancelled_before = grpc_counts(app).get((method, "CANCELLED"), 0)
    batcher.run = held
    try:
        first = threading.Thread(target=infer)
        first.start()
        deadline = time.monotonic() + 20
        while not sizes and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(InferenceServerException) as caught:
            infer(timeout=0.5)  # queued behind the held batch until its deadline passes
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        while grpc_counts(app).get((method, "CANCELLED"), 0) == cancelled_before and time.monotonic() < deadline:
            time.sleep(0.02)  # the server gives up the call as soon as the deadline fires
        assert grpc_counts(app).get((method, "CANCELLED"), 0) == cancelled_before + 1
    finally:
        gate.set()
        batcher.run = run
    first.join(20)
    assert infer(timeout=30).as_numpy("probabilities").shape == (1, 4)
    assert sizes == [1]  # the expired call never reached the model; the last one ran unheld, alone


def test_a_connection_holds_at_most_grpc_max_streams_calls_at_once(secondary_repo, tmp_path):
    from imgclf.service.protocols.grpc.messages import message

    shutil.copytree(secondary_repo / "quadratic", tmp_path / "models" / "quadratic")
    app = create_app({"model_repository": tmp_path / "models", "load_in_background": False, "poll_seconds": 0,
                      "grpc_bind": "127.0.0.1:0", "grpc_max_streams": 1})
    server = app.extensions["imgclf.grpc"]
    assert server.started.wait(30)
    served = app.extensions["imgclf.models"].models["quadratic"]
    gate, entered, predict = threading.Event(), [], served.predict

    def held(batch, signature):  # each call waits in the model until the test lets them all go
        entered.append(1)
        gate.wait(20)
        return predict(batch, signature)

    request = message("inference.ModelInferRequest")(model_name="quadratic")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(2.0)
    response = message("inference.ModelInferResponse")
    # A channel of its own each: one connection per channel (no sharing through the global subchannel pool).
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(2)]
    calls = [channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                 request_serializer=type(request).SerializeToString,
                                 response_deserializer=response.FromString) for channel in channels]

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 20
        while len(entered) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    served.predict = held
    try:
        futures = [calls[0].future(request, timeout=30)]
        wait_for(1)
        futures.append(calls[0].future(request, timeout=30))  # same connection: waits for the first stream
        time.sleep(0.5)
        assert len(entered) == 1
        futures.append(calls[1].future(request, timeout=30))  # another connection: goes in at once
        wait_for(2)
        assert len(entered) == 2
    finally:
        gate.set()  # the held calls finish, and the queued one goes in after the first
    assert [len(f.result().raw_output_contents) for f in futures] == [1, 1, 1] and len(entered) == 3
    served.predict = predict
    for channel in channels:
        channel.close()
    server.stop(0)
    app.extensions["imgclf.models"].close()


def test_a_client_that_pings_too_often_is_sent_away_and_a_quiet_one_is_not(secondary_repo, tmp_path):
    """Keepalive enforcement per connection: pings without calls, faster than allowed, end in GOAWAY."""
    shutil.copytree(secondary_repo / "quadratic", tmp_path / "models" / "quadratic")
    app = create_app({"model_repository": tmp_path / "models", "load_in_background": False, "poll_seconds": 0,
                      "grpc_bind": "127.0.0.1:0"})
    server = app.extensions["imgclf.grpc"]
    assert server.started.wait(30)

    def connect(options: list) -> tuple:
        seen: list = []
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                        options=[("grpc.use_local_subchannel_pool", 1), *options])
        channel.subscribe(seen.append, try_to_connect=True)
        return channel, seen

    try:
        # Both at once: one that never pings, one that pings without calls as often as gRPC lets it (1 s).
        # Without calls, the server allows no ping at all: the 3rd strike (MAX_PING_STRIKES = 2) is a GOAWAY.
        pushy_options = [("grpc.keepalive_time_ms", 100), ("grpc.keepalive_permit_without_calls", 1),
                         ("grpc.http2.max_pings_without_data", 0)]
        connections = [connect([]), connect(pushy_options)]
        for channel, _ in connections:
            grpc.channel_ready_future(channel).result(timeout=20)
        time.sleep(5)
        for channel, _ in connections:
            channel.close()
    finally:
        server.stop(0)
        app.extensions["imgclf.models"].close()
    quiet, pushy = (seen[seen.index(grpc.ChannelConnectivity.READY):] for _, seen in connections)
    assert quiet == [grpc.ChannelConnectivity.READY]  # a client that does not ping keeps its connection
    assert len(pushy) > 1 and pushy[1] in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
