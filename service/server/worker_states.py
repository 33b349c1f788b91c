"""What every worker of one gunicorn server can answer: a small state file per worker in one folder.

gunicorn hands each new connection to whichever worker accepts it first (behind the
front, the front hands each request to the worker with the most free threads), so a
``/readyz`` that reports only the worker that answered it says little: at the
first start one worker may have loaded its models while another, still
loading, takes the next request and answers 503. Instead, the master makes a
fresh folder per server (:func:`make_folder`, its path in ``IMGCLF_WORKER_STATE_DIR``
for the workers) and every worker has one file there, named after its gunicorn
age (unique for the server's life, and known to the master before the fork):

    loading  takes connections, models not loaded yet (a worker of the first start)
    held     loading, but takes no connection before its models are loaded (a replacement)
    ready    models loaded and warmed up
    failed   loading failed; the worker takes connections and says why

The master writes the first state before it forks the worker (so a worker that
is not running yet is already counted), the worker writes each change, and the
master removes the file when it reaps the worker. ``/readyz`` is 200 only when
no worker that takes connections is ``loading`` or ``failed`` (:func:`unready`):
after it said 200, every worker that can take a request has its models. A held
worker does not count: the kernel gives it no connection until it is ready.

Heartbeat: a worker touches its file every :data:`HEARTBEAT_S` from a thread of
its own (:func:`start_heartbeat`); a ready worker whose file is older than
:data:`STALE_S` has stopped (SIGSTOP) or hangs with the interpreter blocked, and
counts as unable to answer (``/readyz`` 503, status ``stalled``) until it beats
again or gunicorn's timeout (``IMGCLF_TIMEOUT``) replaces it.

Why files and not the master holding the listening socket back: the master
stays a plain gunicorn master (no TensorFlow, no Flask, no extra thread), a
worker of the first start still answers ``/healthz`` while it loads, and the
folder works the same for replacements and reloads. Standard library only: the
master imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from imgclf.core.atomic import write_json_atomic

ENV = "IMGCLF_WORKER_STATE_DIR"  # set by the gunicorn master for its workers; unset: no server (a test client)
HEARTBEAT_S = 1.0  # a worker touches its state file this often
STALE_S = 10.0  # a ready worker whose file is older than this is counted as not answering (a GIL-bound step is
# far shorter; gunicorn's own heartbeat is the same idea, for the master)
STALLED = "stalled"  # the readiness status while a ready worker's heartbeat is late



class State(StrEnum):
    """A worker's state: the one vocabulary of the state files, the gunicorn hooks, the version manager and /readyz.

    A ``StrEnum``: it is written to the files and JSON answers as its plain value ("loading", ...).
    """

    LOADING = "loading"  # takes connections, models not loaded yet (a worker of the first start)
    HELD = "held"  # loading, but takes no connection before its models are loaded (a replacement)
    READY = "ready"  # models loaded and warmed up
    FAILED = "failed"  # loading failed; the worker takes connections and says why


LOADING, HELD, READY, FAILED = State.LOADING, State.HELD, State.READY, State.FAILED
STATES = tuple(State)


@dataclass(frozen=True)
class WorkerEntry:
    """One worker's entry: its gunicorn age, its pid (0 before the fork), its state and error."""

    age: int
    pid: int
    state: State | str  # a State, or what an unknown writer left (counted as unable to answer)
    error: str = ""
    beat: float = field(default=0.0, compare=False)  # the file's modification time: its last heartbeat

    def stalled(self, now: float | None = None) -> bool:
        """Return whether this is a running, ready worker whose heartbeat is older than :data:`STALE_S`."""
        return (self.state == READY and self.pid > 0 and bool(self.beat)
                and (time.time() if now is None else now) - self.beat > STALE_S)


def held_back(age: int, workers: int) -> bool:
    """Return whether the worker of gunicorn age ``age`` takes connections only once its models are loaded.

    Workers 1..N of the first start have ages 1..N; a later one replaces a worker that died, or is one of a
    reload's new workers, or one more after TTIN: the others answer while it loads. A lone server has nobody
    else to answer, so its workers take connections at once.
    """
    return workers >= 2 and age > workers


def make_folder() -> Path:
    """Make a fresh, empty folder for one server's workers and export it to them (master, before the fork)."""
    folder = Path(tempfile.mkdtemp(prefix="imgclf-workers-"))
    os.environ[ENV] = str(folder)
    return folder


def server_folder() -> Path | None:
    """Return this server's folder (None outside gunicorn, e.g. under the Flask test client)."""
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def remove_folder(folder: Path | None) -> None:
    """Remove the folder (master, on exit)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _path(folder: Path, age: int) -> Path:
    return folder / f"worker-{age}.json"


def record(folder: Path, age: int, state: State, pid: int = 0, error: str = "") -> None:
    """Write the state of the worker of age ``age`` (atomically: a reader sees the old state or the new one)."""
    if state not in STATES:
        raise ValueError(f"worker state must be one of {', '.join(STATES)}; received {state!r}")
    write_json_atomic(_path(folder, age), {"age": age, "pid": pid, "state": state, "error": error})


def forget(folder: Path, age: int) -> None:
    """Remove the entry of a worker that exited (master, when it reaps the worker)."""
    try:
        _path(folder, age).unlink()
    except FileNotFoundError:
        pass


def beat(folder: Path, age: int) -> bool:
    """Touch the state file of the worker of age ``age`` (its heartbeat); return whether it is there."""
    try:
        os.utime(_path(folder, age))
    except OSError:  # reaped, or the folder is gone: nothing to keep alive
        return False
    return True


def start_heartbeat(folder: Path, age: int, seconds: float = HEARTBEAT_S) -> threading.Event:
    """Beat every ``seconds`` from a daemon thread (a worker, after its fork) until the returned event is set or
    the file is gone (the master reaped the worker, or removed the folder)."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(seconds) and beat(folder, age):
            pass

    threading.Thread(target=run, name="worker-heartbeat", daemon=True).start()
    return stop


def read_all(folder: Path) -> list[WorkerEntry]:
    """Return the entries of every worker the master has not reaped yet, oldest first."""
    states = []
    for path in folder.glob("worker-*.json"):
        try:
            beat_at = os.stat(path).st_mtime
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:  # reaped meanwhile
            continue
        except (OSError, ValueError) as exc:  # not ours, or damaged: count it as a worker that cannot answer
            beat_at = 0.0
            data = {"age": 0, "pid": 0, "state": FAILED, "error": f"unreadable state file {path.name}: {exc}"}
        state = str(data.get("state"))
        states.append(WorkerEntry(int(data.get("age", 0)), int(data.get("pid", 0)),
                                  State(state) if state in STATES else state, str(data.get("error", "")), beat_at))
    return sorted(states, key=lambda s: s.age)


def unready(states: list[WorkerEntry], now: float | None = None) -> list[WorkerEntry]:
    """Return the workers that take connections but cannot answer a model request (loading, failed, stalled)."""
    now = time.time() if now is None else now
    return [s for s in states if s.state not in (READY, HELD) or s.stalled(now)]


def counts(states: list[WorkerEntry]) -> dict[str, int]:
    """Return how many workers are in each state, every state named."""
    return {state: sum(1 for s in states if s.state == state) for state in STATES}


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` reports: the server's state, why it is not ready, and the workers per state."""

    status: str  # ready | loading | failed | unavailable (a served model has no version) | stalled
    error: str = ""
    workers: dict[str, int] | None = None  # None outside gunicorn

    @property
    def ready(self) -> bool:
        """Return whether every worker that takes connections can answer."""
        return self.status == READY


def server_readiness(own_state: str, own_error: str = "", folder: Path | None = None) -> Readiness:
    """Return the readiness of the server: this worker's own state first, then every other worker's.

    ``folder`` defaults to :func:`server_folder`; without one (no gunicorn) only this worker counts. This
    worker (the one answering) is never counted as stalled.
    """
    folder = folder if folder is not None else server_folder()
    states = read_all(folder) if folder is not None else None
    status, error = own_state, own_error
    if own_state == READY and states:
        now = time.time()
        unready_states = [s for s in unready(states, now) if not (s.pid == os.getpid() and s.state == READY)]
        failed = [s for s in unready_states if s.state == FAILED]
        stalled = [s for s in unready_states if s.stalled(now)]
        if failed:
            status, error = FAILED, f"worker {failed[0].pid or failed[0].age}: {failed[0].error}"
        elif stalled:
            status, error = STALLED, (f"worker {stalled[0].pid} has not beaten for {now - stalled[0].beat:.0f} s "
                                      "(stopped, or hung); gunicorn's timeout replaces it")
        elif unready_states:
            status, error = LOADING, f"{len(unready_states)} of {len(states)} workers still loading their models"
    return Readiness(status, error, counts(states) if states is not None else None)
