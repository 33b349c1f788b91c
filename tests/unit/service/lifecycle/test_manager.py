"""The registry's model lifecycle: versions, states, polling, unloading, labels, and workers that agree.

The state logic runs on fake servables (a loader that makes them from version
directories with the two required files); the last tests serve real exported
models through the Flask test client.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imgclf.core import export_names as names
from imgclf.core.errors import ModelNotFound, NotReady
from imgclf.core.model_kind import ModelKind
from imgclf.service import create_app
from imgclf.service.lifecycle.manager import VersionManager
from imgclf.service.lifecycle.versions import SharedDefaults
from imgclf.service.servables.base import Servable
from imgclf.service.server import worker_states
from imgclf.service.settings import ServingSettings
from tests.support.versions import publish_copy


class FakeServable(Servable):
    kind = ModelKind.IMAGE_CLASSIFIER
    closed: list = []

    @classmethod
    def load(cls, path, name, version, context):
        if (path / "broken").exists():
            raise ValueError(f"version {version} is broken")
        return cls(name, version, ["a", "b"], {"version": version})

    def warm_up(self):
        pass

    def make_signatures(self):
        return {}

    def decode_picture(self, data):
        return np.zeros((1, 1, 3), np.uint8), np.zeros(1)

    def decode_instance(self, item, index, signature):
        return np.zeros(1)

    def predict(self, batch, signature=None):
        return {"v": [self.version] * len(batch)}

    def close(self):
        FakeServable.closed.append((self.name, self.version))


def add_version(repo: Path, name: str, version: int, broken: bool = False) -> Path:
    path = repo / name / str(version)
    path.mkdir(parents=True)
    for required in names.REQUIRED_FILES:
        (path / required).write_text("{}")
    if broken:
        (path / "broken").write_text("")
    return path


def registry_for(repo: Path, folder: Path | None = None, pid: int | None = None, **settings) -> VersionManager:
    settings.setdefault("poll_seconds", 0)
    settings.setdefault("precision", "fp32")  # "auto" would be bf16 on AMX, switched on for the whole process
    config = ServingSettings.from_env({}, model_repository=repo, load_in_background=False, **settings)
    registry = VersionManager(config, loader=FakeServable.load, shared=SharedDefaults(folder, pid))
    registry.start()
    return registry


def states(registry: VersionManager, name: str = "m") -> dict[int, str]:
    return {int(s["version"]): s["state"] for s in registry.status(name)}


def test_latest_serves_the_newest_and_swaps_when_a_version_is_published(tmp_path):
    add_version(tmp_path, "m", 1)
    add_version(tmp_path, "m", 2)
    registry = registry_for(tmp_path)
    assert registry.ready and states(registry) == {2: "AVAILABLE"} and registry.get("m").version == 2
    assert registry.status("m") == [{"version": "2", "state": "AVAILABLE",
                                     "status": {"error_code": "OK", "error_message": ""}}]
    add_version(tmp_path, "m", 3)
    registry.sync()
    assert states(registry) == {3: "AVAILABLE", 2: "END"} and registry.get("m").version == 3
    assert registry.default_version("m") == 3 and ("m", 2) in FakeServable.closed
    with pytest.raises(ModelNotFound, match=r"model 'm' version 2 is not served \(it is END\); available versions: 3"):
        registry.get("m", 2)
    shutil.rmtree(tmp_path / "m" / "2")
    registry.sync()
    assert states(registry) == {3: "AVAILABLE"}  # an END version gone from disk is forgotten


def test_latest_n_all_and_specific_serve_several_versions(tmp_path):
    for v in (1, 2, 3):
        add_version(tmp_path, "m", v)
    two = registry_for(tmp_path, version_policy="latest:2")
    assert states(two) == {3: "AVAILABLE", 2: "AVAILABLE"} and two.get("m", 2).version == 2
    assert two.get("m").version == 3 and two.available_versions("m") == [2, 3]
    assert states(registry_for(tmp_path, version_policy="all")) == {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"}
    specific = registry_for(tmp_path, version_policy="specific:1,3")
    assert states(specific) == {1: "AVAILABLE", 3: "AVAILABLE"} and specific.get("m").version == 3
    pinned = registry_for(tmp_path, model_versions={"m": 1})  # IMGCLF_MODEL_VERSIONS: specific for one model
    assert states(pinned) == {1: "AVAILABLE"}
    (tmp_path / "m" / "3").rename(tmp_path / "m" / ".gone")  # the specific policy's newest is removed
    specific.sync()
    assert states(specific) == {1: "AVAILABLE"} and specific.get("m").version == 1


def test_versions_found_wait_in_start_while_the_newest_loads_and_the_old_one_serves(tmp_path):
    add_version(tmp_path, "m", 1)
    registry = registry_for(tmp_path, version_policy="latest:2")
    release = threading.Event()

    def slow_load(path, name, version, context):
        release.wait(10)
        return FakeServable.load(path, name, version, context)

    registry._loader = slow_load
    add_version(tmp_path, "m", 2)
    add_version(tmp_path, "m", 3)
    syncing = threading.Thread(target=registry.sync)
    syncing.start()
    deadline = time.monotonic() + 10
    while states(registry).get(3) != "LOADING" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert states(registry) == {3: "LOADING", 2: "START", 1: "AVAILABLE"}
    assert registry.get("m").version == 1  # requests meanwhile: the serving version, at once
    release.set()
    syncing.join(10)
    assert states(registry) == {3: "AVAILABLE", 2: "AVAILABLE", 1: "END"} and registry.get("m").version == 3


def test_a_version_that_fails_to_load_is_reported_and_never_replaces_the_working_one(tmp_path):
    add_version(tmp_path, "m", 1)
    registry = registry_for(tmp_path)
    add_version(tmp_path, "m", 2, broken=True)
    registry.sync()
    registry.sync()  # not retried: it stays END with its error
    assert registry.status("m") == [
        {"version": "2", "state": "END", "status": {"error_code": "INVALID_ARGUMENT",
                                                    "error_message": "version 2 is broken"}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    assert registry.get("m").version == 1
    add_version(tmp_path, "m", 3)
    registry.sync()
    assert states(registry) == {3: "AVAILABLE", 2: "END", 1: "END"}


def test_a_model_whose_only_version_fails_fails_readiness_saying_why(tmp_path):
    add_version(tmp_path, "m", 1, broken=True)
    registry = registry_for(tmp_path)
    assert registry.state == "failed" and registry.error == "version 1 is broken"
    with pytest.raises(NotReady, match="models failed to load: version 1 is broken"):
        registry.get("m")


def test_an_unloading_version_waits_for_its_requests_in_flight(tmp_path):
    add_version(tmp_path, "m", 1)
    registry = registry_for(tmp_path)
    FakeServable.closed.clear()
    lease = registry.lease("m")
    held = lease.__enter__()  # a request holds version 1
    add_version(tmp_path, "m", 2)
    syncing = threading.Thread(target=registry.sync)
    syncing.start()
    deadline = time.monotonic() + 10
    while states(registry).get(1) != "UNLOADING" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert states(registry) == {2: "AVAILABLE", 1: "UNLOADING"} and registry.get("m").version == 2
    time.sleep(0.2)
    assert syncing.is_alive() and ("m", 1) not in FakeServable.closed  # still held: not closed
    assert held.predict(np.zeros((1, 1)))["v"] == [1]  # the held version still answers
    lease.__exit__(None, None, None)  # the request ends
    syncing.join(10)
    assert not syncing.is_alive() and states(registry) == {2: "AVAILABLE", 1: "END"}


def test_workers_switch_only_once_every_ready_worker_has_the_new_version(tmp_path):
    repo, folder = tmp_path / "repo", tmp_path / "workers"
    folder.mkdir()
    add_version(repo, "m", 1)
    for age, pid in ((1, 101), (2, 102)):
        worker_states.record(folder, age, worker_states.READY, pid=pid)
    a, b = registry_for(repo, folder, pid=101), registry_for(repo, folder, pid=102)
    assert a.get("m").version == b.get("m").version == 1
    add_version(repo, "m", 2)
    a.sync()  # a has 2 loaded, b has not: both keep serving 1
    assert states(a) == {2: "AVAILABLE", 1: "AVAILABLE"} and a.pending
    assert a.get("m").version == 1 and b.get("m").version == 1
    b.sync()  # now every ready worker has 2: b records it as the default, and a serves it at once
    assert b.get("m").version == 2 and a.get("m").version == 2
    assert json.loads((folder / "default-m.json").read_text()) == {"version": 2}
    assert states(b) == {2: "AVAILABLE", 1: "END"}
    a.sync()
    assert states(a) == {2: "AVAILABLE", 1: "END"} and not a.pending
    published = json.loads((folder / "versions-101.json").read_text())
    assert published["models"]["m"] == {"available": [2], "default": 2, "states": {"1": "END", "2": "AVAILABLE"}}
    worker_states.record(folder, 3, worker_states.LOADING, pid=103)  # a worker still loading does not count
    add_version(repo, "m", 3)
    a.sync()
    b.sync()
    assert a.get("m").version == b.get("m").version == 3
    a.close()
    assert not (folder / "versions-101.json").exists()


def test_the_poller_loads_new_versions_by_itself(tmp_path):
    add_version(tmp_path, "m", 1)
    registry = registry_for(tmp_path, poll_seconds=0.05)
    add_version(tmp_path, "m", 2)
    deadline = time.monotonic() + 10
    while states(registry) != {2: "AVAILABLE", 1: "END"} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert states(registry) == {2: "AVAILABLE", 1: "END"}
    add_version(tmp_path, "n", 1)  # a new model in the repository is served too
    deadline = time.monotonic() + 10
    while "n" not in registry.models and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(registry.models) == ["m", "n"]
    shutil.rmtree(tmp_path / "n")  # a model removed from the repository is unloaded and forgotten
    deadline = time.monotonic() + 10
    while "n" in registry.versions and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(registry.models) == ["m"]
    registry.close()
    assert not registry._poller._thread.is_alive()


def test_labels_from_a_config_file(tmp_path):
    repo = tmp_path / "repo"
    for v in (1, 2, 3):
        add_version(repo, "m", v)
    add_version(tmp_path / "elsewhere", "x", 5)
    add_version(repo, "unlisted", 1)
    config = tmp_path / "serving.conf"
    config.write_text(f"""model_config_list {{
      config {{ name: "m" model_version_policy {{ specific {{ versions: 1 versions: 2 versions: 4 }} }}
                version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }}
                version_labels {{ key: "next" value: 4 }} }}
      config {{ name: "x" base_path: "{tmp_path / 'elsewhere' / 'x'}" }}
    }}""")
    registry = registry_for(repo, model_config_file=str(config))
    assert sorted(registry.versions) == ["m", "x"]  # only the listed models
    assert states(registry) == {1: "AVAILABLE", 2: "AVAILABLE"} and states(registry, "x") == {5: "AVAILABLE"}
    assert registry.get_label("m", "stable").version == 1 and registry.get_label("m", "canary").version == 2
    with pytest.raises(ModelNotFound, match="Unrecognized servable version label: 'beta' of model 'm'; its labels: "
                                            "canary, next, stable"):
        registry.get_label("m", "beta")
    with pytest.raises(ModelNotFound, match="label 'next' of model 'm' points at version 4, which is not available"):
        registry.get_label("m", "next")
    add_version(repo, "m", 4)
    registry.sync()
    assert registry.get_label("m", "next").version == 4 and registry.get("m").version == 4


# --- recovery (issue 27, finding 5), sizes (finding 6), readiness with a model gone (finding 7) -----------------


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def manager_for(repo: Path, **settings) -> VersionManager:
    """A manager as registry_for makes, but not started, with a short first backoff."""
    settings.setdefault("poll_seconds", 0)
    config = ServingSettings.from_env({}, model_repository=repo, load_in_background=False, precision="fp32",
                                      **settings)
    manager = VersionManager(config, loader=FakeServable.load, shared=SharedDefaults(None))
    manager.retry_first_s = 0.01
    return manager


def test_a_worker_whose_start_failed_keeps_trying_and_becomes_ready_by_itself(tmp_path):
    repo = tmp_path / "repo"
    add_version(repo, "m", 1)
    repo.rename(tmp_path / "away")  # the repository is out while the worker starts
    manager = manager_for(repo, poll_seconds=0.05, model_versions={"m": 1})
    seen = []
    manager.on_state(lambda state, error: seen.append(str(state)))
    manager.start()
    try:
        assert manager.state == "failed" and "pinned model(s) m not in" in manager.error
        assert wait_for(lambda: manager.start_failures >= 3)  # tried again and again, with its backoff
        (tmp_path / "away").rename(repo)  # readable again: no SIGHUP, no restart
        assert wait_for(lambda: manager.ready)
        assert manager.get("m").version == 1 and manager.start_failures == 0 and manager.error == ""
        assert seen[0] == "loading" and seen[-1] == "ready" and "failed" in seen
    finally:
        manager.close()


def test_the_backoff_of_a_failed_start_doubles_up_to_the_poll_interval(tmp_path):
    manager = manager_for(tmp_path, poll_seconds=0.3, model_versions={"m": 1})
    assert manager.retry_wait() is None  # not started: nothing to try again
    manager.start()
    manager._poller.stop()  # this test polls by itself
    manager.start_failures = 1
    waits = []
    for _ in range(7):
        waits.append(manager.retry_wait())
        manager.poll()
    assert waits == [0.01, 0.02, 0.04, 0.08, 0.16, 0.3, 0.3]
    add_version(tmp_path, "m", 1)
    manager.poll()
    assert manager.ready and manager.retry_wait() is None
    manager.close()


def test_an_empty_repository_is_looked_at_again_on_the_same_backoff(tmp_path):
    manager = manager_for(tmp_path, poll_seconds=0.3)
    manager.start()
    manager._poller.stop()  # this test polls by itself (the poller may have looked a few times already)
    manager.empty_polls = 0
    assert manager.ready and manager.models == {}  # nothing to serve: ready, and looking again soon
    waits = []
    for _ in range(3):
        waits.append(manager.retry_wait())
        manager.poll()
    assert waits == [0.01, 0.02, 0.04]
    add_version(tmp_path, "m", 1)
    manager.poll()
    assert sorted(manager.models) == ["m"] and manager.retry_wait() is None
    manager.close()


def test_a_failed_version_is_tried_again_when_its_files_change_with_backoff(tmp_path):
    add_version(tmp_path, "m", 1)
    broken = add_version(tmp_path, "m", 2, broken=True)
    manager = manager_for(tmp_path, version_policy="latest:2")
    manager.retry_first_s = 0.3
    loads = []
    manager._loader = lambda path, name, version, context: loads.append(version) or FakeServable.load(
        path, name, version, context)
    manager.start()
    assert states(manager) == {2: "END", 1: "AVAILABLE"} and loads == [2, 1]
    manager.sync()
    assert loads == [2, 1]  # unchanged files: not tried again
    (broken / "broken").write_text("still")  # changed, but within the backoff
    manager.sync()
    assert loads == [2, 1]
    time.sleep(0.35)
    manager.sync()  # changed and the backoff is over: tried, fails again; the next backoff is twice as long
    assert loads == [2, 1, 2] and manager.versions["m"][2].failures == 2
    assert manager.versions["m"][2].retry_at - time.monotonic() > 0.45
    (broken / "broken").unlink()  # fixed on disk
    time.sleep(0.65)
    manager.sync()
    assert loads == [2, 1, 2, 2] and states(manager) == {2: "AVAILABLE", 1: "AVAILABLE"}
    assert manager.get("m").version == 2
    assert manager.status("m", 2)[0]["status"] == {"error_code": "OK", "error_message": ""}


def test_a_version_over_the_size_limit_fails_before_any_file_is_read(tmp_path):
    add_version(tmp_path, "m", 1)
    version = add_version(tmp_path, "m", 2)
    with open(version / names.SAVED_MODEL_FILE, "wb") as sparse:  # 2 GB that take no disk and must not be read
        sparse.truncate(2 * 1024 ** 3)
    loads = []
    manager = manager_for(tmp_path, version_policy="latest:2")
    manager._loader = lambda path, name, version, context: loads.append(version) or FakeServable.load(
        path, name, version, context)
    manager.start()
    (status,) = manager.status("m", 2)
    assert status["state"] == "END" and status["status"]["error_code"] == "INVALID_ARGUMENT"
    assert "saved_model.pb: 2,147,483,648" in status["status"]["error_message"]
    assert "at most 1,073,741,824 are loaded (IMGCLF_MAX_MODEL_BYTES)" in status["status"]["error_message"]
    assert loads == [1] and manager.get("m").version == 1  # version 2 never reached the loader
    card = manager_for(tmp_path, max_model_card_bytes=1)  # "{}" is 2 bytes
    card.start()
    assert card.state == "failed" and "model_card.json" in card.error and "IMGCLF_MAX_MODEL_CARD_BYTES" in card.error


def test_a_served_model_with_no_version_left_stays_known_and_makes_the_worker_unavailable(tmp_path):
    add_version(tmp_path, "m", 1)
    add_version(tmp_path, "n", 1)
    manager = manager_for(tmp_path)
    manager.start()
    assert manager.readiness() == ("ready", "")
    shutil.rmtree(tmp_path / "m" / "1")  # the served version's folder is deleted; the model's folder stays
    manager.sync()
    assert manager.status("m") == [{"version": "1", "state": "END",
                                    "status": {"error_code": "OK", "error_message": ""}}]  # TF Serving's END
    assert manager.readiness() == ("unavailable", "model 'm' has no available version (versions: 1 END)")
    with pytest.raises(ModelNotFound, match="model 'm' has no available version"):
        manager.get("m")
    assert manager.get("n").version == 1  # the other model still answers
    add_version(tmp_path, "m", 2)
    manager.sync()
    assert states(manager) == {2: "AVAILABLE"} and manager.readiness() == ("ready", "")  # the stale END goes
    shutil.rmtree(tmp_path / "m" / "2")
    manager.sync()
    assert manager.readiness()[0] == "unavailable"
    shutil.rmtree(tmp_path / "m")  # the model itself is removed: forgotten, and no longer counted
    manager.sync()
    assert "m" not in manager.versions and manager.readiness() == ("ready", "")
    add_version(tmp_path, "o", 1, broken=True)  # a model never served does not count: its status says why
    manager.sync()
    assert states(manager, "o") == {1: "END"} and manager.readiness() == ("ready", "")


# --- real exported models, through the routes -------------------------------------------------------------------


@pytest.fixture
def two_versions(model_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "shapes" / "1", repo / "shapes" / "1")
    publish_copy(repo, repo / "shapes" / "1")
    return repo


def test_real_versions_labels_and_routes(two_versions, tmp_path, model_repo):
    config = tmp_path / "serving.conf"
    config.write_text('model_config_list { config { name: "shapes" model_version_policy { all {} } '
                      'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } '
                      'version_labels { key: "later" value: 3 } } }')
    app = create_app({"model_repository": two_versions, "load_in_background": False, "poll_seconds": 0,
                      "model_config_file": str(config)})
    client = app.test_client()
    try:
        status = client.get("/v1/models/shapes").get_json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
        assert client.get("/v1/models/shapes/versions/1").get_json()["model_version_status"][0]["version"] == "1"
        assert client.get("/v1/models/shapes/labels/canary").get_json()["model_version_status"] == [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
        assert client.get("/v1/models/shapes/labels/stable/metadata").get_json()["model_spec"]["version"] == "1"
        image = sorted((model_repo.parent / "images").glob("*/*.jpg"))[0].read_bytes()
        import base64

        body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
        by_label = client.post("/v1/models/shapes/labels/stable:predict", json=body)
        by_version = client.post("/v1/models/shapes/versions/1:predict", json=body)
        assert by_label.status_code == by_version.status_code == 200
        assert by_label.get_json() == by_version.get_json()  # the same version answers, the same numbers
        unknown = client.get("/v1/models/shapes/labels/beta")
        assert unknown.status_code == 404
        assert unknown.get_json() == {"error": "Unrecognized servable version label: 'beta' of model 'shapes'; "
                                               "its labels: canary, later, stable"}
        later = client.post("/v1/models/shapes/labels/later:predict", json=body)
        assert later.status_code == 404 and "points at version 3, which is not available" in later.get_json()["error"]
        assert client.get("/v1/models/shapes/labels/later").status_code == 404
        assert client.get("/v1/models/nope/labels/stable").status_code == 404
        listed = client.get("/v1/models").get_json()["models"]
        assert [(m["name"], m["version"], m["versions"]) for m in listed] == [("shapes", 2, [1, 2])]
    finally:
        app.extensions["imgclf.models"].close()


def test_a_real_version_published_while_serving_is_swapped_in_and_the_old_one_freed(two_versions):
    import gc
    import weakref

    shutil.rmtree(two_versions / "shapes" / "2")
    app = create_app({"model_repository": two_versions, "load_in_background": False, "poll_seconds": 0})
    client = app.test_client()
    registry = app.extensions["imgclf.models"]
    try:
        old = weakref.ref(registry.versions["shapes"][1].servable)
        assert publish_copy(two_versions, two_versions / "shapes" / "1").name == "2"
        registry.sync()
        status = client.get("/v1/models/shapes").get_json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "END")]
        assert client.get("/v1/models/shapes/metadata").get_json()["model_spec"]["version"] == "2"
        gc.collect()
        assert old() is None  # nothing keeps the unloaded version alive
    finally:
        registry.close()


def test_a_real_version_that_fails_to_load_is_reported_and_the_working_one_keeps_serving(two_versions):
    broken_dir = two_versions / "shapes" / "2"
    broken_dir.rename(two_versions / "shapes" / ".later")
    app = create_app({"model_repository": two_versions, "load_in_background": False, "poll_seconds": 0})
    client = app.test_client()
    try:
        (two_versions / "shapes" / ".later" / names.SAVED_MODEL_FILE).write_bytes(b"not a SavedModel")
        (two_versions / "shapes" / ".later").rename(broken_dir)  # published while version 1 serves
        app.extensions["imgclf.models"].sync()
        assert client.get("/readyz").status_code == 200
        (broken, working) = client.get("/v1/models/shapes").get_json()["model_version_status"]
        assert (broken["version"], broken["state"], broken["status"]["error_code"]) == ("2", "END", "INVALID_ARGUMENT")
        assert "cannot be read as one" in broken["status"]["error_message"]
        assert "'<model repository>/shapes/2'" in broken["status"]["error_message"]  # no server path (issue 27)
        assert str(two_versions) not in client.get("/v1/models/shapes").get_data(as_text=True)
        assert (working["version"], working["state"]) == ("1", "AVAILABLE")
        assert client.get("/v1/models/shapes/versions/2").get_json()["model_version_status"] == [broken]
        assert client.get("/v1/models/shapes/metadata").get_json()["model_spec"]["version"] == "1"
        failed = client.get("/v1/models/shapes/versions/2/metadata")
        assert failed.status_code == 404 and "version 2 is not served (it is END)" in failed.get_json()["error"]
    finally:
        app.extensions["imgclf.models"].close()


def test_v2_model_metadata_lists_every_served_version(two_versions):
    app = create_app({"model_repository": two_versions, "load_in_background": False, "poll_seconds": 0,
                      "version_policy": "all"})
    client = app.test_client()
    try:
        assert client.get("/v2/models/shapes").get_json()["versions"] == ["1", "2"]
        assert client.get("/v2/models/shapes/versions/1").get_json()["versions"] == ["1"]
        assert client.get("/v2/models/shapes/versions/1/ready").get_json() == {"name": "shapes", "ready": True}
    finally:
        app.extensions["imgclf.models"].close()


def test_readyz_says_unavailable_while_a_served_model_has_no_version_left(two_versions):
    app = create_app({"model_repository": two_versions, "load_in_background": False, "poll_seconds": 0})
    client = app.test_client()
    try:
        assert client.get("/readyz").get_json()["models"] == {"shapes": 2}
        shutil.rmtree(two_versions / "shapes" / "2")
        shutil.rmtree(two_versions / "shapes" / "1")  # every version of the served model is deleted
        app.extensions["imgclf.models"].sync()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "1"
        assert ready.get_json() == {"status": "unavailable", "models": {}, "precision": ready.get_json()["precision"],
                                    "error": "model 'shapes' has no available version (versions: 2 END)"}
        assert client.get("/v2/health/ready").status_code == 503
        assert [s["state"] for s in client.get("/v1/models/shapes").get_json()["model_version_status"]] == ["END"]
        assert client.post("/v1/models/shapes:predict", json={"instances": [[0.0] * 2048]}).status_code == 404
    finally:
        app.extensions["imgclf.models"].close()
