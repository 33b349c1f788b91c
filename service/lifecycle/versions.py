"""The life of one served model version, and what the workers of one server agree on.

A version moves through TF Serving's states::

    START ─▶ LOADING ─▶ AVAILABLE ─▶ UNLOADING ─▶ END
                  └──────────────(load failed)──▶ END, status error_code/error_message
       LOADING ◀─(its files changed, backoff over)── END (failed)

:class:`ServedVersion` is one version in one worker: its state, its status
(``error_code``/``error_message`` as TF Serving's GetModelStatus reports it),
its servable while loaded, and the requests holding it now (an unloading
version is closed only when none is left).

:class:`SharedDefaults` is what makes the workers of one gunicorn server switch
together. Each worker writes the versions it has AVAILABLE to a small file in
the server's worker-state folder (:mod:`imgclf.service.server.worker_states`); a new
version becomes a model's default only once every ready worker lists it, and
the worker that sees that first records the default in ``default-NAME.json``
there. Every model request reads that record (one ``stat``, the file re-read
only when it changed), so all workers flip to the new version within
microseconds of each other instead of each on its own poll. Outside gunicorn
(a test client, one process) there are no peers and the record lives in memory.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from imgclf.core.atomic import write_json_atomic
from imgclf.core.errors import GraphError, ModelNotFound, UnsafeGraph
from imgclf.service.servables.base import Servable
from imgclf.service.server import worker_states

log = logging.getLogger(__name__)

RETRY_AT_MOST_S = 300.0  # the longest backoff between two tries of a failed version whose files keep changing
SIGNATURE_FILES_AT_MOST = 10_000  # files of a version folder looked at for its signature (a bound on the walk)



class VersionState(StrEnum):
    """TF Serving's states of one model version (its GetModelStatus names), written as their plain values."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


START, LOADING, AVAILABLE, UNLOADING, END = VersionState
STATES = tuple(VersionState)


def error_code(exc: BaseException) -> str:
    """Return the canonical error code TF Serving would report for a version that failed to load with ``exc``."""
    if isinstance(exc, ModelNotFound):
        return "NOT_FOUND"
    if isinstance(exc, UnsafeGraph):
        return "FAILED_PRECONDITION"
    if isinstance(exc, (GraphError, ValueError)):
        return "INVALID_ARGUMENT"
    if isinstance(exc, MemoryError):
        return "RESOURCE_EXHAUSTED"
    return "UNKNOWN"


@dataclass
class ServedVersion:
    """One version of a model in this worker: state, status, servable while loaded, requests holding it."""

    name: str
    version: int
    state: VersionState = START
    error_code: str = "OK"
    error_message: str = ""
    servable: Servable | None = None
    users: int = 0  # requests of this worker holding the servable now (the registry counts them)
    failures: int = 0  # failed loads in a row
    signature: tuple = field(default=(), repr=False)  # its files' sizes and times when it last failed
    retry_at: float = 0.0  # monotonic time before which a failed load is not tried again

    @property
    def available(self) -> bool:
        """Return whether requests may be given this version."""
        return self.state == AVAILABLE and self.servable is not None

    @property
    def failed(self) -> bool:
        """Return whether loading failed (state END with an error)."""
        return self.state == END and self.error_code != "OK"

    def fail(self, exc: BaseException, path: Path | None = None, first_backoff: float = 1.0) -> None:
        """Record a failed load: state END, the error's code and message; with the version's folder ``path``,
        its files' signature and when it may be tried again (``first_backoff`` doubled with each failure)."""
        self.state, self.error_code = END, error_code(exc)
        self.error_message = str(exc) if not isinstance(exc, MemoryError) else "out of memory"
        if self.error_code == "UNKNOWN":
            self.error_message = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        if path is not None:
            self.signature = files_signature(path)
        self.retry_at = time.monotonic() + min(first_backoff * 2 ** (self.failures - 1), RETRY_AT_MOST_S)

    def may_retry(self, path: Path) -> bool:
        """Return whether a failed version should be loaded again: its backoff is over and its files changed."""
        return self.failed and time.monotonic() >= self.retry_at and files_signature(path) != self.signature

    def recovered(self) -> None:
        """Forget the failures of a version that has now loaded."""
        self.error_code, self.error_message, self.failures, self.signature = "OK", "", 0, ()

    def status(self) -> dict:
        """Return this version's entry of TF Serving's ``model_version_status``."""
        return {"version": str(self.version), "state": self.state,
                "status": {"error_code": self.error_code, "error_message": self.error_message}}


def files_signature(path: Path) -> tuple:
    """Return the names, sizes and modification times of the files under ``path`` (a version folder), sorted.

    A failed version is tried again when this changes: fixed on disk, or written again. At most
    :data:`SIGNATURE_FILES_AT_MOST` files are looked at; an unreadable folder has the empty signature.
    """
    found = []
    try:
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                try:
                    info = os.stat(os.path.join(dirpath, name))
                except OSError:  # removed meanwhile
                    continue
                found.append((os.path.relpath(os.path.join(dirpath, name), path), info.st_size, info.st_mtime_ns))
                if len(found) >= SIGNATURE_FILES_AT_MOST:
                    return tuple(found)
    except OSError:
        return ()
    return tuple(found)


class SharedDefaults:
    """The default version of each model, agreed by every ready worker of the server (see the module doc)."""

    def __init__(self, folder: Path | None, pid: int | None = None):
        self.folder = folder  # None: this process alone
        self.pid = pid or os.getpid()
        self._memory: dict[str, int] = {}
        self._cache: dict[str, tuple[tuple, int | None]] = {}  # name -> (file stamp, version)
        self._lock = threading.Lock()

    def _default_file(self, name: str) -> Path:
        return self.folder / f"default-{name}.json"

    def _versions_file(self, pid: int) -> Path:
        return self.folder / f"versions-{pid}.json"

    def default(self, name: str) -> int | None:
        """Return the agreed default version of ``name`` (None: none agreed yet)."""
        if self.folder is None:
            return self._memory.get(name)
        path = self._default_file(name)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            version = json.loads(path.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError, AttributeError):  # replaced meanwhile, or damaged: read it next time
            return cached[1] if cached else None
        version = int(version) if isinstance(version, int) else None
        self._cache[name] = (stamp, version)
        return version

    def commit(self, name: str, version: int | None) -> None:
        """Record ``version`` (None: no default, the model is gone) as the default of ``name`` for every worker."""
        if self.folder is None:
            if version is None:
                self._memory.pop(name, None)
            else:
                self._memory[name] = version
            return
        with self._lock:
            write_json_atomic(self._default_file(name), {"version": version})
        log.info("model %s: default version %s for every worker", name, version)

    def publish(self, models: dict[str, dict]) -> None:
        """Tell the other workers what this one serves: ``{name: {"available": [...], "default": v, ...}}``."""
        if self.folder is not None:
            write_json_atomic(self._versions_file(self.pid), {"pid": self.pid, "models": models})

    def peers(self) -> list[dict]:
        """Return what every other ready worker of the server serves (its published ``models``)."""
        if self.folder is None:
            return []
        found = []
        for state in worker_states.read_all(self.folder):
            if state.state != worker_states.READY or not state.pid or state.pid == self.pid:
                continue
            try:
                data = json.loads(self._versions_file(state.pid).read_text(encoding="utf-8"))
            except (OSError, ValueError):  # ready before this worker's first poll read it: nothing agreed yet
                data = {}
            found.append(data.get("models", {}) if isinstance(data, dict) else {})
        return found

    def withdraw(self) -> None:
        """Remove this worker's published versions (at exit)."""
        if self.folder is not None:
            try:
                self._versions_file(self.pid).unlink()
            except OSError:
                pass


def agreed(name: str, candidates: set[int], peers: list[dict]) -> int | None:
    """Return the newest of ``candidates`` that every peer has AVAILABLE for ``name`` (None: none)."""
    common = set(candidates)
    for models in peers:
        entry = models.get(name) if isinstance(models, dict) else None
        common &= set(entry.get("available", [])) if isinstance(entry, dict) else set()
    return max(common) if common else None
