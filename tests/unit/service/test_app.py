"""The app factory, configuration, readiness and the batcher."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from imgclf.core.errors import UsageError
from imgclf.service import create_app
from imgclf.service.servables.batching import Batcher
from imgclf.service.server.settings import ServerSettings
from imgclf.service.settings import ServingSettings


@pytest.fixture(scope="module")
def app(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False})
    yield app
    app.extensions["imgclf.models"].close()


def test_config_reads_env_then_overrides(tmp_path):
    env = {"IMGCLF_TOP_K": "3", "IMGCLF_BATCHING": "off", "IMGCLF_MODEL_VERSIONS": "a=2, b=5",
           "IMGCLF_MODEL_REPOSITORY": str(tmp_path), "IMGCLF_BATCH_MAX_WAIT_MS": "2.5"}
    config = ServingSettings.from_env(env, top_k=4)
    assert (config.top_k, config.batching, config.model_versions) == (4, False, {"a": 2, "b": 5})
    assert config.model_repository == tmp_path and config.batch_max_wait_ms == 2.5


@pytest.mark.parametrize("env, message", [
    ({"IMGCLF_TOP_K": "many"}, "IMGCLF_TOP_K='many' is not a valid int"),
    ({"IMGCLF_BATCH_MAX_SIZE": "0"}, "IMGCLF_BATCH_MAX_SIZE must be at least 1; received 0"),
    ({"IMGCLF_BATCHING": "maybe"}, "IMGCLF_BATCHING='maybe' is not a yes or a no: use 1/true/yes/on or 0/false/no/off"),
    ({"IMGCLF_ALLOW_UNSAFE_OPS": "2"}, "IMGCLF_ALLOW_UNSAFE_OPS='2' is not a yes or a no"),
    ({"IMGCLF_LOAD_IN_BACKGROUND": "y"}, "IMGCLF_LOAD_IN_BACKGROUND='y' is not a yes or a no"),
    ({"IMGCLF_BATCH_MAX_WAIT_MS": "20000"}, "IMGCLF_BATCH_MAX_WAIT_MS must be between 0 and 10000; received 20000.0"),
    ({"IMGCLF_BATCH_MAX_WAIT_MS": "nan"}, "IMGCLF_BATCH_MAX_WAIT_MS must be a finite number; received 'nan'"),
    ({"IMGCLF_MODEL_VERSIONS": "flowers=3,pets"}, r"IMGCLF_MODEL_VERSIONS='flowers=3,pets' is not a list of "
                                                  r"name=version pairs \(e.g. flowers=3,pets=1\); 'pets' is not one"),
    ({"IMGCLF_MODEL_VERSIONS": "flowers=new"}, "'flowers=new' is not one"),
])
def test_bad_settings_are_named(env, message):
    with pytest.raises(UsageError, match=message):
        ServingSettings.from_env(env)


@pytest.mark.parametrize("raw, expected", [
    ("1", True), ("TRUE", True), (" yes ", True), ("On", True),
    ("0", False), ("false", False), ("NO", False), (" off", False),
])
def test_booleans_take_each_accepted_spelling(raw, expected):
    assert ServingSettings.from_env({"IMGCLF_BATCHING": raw}).batching is expected


def test_empty_or_blank_variables_mean_the_default():
    defaults = ServingSettings()
    env = {"IMGCLF_BATCHING": "", "IMGCLF_TOP_K": "  ", "IMGCLF_MODEL_VERSIONS": "", "IMGCLF_DEFAULT_MODEL": " "}
    config = ServingSettings.from_env(env)
    assert (config.batching, config.top_k, config.model_versions, config.default_model) == (
        defaults.batching, defaults.top_k, defaults.model_versions, defaults.default_model)


def test_overrides_are_checked_like_the_environment():
    with pytest.raises(UsageError, match="IMGCLF_TOP_K must be at least 1; received 0"):
        ServingSettings.from_env({}, top_k=0)


def test_server_settings_defaults_and_environment():
    assert ServerSettings.from_env({}) == ServerSettings("127.0.0.1:8000", 2, 8, 120, 30, "info", False, 1)
    env = {"IMGCLF_BIND": " 0.0.0.0:9000 ", "IMGCLF_WORKERS": "3", "IMGCLF_GRACEFUL_TIMEOUT": "0",
           "IMGCLF_LOG_LEVEL": "DEBUG", "IMGCLF_ACCESS_LOG": "on", "IMGCLF_MALLOC_TRIM_SECONDS": "0"}
    server = ServerSettings.from_env(env)
    assert (server.bind, server.workers, server.graceful_timeout, server.log_level, server.access_log,
            server.malloc_trim_seconds) == ("0.0.0.0:9000", 3, 0, "debug", True, 0)


@pytest.mark.parametrize("env, message", [
    ({"IMGCLF_ACCESS_LOG": "2"}, "IMGCLF_ACCESS_LOG='2' is not a yes or a no"),
    ({"IMGCLF_WORKERS": "0"}, "IMGCLF_WORKERS must be at least 1; received 0"),
    ({"IMGCLF_THREADS": "eight"}, "IMGCLF_THREADS='eight' is not a valid int"),
    ({"IMGCLF_TIMEOUT": "0"}, "IMGCLF_TIMEOUT must be at least 1; received 0"),
    ({"IMGCLF_GRACEFUL_TIMEOUT": "-1"}, "IMGCLF_GRACEFUL_TIMEOUT must be at least 0; received -1"),
    ({"IMGCLF_LOG_LEVEL": "loud"}, "IMGCLF_LOG_LEVEL must be one of 'debug', 'info', .*; received 'loud'"),
])
def test_bad_server_settings_are_named(env, message):
    with pytest.raises(UsageError, match=message):
        ServerSettings.from_env(env)


def _gunicorn_conf_in_a_subprocess(**env):
    code = ("import sys, json; import imgclf.service.server.gunicorn_conf as c; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'flask', 'numpy', 'PIL')); "
            "print(json.dumps([c.logconfig_dict['loggers']['gunicorn.access']['level'], c.workers, heavy]))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLF_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env})


def test_gunicorn_conf_reads_the_access_log_switch_and_stays_light():
    done = _gunicorn_conf_in_a_subprocess(IMGCLF_ACCESS_LOG="yes", IMGCLF_WORKERS="3")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["INFO", 3, []]  # the gunicorn master imports no TensorFlow, Flask, numpy
    done = _gunicorn_conf_in_a_subprocess()
    assert json.loads(done.stdout)[0] == "WARNING"


def test_gunicorn_conf_refuses_an_access_log_of_2():
    # Before, "2" silently meant "off"; now gunicorn cannot start on it.
    done = _gunicorn_conf_in_a_subprocess(IMGCLF_ACCESS_LOG="2")
    assert done.returncode != 0 and "IMGCLF_ACCESS_LOG='2' is not a yes or a no" in done.stderr


@pytest.mark.parametrize("name, value, message", [
    ("IMGCLF_ACCESS_LOG", "2", "IMGCLF_ACCESS_LOG='2' is not a yes or a no"),
    ("IMGCLF_BATCHING", "maybe", "IMGCLF_BATCHING='maybe' is not a yes or a no"),
    ("IMGCLF_LOG_DEVICE_PLACEMENT", "2", "IMGCLF_LOG_DEVICE_PLACEMENT='2' is not a yes or a no"),
    ("IMGCLF_HEADER_TIMEOUT", "soon", "IMGCLF_HEADER_TIMEOUT='soon' is not a valid float"),  # the front's
])
def test_serve_checks_the_settings_before_it_execs_gunicorn(model_repo, monkeypatch, capsys, name, value, message):
    from imgclf.service.cli import serve as serve_cli
    from imgclf.service.cli.main import main

    calls = []
    monkeypatch.setattr(serve_cli.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setenv(name, value)
    assert main(["serve", "--model-dir", str(model_repo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgclf serve: error: ") and err.count("\n") == 1  # one line, no traceback
    assert message in err and calls == []


def test_healthz_and_readyz_when_loaded(app):
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "models": {"shapes": 1}, "precision": "fp32"}


def test_readyz_is_503_until_models_are_loaded(model_repo, monkeypatch):
    from imgclf.service.servables import image as registry_module

    release = threading.Event()
    real_load = registry_module.load_model

    def slow_load(*args, **kwargs):
        release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(registry_module, "load_model", slow_load)
    app = create_app({"model_repository": model_repo})  # loads in the background
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["status"] == "loading"
    release.set()
    assert app.extensions["imgclf.models"].wait(60)
    assert client.get("/readyz").status_code == 200
    app.extensions["imgclf.models"].close()


@pytest.fixture
def loading_app(model_repo, monkeypatch):
    """An app whose model loading waits for ``app.release`` (set it to let loading finish)."""
    from imgclf.service.servables import image as servable_image

    release = threading.Event()
    real_load = servable_image.load_model

    def slow_load(*args, **kwargs):
        release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(servable_image, "load_model", slow_load)
    app = create_app({"model_repository": model_repo})  # loads in the background
    app.release = release
    yield app
    release.set()
    app.extensions["imgclf.models"].wait(60)
    app.extensions["imgclf.models"].close()


def test_held_model_requests_wait_for_loading_while_probes_answer(loading_app):
    from tests.support.images import jpeg

    registry = loading_app.extensions["imgclf.models"]
    registry.hold_requests(30, at_most=1)
    client = loading_app.test_client()
    answers = {}
    waiting = threading.Thread(target=lambda: answers.update(
        predict=client.post("/predict", data=jpeg(1), content_type="image/jpeg")))
    waiting.start()
    deadline = time.monotonic() + 10
    while not registry.waiting and time.monotonic() < deadline:  # until the request is waiting
        time.sleep(0.01)
    assert registry.state == "loading" and registry.waiting == 1
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 503
    over = client.get("/v1/models/shapes")  # over the bound of waiting requests: 503 at once, Retry-After
    assert over.status_code == 503 and over.headers["Retry-After"] == "1"
    assert "still loading" in over.get_json()["error"]
    assert waiting.is_alive() and "predict" not in answers
    loading_app.release.set()
    waiting.join(60)
    assert answers["predict"].status_code == 200 and answers["predict"].get_json()["predictions"]


def test_a_held_request_waits_only_so_long(loading_app):
    registry = loading_app.extensions["imgclf.models"]
    registry.hold_requests(0.2, at_most=4)
    response = loading_app.test_client().get("/v1/models/shapes")  # loading never ends meanwhile
    assert response.status_code == 503 and registry.state == "loading"


def test_state_listeners_hear_the_state_now_and_when_loading_ends(loading_app):
    heard = []
    registry = loading_app.extensions["imgclf.models"]
    registry.on_state(lambda state, error: heard.append((state, error)))
    loading_app.release.set()
    assert registry.wait(60)
    assert heard == [("loading", ""), ("ready", "")]


@pytest.mark.parametrize("others, status, code, error", [
    ([], "ready", 200, None),
    ([(2, "ready", ""), (3, "held", "")], "ready", 200, None),  # a held replacement takes no connection
    ([(2, "loading", "")], "loading", 503, "1 of 2 workers still loading"),
    ([(2, "ready", ""), (3, "failed", "bad op")], "failed", 503, "worker 4003: bad op"),
])
def test_readyz_under_gunicorn_waits_for_every_worker_that_takes_connections(app, tmp_path, monkeypatch, others,
                                                                               status, code, error):
    from imgclf.service.server import worker_states

    monkeypatch.setenv(worker_states.ENV, str(tmp_path))
    worker_states.record(tmp_path, 1, "ready", pid=4001)  # this worker
    for age, state, message in others:
        worker_states.record(tmp_path, age, state, pid=4000 + age, error=message)
    response = app.test_client().get("/readyz")
    body = response.get_json()
    assert (response.status_code, body["status"], body["models"]) == (code, status, {"shapes": 1})
    assert sum(body["workers"].values()) == 1 + len(others)
    assert body["workers"]["ready"] == 1 + sum(1 for o in others if o[1] == "ready")
    assert body.get("error", "").startswith(error) if error else "error" not in body
    assert (response.headers.get("Retry-After") == "1") == (code == 503)
    v2 = app.test_client().get("/v2/health/ready")  # the Open Inference Protocol's readiness says the same
    assert v2.status_code == code
    assert v2.get_json()["error"].startswith(error) if error else v2.get_json() == {"ready": True}


def test_a_pinned_version_that_does_not_exist_fails_readiness(model_repo):
    app = create_app({"model_repository": model_repo, "model_versions": {"shapes": 9},
                      "load_in_background": False})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and "no version 9" in response.get_json()["error"]


def test_a_default_model_that_is_not_served_fails_readiness(model_repo):
    """IMGCLF_DEFAULT_MODEL naming no model: not ready (saying which models there are), never a 404 per request."""
    from tests.support.images import jpeg

    app = create_app({"model_repository": model_repo, "default_model": "flowers", "load_in_background": False})
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["status"] == "failed"
    error = response.get_json()["error"]
    assert "'flowers'" in error and "IMGCLF_DEFAULT_MODEL" in error and "served models: shapes" in error
    predict = client.post("/predict", data=jpeg(1), content_type="image/jpeg")
    assert predict.status_code == 503 and "'flowers'" in predict.get_json()["error"]


def test_a_default_model_that_is_served_is_the_default(model_repo):
    from tests.support.images import jpeg

    app = create_app({"model_repository": model_repo, "default_model": "shapes", "load_in_background": False})
    try:
        response = app.test_client().post("/predict", data=jpeg(1), content_type="image/jpeg")
        assert response.status_code == 200 and response.get_json()["model"] == "shapes"
    finally:
        app.extensions["imgclf.models"].close()


def test_batcher_gathers_concurrent_requests_and_splits_results():
    sizes = []

    def run(batch):
        time.sleep(0.02)
        return batch.sum(axis=(1, 2)) * 2

    batcher = Batcher(run, max_size=8, max_wait=0.05, on_batch=lambda n, s: sizes.append(n))
    results = {}

    def client(i):
        results[i] = batcher.submit(np.full((1, 2, 2), i, np.float32))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert {i: float(r[0]) for i, r in results.items()} == {i: 8.0 * i for i in range(6)}
    assert max(sizes) > 1 and sum(sizes) == 6  # requests shared model calls


def test_batcher_passes_errors_to_every_waiter_and_keeps_working():
    calls = []

    def run(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return batch

    batcher = Batcher(run, max_size=4, max_wait=0.0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(np.zeros((1, 1)))
    np.testing.assert_array_equal(batcher.submit(np.ones((2, 1))), np.ones((2, 1)))
    batcher.close()


def test_batching_off_calls_the_model_directly():
    batcher = Batcher(lambda b: b + 1, enabled=False)
    np.testing.assert_array_equal(batcher.submit(np.zeros((3, 1))), np.ones((3, 1)))


def test_batcher_does_not_wait_for_requests_that_are_not_in_flight():
    sizes = []
    batcher = Batcher(lambda b: b, max_size=8, max_wait=30.0, on_batch=lambda n, s: sizes.append(n),
                      expected=lambda: 1)
    done = threading.Event()
    threading.Thread(target=lambda: (batcher.submit(np.zeros((1, 1))), done.set()), daemon=True).start()
    assert done.wait(10), "a lone request waited for company that was not coming"
    batcher.close()
    assert sizes == [1]


def test_batcher_waits_for_every_request_in_flight():
    sizes = []
    batcher = Batcher(lambda b: b, max_size=8, max_wait=30.0, on_batch=lambda n, s: sizes.append(n),
                      expected=lambda: 3)
    threads = []
    for i in range(3):  # they arrive spread out, well within max_wait
        threads.append(threading.Thread(target=batcher.submit, args=(np.full((1, 1), i),)))
        threads[-1].start()
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    batcher.close()
    assert sizes == [3]


def test_app_counts_prediction_requests_in_flight_by_model(app):
    """A model's batcher waits for that model's requests only: others (or unknown names) never join it."""
    from imgclf.service.dataplane.extension import current_plane
    from tests.support import images

    client = app.test_client()
    batcher = app.extensions["imgclf.models"].models["shapes"].batcher
    original, gate, seen = batcher.run, threading.Event(), []

    def held(batch):
        seen.append(batcher.expected())
        assert gate.wait(30)
        return original(batch)

    batcher.run = held
    try:
        answers = []
        request = threading.Thread(target=lambda: answers.append(
            client.post("/predict", data=images.jpeg(5), content_type="image/jpeg").status_code))
        request.start()
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [1]  # the default model's request, counted under its name
        other = client.post("/v1/models/elsewhere:predict", json={"instances": [1]})
        assert other.status_code == 404 and batcher.expected() == 1  # another name: not shapes' company
        gate.set()
        request.join(30)
    finally:
        gate.set()
        batcher.run = original
    assert answers == [200] and batcher.expected() == 0
    client.post("/predict?model=shapes", data=b"not an image", content_type="image/jpeg")  # errors leave too
    assert batcher.expected() == 0
    plane = current_plane(app)
    with plane.in_flight.counting("lenet5"):  # a request for another model is in flight...
        assert plane.in_flight.count("lenet5") == 1 and batcher.expected() == 0  # ...shapes' batcher ignores it
    assert plane.in_flight.count("lenet5") == 0
