"""The workers' state folder, and the gunicorn hooks that keep it (with stand-ins for gunicorn's objects)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from imgclf.service.server import gunicorn_conf, worker_states


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(worker_states.ENV, str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("age, workers, held", [
    (1, 2, False), (2, 2, False),  # the first start
    (3, 2, True), (7, 4, True),  # replacements, a reload's new workers, one more after TTIN
    (1, 1, False), (5, 1, False),  # a lone worker: nobody else answers meanwhile
])
def test_only_later_workers_of_a_server_with_several_are_held_back(age, workers, held):
    assert worker_states.held_back(age, workers) is held


def test_states_are_recorded_read_back_and_forgotten(tmp_path):
    worker_states.record(tmp_path, 2, "loading")
    worker_states.record(tmp_path, 1, "ready", pid=11)
    worker_states.record(tmp_path, 3, "held", pid=13)
    worker_states.record(tmp_path, 2, "failed", pid=12, error="bad op")  # replaces the earlier state
    states = worker_states.read_all(tmp_path)
    assert states == [worker_states.WorkerEntry(1, 11, "ready"), worker_states.WorkerEntry(2, 12, "failed", "bad op"),
                      worker_states.WorkerEntry(3, 13, "held")]
    assert worker_states.unready(states) == [states[1]]
    assert worker_states.counts(states) == {"loading": 0, "held": 1, "ready": 1, "failed": 1}
    worker_states.forget(tmp_path, 2)
    worker_states.forget(tmp_path, 2)  # twice: the second finds nothing, which is fine
    assert [s.age for s in worker_states.read_all(tmp_path)] == [1, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-1.json", "worker-3.json"]  # no temp files left


def test_an_unreadable_state_file_counts_as_a_worker_that_cannot_answer(tmp_path):
    (tmp_path / "worker-4.json").write_text("{not json")
    (state,) = worker_states.read_all(tmp_path)
    assert state.state == "failed" and "worker-4.json" in state.error
    assert worker_states.unready([state]) == [state]


def test_a_ready_worker_whose_heartbeat_is_late_makes_readiness_stalled(tmp_path):
    worker_states.record(tmp_path, 1, "ready", pid=os.getpid())  # the worker answering /readyz
    worker_states.record(tmp_path, 2, "ready", pid=4242)
    worker_states.record(tmp_path, 3, "held", pid=4343)
    assert worker_states.server_readiness("ready", folder=tmp_path).status == "ready"
    late = time.time() - worker_states.STALE_S - 5
    for age in (1, 2, 3):  # SIGSTOP: no thread of theirs runs, no file is touched
        os.utime(tmp_path / f"worker-{age}.json", (late, late))
    readiness = worker_states.server_readiness("ready", folder=tmp_path)
    assert readiness.status == "stalled" and not readiness.ready  # 4242; not the answering one, nor a held one
    assert readiness.error.startswith("worker 4242 has not beaten for 15 s") and "4343" not in readiness.error
    assert [s.pid for s in worker_states.unready(worker_states.read_all(tmp_path))] == [os.getpid(), 4242]
    assert worker_states.beat(tmp_path, 2)  # it beats again (SIGCONT)
    assert worker_states.server_readiness("ready", folder=tmp_path).ready
    assert not worker_states.beat(tmp_path, 9)  # no such worker: nothing to touch


def test_the_heartbeat_thread_touches_the_file_until_it_is_gone(tmp_path):
    worker_states.record(tmp_path, 1, "ready", pid=11)
    path = tmp_path / "worker-1.json"
    os.utime(path, (1, 1))
    stop = worker_states.start_heartbeat(tmp_path, 1, seconds=0.02)
    deadline = time.monotonic() + 10
    while os.stat(path).st_mtime < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert time.time() - os.stat(path).st_mtime < 5
    stop.set()
    worker_states.forget(tmp_path, 1)
    assert not path.exists()
    time.sleep(0.1)
    assert not path.exists()  # never written again: a beat only touches


def test_an_unknown_state_is_refused(tmp_path):
    with pytest.raises(ValueError, match="received 'busy'"):
        worker_states.record(tmp_path, 1, "busy")


def test_the_master_makes_a_fresh_folder_and_removes_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(worker_states.tempfile, "tempdir", None)  # read TMPDIR again
    monkeypatch.setenv(worker_states.ENV, "")  # recorded: the teardown restores what was there (make_folder sets it)
    made = worker_states.make_folder()
    assert made.parent == tmp_path and worker_states.server_folder() == made and not any(made.iterdir())
    worker_states.remove_folder(made)
    assert not made.exists()
    monkeypatch.delenv(worker_states.ENV)
    assert worker_states.server_folder() is None


class FakeRegistry:
    """A registry whose loading ends (ready, or ``final``) at its ``ready_after``-th wait."""

    def __init__(self, ready_after: int, final: str = "ready"):
        self.state, self.error, self.waits, self.hold, self.listeners = "loading", "", 0, None, []
        self._ready_after, self._final = ready_after, final

    def wait(self, timeout=None):
        self.waits += 1
        if self.waits >= self._ready_after:
            self.state = self._final
            for listener in self.listeners:
                listener(self.state, "")
        return self.state == "ready"

    def on_state(self, listener):
        self.listeners.append(listener)
        listener(self.state, self.error)

    def hold_requests(self, seconds, at_most):
        self.hold = (seconds, at_most)


class FakeWorker:
    def __init__(self, age: int, registry: FakeRegistry, workers: int = 2, threads: int = 4):
        self.age, self.pid, self.alive, self.notified = age, 1000 + age, True, 0
        self.cfg = SimpleNamespace(workers=workers, threads=threads)
        self.wsgi = SimpleNamespace(extensions={"imgclf.models": registry})
        self.log = SimpleNamespace(info=lambda *args: None)
        self.registry = registry

    def notify(self):
        self.notified += 1


def state_of(folder, age: int) -> str:
    return {s.age: s.state for s in worker_states.read_all(folder)}.get(age, "absent")


def test_a_first_start_worker_accepts_at_once_holds_model_requests_and_records_its_state(folder, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))  # child_exit drops the worker's gauges there
    worker = FakeWorker(age=2, registry=FakeRegistry(ready_after=1), threads=4)
    gunicorn_conf.pre_fork(None, worker)
    assert state_of(folder, 2) == "loading"  # counted before it runs: the others' /readyz waits for it
    gunicorn_conf.post_worker_init(worker)
    assert worker.registry.waits == 0 and worker.notified == 0  # accepts at once: /healthz answers
    os.utime(folder / "worker-2.json", (1, 1))
    deadline = time.monotonic() + 10  # its heartbeat thread touches the file within a second
    while os.stat(folder / "worker-2.json").st_mtime < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.stat(folder / "worker-2.json").st_mtime > 2
    assert worker.registry.hold == (gunicorn_conf.REQUEST_WAIT_S, 3)  # one thread stays free for the probes
    assert state_of(folder, 2) == "loading"
    worker.registry.wait()  # loading ends
    assert state_of(folder, 2) == "ready"
    gunicorn_conf.child_exit(None, worker)
    assert state_of(folder, 2) == "absent"


def test_a_replacement_waits_for_its_models_with_its_heartbeat_on(folder):
    replacement = FakeWorker(age=3, registry=FakeRegistry(ready_after=3))
    gunicorn_conf.pre_fork(None, replacement)
    assert state_of(folder, 3) == "held"  # takes no connection while it loads: /readyz does not wait for it
    gunicorn_conf.post_worker_init(replacement)
    assert replacement.registry.state == "ready" and replacement.notified == 3
    assert replacement.registry.hold is None and state_of(folder, 3) == "ready"


def test_a_replacement_whose_loading_failed_accepts_to_say_why(folder):
    failed = FakeWorker(age=5, registry=FakeRegistry(ready_after=1, final="failed"))
    gunicorn_conf.pre_fork(None, failed)
    gunicorn_conf.post_worker_init(failed)
    assert failed.notified == 1 and state_of(folder, 5) == "failed"  # the others' /readyz now says 503


def test_a_lone_worker_accepts_at_once_and_answers_503_while_it_loads(folder):
    for age in (1, 2):  # its first start and its replacement alike
        alone = FakeWorker(age=age, registry=FakeRegistry(ready_after=3), workers=1)
        gunicorn_conf.pre_fork(None, alone)
        gunicorn_conf.post_worker_init(alone)
        assert alone.registry.waits == 0 and alone.notified == 0 and alone.registry.hold is None
        assert state_of(folder, age) == "loading"


def test_a_worker_of_another_app_is_not_waited_for(folder):
    other = FakeWorker(age=1, registry=FakeRegistry(ready_after=1))
    other.wsgi = SimpleNamespace()
    gunicorn_conf.pre_fork(None, other)
    gunicorn_conf.post_worker_init(other)
    assert worker_states.read_all(folder) == []
