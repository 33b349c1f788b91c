"""A version's states and status, and the defaults the workers of one server agree on."""

import json
import os

import pytest

from imgclf.core.errors import GraphError, ModelNotFound, UnsafeGraph
from imgclf.service.lifecycle.versions import END, LOADING, ServedVersion, SharedDefaults, agreed, error_code
from imgclf.service.server import worker_states


@pytest.mark.parametrize("exc, code", [
    (ModelNotFound("x"), "NOT_FOUND"), (UnsafeGraph("x"), "FAILED_PRECONDITION"), (GraphError("x"), "INVALID_ARGUMENT"),
    (ValueError("x"), "INVALID_ARGUMENT"), (MemoryError(), "RESOURCE_EXHAUSTED"), (RuntimeError("x"), "UNKNOWN"),
])
def test_error_codes(exc, code):
    assert error_code(exc) == code


def test_a_failed_version_reports_state_end_with_its_error():
    entry = ServedVersion("m", 3, state=LOADING)
    assert entry.status() == {"version": "3", "state": "LOADING", "status": {"error_code": "OK", "error_message": ""}}
    entry.fail(RuntimeError("disk on fire"))
    assert entry.failed and not entry.available and entry.state == END
    assert entry.status()["status"] == {"error_code": "UNKNOWN", "error_message": "RuntimeError: disk on fire"}


def test_defaults_in_memory_without_a_server():
    shared = SharedDefaults(None)
    assert shared.default("m") is None and shared.peers() == []
    shared.commit("m", 2)
    assert shared.default("m") == 2
    shared.commit("m", None)
    assert shared.default("m") is None


def test_defaults_in_the_server_folder_are_seen_by_every_worker(tmp_path):
    a, b = SharedDefaults(tmp_path, pid=1), SharedDefaults(tmp_path, pid=2)
    a.commit("m", 3)
    assert b.default("m") == 3
    b.commit("m", 4)
    assert a.default("m") == 4  # the cached value is re-read once the file changed
    path = tmp_path / "default-m.json"
    path.write_text("{not json")
    os.utime(path, ns=(1, 1))
    assert a.default("m") == 4  # a damaged record keeps the last good one


def test_peers_are_the_other_ready_workers(tmp_path):
    for age, pid, state in ((1, 11, "ready"), (2, 12, "ready"), (3, 13, "loading"), (4, 14, "ready")):
        worker_states.record(tmp_path, age, state, pid=pid)
        SharedDefaults(tmp_path, pid).publish({"m": {"available": [pid - 10]}})
    (tmp_path / "versions-14.json").unlink()  # ready, but not published yet
    assert SharedDefaults(tmp_path, 11).peers() == [{"m": {"available": [2]}}, {}]
    assert json.loads((tmp_path / "versions-13.json").read_text())["pid"] == 13


@pytest.mark.parametrize("candidates, peers, expected", [
    ({1, 2}, [], 2),
    ({1, 2}, [{"m": {"available": [1, 2]}}], 2),
    ({1, 2}, [{"m": {"available": [1]}}], 1),
    ({2}, [{"m": {"available": [1]}}], None),
    ({1, 2}, [{"m": {"available": [1, 2]}}, {}], None),  # a peer that has nothing of it yet
    ({1, 2}, [{"m": "garbage"}], None),
])
def test_agreed(candidates, peers, expected):
    assert agreed("m", candidates, peers) == expected
