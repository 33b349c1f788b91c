"""The version manager: the models a worker serves, several versions each, kept in step with the disk.

At start the registry loads, for every model, the versions its version policy
selects (:mod:`imgclf.service.lifecycle.policy`: the newest by default; a model
config file, :mod:`imgclf.service.lifecycle.config_file`, names the models and
their policies and labels), each as the :class:`~imgclf.service.servables.base.Servable`
of its kind, warmed up; only then does it report ready. Loading runs in a
background thread by default, so the worker answers ``/healthz`` at once and
``/readyz`` with 503 until it is done. A model request that arrives meanwhile
gets 503 (Retry-After), or, once :meth:`VersionManager.hold_requests` was called
(gunicorn's first-start workers), waits a bounded time for loading to finish.
Listeners (:meth:`VersionManager.on_state`) hear every state change:
gunicorn_conf records it for the other workers' ``/readyz``.

Then, every ``IMGCLF_POLL_SECONDS`` (0: never), a poller thread compares the
repository with what is loaded (:meth:`VersionManager.sync`): a newly published
version is loaded and warmed up beside the serving one (requests never wait for
it), and becomes the model's default once every ready worker of the server has
it AVAILABLE (:class:`~imgclf.service.lifecycle.versions.SharedDefaults`); a version the
policy no longer selects (removed, or superseded) is unloaded once it is not the
default and its requests in flight have finished. A version that fails to load
ends in state END with its error in its status and never becomes the default;
it is tried again when its files change (their sizes and times), at most after a
backoff that doubles with each failure (:data:`RETRY_FIRST_S` to :data:`RETRY_AT_MOST_S`).

A worker whose loading failed (the repository unreadable during a restart, a
broken version) keeps trying, every :data:`RETRY_FIRST_S` doubling up to
``IMGCLF_POLL_SECONDS``, and becomes ready by itself once it can (no SIGHUP).
A worker whose repository holds no model is ready with nothing to serve, and
looks again on the same backoff (an outage can look like an empty folder).

A model this worker has served keeps its place while its folder is in the
repository (or the model config file lists it), also when no version of it is
left: its versions show END, and :meth:`VersionManager.readiness` says the
worker is not ready (``/readyz`` 503, status ``unavailable``), as Triton's strict
readiness does. A model whose folder is removed is forgotten.

Requests take a version with :meth:`VersionManager.lease` and give it back when
they end, so an unloading version waits for them. Nothing here knows HTTP: the
Flask binding is :mod:`imgclf.service.lifecycle.extension`, the poller thread
:mod:`imgclf.service.lifecycle.poller`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from imgclf.core.errors import ImgclfError, ModelNotFound, NotReady
from imgclf.core.model_kind import ModelKind
from imgclf.core.repository import check_sizes
from imgclf.service.lifecycle.plan import ModelPlan, check_plan, plan_models
from imgclf.service.lifecycle.poller import Poller
from imgclf.service.lifecycle.versions import AVAILABLE, END, LOADING, UNLOADING, ServedVersion, SharedDefaults, agreed
from imgclf.service.servables.base import LoadContext, Servable
from imgclf.service.servables.loader import load_servable
from imgclf.service.servables.runtime import prepare_tensorflow
from imgclf.service.server import worker_states
from imgclf.service.server.worker_states import State

if TYPE_CHECKING:  # the settings tree imports the parsers of this layer: a type only, no cycle
    from imgclf.service.settings import ServingSettings

log = logging.getLogger(__name__)

UNLOAD_WAIT_S = 60.0  # an unloading version waits at most this long for its requests in flight
RETRY_FIRST_S = 1.0  # a failed load (a version, or the worker's start) is tried again after this long at the earliest,
RETRY_AT_MOST_S = 300.0  # ... doubling with each failure up to this (a worker's start: up to IMGCLF_POLL_SECONDS)
UNAVAILABLE = "unavailable"  # the readiness status of a worker with a served model that has no available version


def _failure(exc: Exception) -> str:
    """Log why loading failed and return the error to report: the message of an expected error, else its type too."""
    if isinstance(exc, (ImgclfError, ValueError, OSError)):
        log.error("loading models failed: %s", exc)
        return str(exc)
    log.exception("loading models failed")
    return f"{type(exc).__name__}: {exc}"


class Observer(Protocol):
    """What the manager reports to: load times, and a per-model callback for the batches its batcher runs."""

    def observe_load(self, model: str, seconds: float) -> None: ...

    def batch_observer(self, model: str) -> Callable[[int, float], None]: ...


Loader = Callable[[Path, str, int, LoadContext], Servable]


class VersionManager:
    """Loads, holds, swaps and unloads the served model versions of one worker."""

    def __init__(self, config: ServingSettings, metrics: Observer | None = None, expected=None,
                 loader: Loader | None = None, shared: SharedDefaults | None = None):
        self.config = config
        self.versions: dict[str, dict[int, ServedVersion]] = {}  # name -> version -> its life in this worker
        self.plans: dict[str, ModelPlan] = {}
        self.state = State.LOADING  # LOADING, READY or FAILED (HELD is the gunicorn hook's)
        self.error = ""
        self.precision = ""  # fp32 | bf16 | fp16, resolved when loading
        self.metrics = metrics  # this app's metrics: batches and load times are recorded there
        self.shared = shared  # the defaults agreed with the other workers (set when loading starts)
        self.pending = False  # a loaded version waits for the other workers before it becomes the default
        self.pending_since = 0.0  # monotonic time it began waiting
        self._expected = expected  # (model name) -> its prediction requests in flight in this worker, for its batcher
        self._loader = loader or load_servable
        self._thread: threading.Thread | None = None
        self._poller: Poller | None = None
        self._sync_lock = threading.Lock()  # one sync at a time (the poller, a test)
        self._done = threading.Event()  # set when loading has ended, ready or failed
        self._lock = threading.Lock()  # orders state changes, listeners, and version hand-outs
        self._listeners: list[Callable[[str, str], None]] = []
        self._hold_seconds = 0.0  # how long a model request waits for loading (see hold_requests)
        self._hold_at_most = 0  # how many model requests may wait at once (0: none, 503 at once)
        self.waiting = 0  # model requests waiting for loading now
        self.retry_first_s = RETRY_FIRST_S  # the first backoff of a failed load (tests shorten it)
        self.start_failures = 0  # failed starts in a row (the worker's backoff)
        self.empty_polls = 0  # polls in a row that found nothing to serve (the same backoff)
        self._served: set[str] = set()  # models that have had an available version in this worker

    @property
    def ready(self) -> bool:
        """Return whether every model is loaded and warmed up."""
        return self.state == State.READY

    @property
    def models(self) -> dict[str, Servable]:
        """Return the default version's servable of every model that has one, by name."""
        found = {}
        for name in sorted(self.versions):
            entry = self._default_entry(name)
            if entry is not None:
                found[name] = entry.servable
        return found

    def start(self) -> None:
        """Load the models, in a background thread when configured; then poll the repository if configured."""
        if self.config.load_in_background:
            self._thread = threading.Thread(target=self.load_all, name="model-loader", daemon=True)
            self._thread.start()
        else:
            self.load_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for loading to finish; return whether the registry is ready."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def on_state(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(state, error)`` now and after every change of the state (from the loading thread)."""
        with self._lock:
            self._listeners.append(listener)
            listener(self.state, self.error)

    def hold_requests(self, seconds: float, at_most: int) -> None:
        """Make up to ``at_most`` model requests at a time wait up to ``seconds`` for loading instead of a 503.

        The bound on waiting requests keeps request threads free for ``/healthz`` and ``/readyz`` (a request
        over it gets the 503 at once); ``at_most`` 0 or ``seconds`` 0 turns waiting off.
        """
        self._hold_seconds, self._hold_at_most = seconds, at_most if seconds > 0 else 0

    def _set_state(self, state: State, error: str = "") -> None:
        with self._lock:
            self.state, self.error = state, error
            self._done.set()
            for listener in self._listeners:
                try:
                    listener(state, error)
                except Exception:  # a listener that fails must not turn a loaded worker into a failed one
                    log.exception("model state listener failed")

    def _wait_for_loading(self) -> None:
        """Wait (bounded, see :meth:`hold_requests`) while loading; return at once otherwise."""
        if self.state != State.LOADING or not self._hold_at_most:  # the usual case, without the lock
            return
        with self._lock:
            if self.state != State.LOADING or self.waiting >= self._hold_at_most:
                return
            self.waiting += 1
        try:
            self._done.wait(self._hold_seconds)
        finally:
            with self._lock:
                self.waiting -= 1

    # --- loading, polling, unloading -----------------------------------------------------------------------------

    def load_all(self) -> None:
        """Load and warm up what every model's policy selects; set the state; start the poller.

        A failed start is tried again by the poller (see :meth:`poll`), with a backoff.
        """
        try:
            # First of all: GPU memory growth/limit, IMGCLF_DEVICE checked (the error lists the devices).
            self.precision = prepare_tensorflow(self.config.precision)
            if self.shared is None:
                self.shared = SharedDefaults(worker_states.server_folder())
        except Exception as exc:  # a process-wide setting (IMGCLF_DEVICE, precision): trying again cannot help
            self._set_state(State.FAILED, _failure(exc))
            return
        self._try_start()
        if self.config.poll_seconds > 0:
            self._poller = Poller(self, self.config.poll_seconds, self.config.model_repository)
            self._poller.start()

    def _try_start(self) -> bool:
        """Plan, load and check every model; set the state READY or FAILED; return whether it is READY."""
        try:
            self.plans = plan_models(self.config)
            check_plan(self.config, self.plans)
            self.sync()
            for name in sorted(self.plans):
                if self._default_entry(name) is None:
                    raise ModelNotFound(self._why_none(name))
            if not self.versions:
                log.warning("model repository %s holds no model; nothing to serve", self.config.model_repository)
        except Exception as exc:
            self.start_failures += 1
            self._set_state(State.FAILED, _failure(exc))
            return False
        if self.start_failures:
            log.info("models loaded after %d failed start(s)", self.start_failures)
        self.start_failures = 0
        self._set_state(State.READY)
        return True

    def retry_wait(self) -> float | None:
        """Return how soon the poller looks again, when sooner than its interval: after a failed start, or while
        the repository holds nothing to serve (an outage during a restart can look empty); None otherwise."""
        if self.state == State.FAILED and self.start_failures:
            tries = self.start_failures
        elif self.state == State.READY and not self.plans:
            tries = self.empty_polls + 1
        else:
            return None
        return min(self.retry_first_s * 2 ** (tries - 1), max(self.config.poll_seconds, 0.0))

    def poll(self) -> None:
        """One look at the repository (the poller's): a failed start is tried again, else :meth:`sync`."""
        if self.state == State.FAILED:
            if self.start_failures:
                self._try_start()
            return
        self.sync()
        self.empty_polls = 0 if self.plans else self.empty_polls + 1

    def _why_none(self, name: str) -> str:
        """Say why model ``name`` has no available version after loading."""
        failed = [e for _, e in sorted(self.versions.get(name, {}).items(), reverse=True) if e.failed]
        return failed[0].error_message if failed else self.plans[name].why_none(name)

    def sync(self) -> None:
        """Bring the loaded versions in line with the disk and the policies (one poll of the repository)."""
        with self._sync_lock:
            if not self.config.model_config_file:
                plans = plan_models(self.config, self.plans)  # models published since start are served too
                for name, plan in self.plans.items():  # a served model with no version left stays while its
                    if name not in plans and name in self._served and plan.model_dir.is_dir():  # folder is there
                        plans[name] = plan
                self.plans = plans
            selected = {name: plan.selected() for name, plan in sorted(self.plans.items())}
            for name in list(self.versions):
                if name not in selected:
                    selected[name] = []  # a model gone from the repository: unload all of it
            waiting = []  # START: found on disk, to be loaded (one at a time, the newest first: it is awaited)
            with self._lock:
                for name, versions in selected.items():
                    entries = self.versions.setdefault(name, {})
                    for version in sorted(versions, reverse=True):
                        entry = entries.get(version)
                        if entry is None or (entry.state == END and not entry.failed):
                            entries[version] = ServedVersion(name, version)
                            waiting.append(entries[version])
                        elif entry.failed and entry.may_retry(self._version_dir(name, version)):
                            waiting.append(entry)  # its files changed since it failed: try again
            for entry in waiting:
                self._load(entry)
            self._publish()
            pending = False
            for name, versions in selected.items():
                pending |= self._agree(name, versions)
            for name, versions in selected.items():
                self._retire(name, set(versions))
            self._publish()
            if pending and not self.pending:
                self.pending_since = time.monotonic()
            self.pending = pending

    def _load(self, entry: ServedVersion) -> None:
        """Load ``entry``'s version as the servable of its kind and warm it up; record the outcome."""
        name, version = entry.name, entry.version
        entry.state = LOADING
        started = time.perf_counter()
        try:
            context = LoadContext(self.config, on_batch=self.metrics.batch_observer if self.metrics else None,
                                  expected=self._expected)
            path = self._version_dir(name, version)
            check_sizes(path, self.config.max_model_bytes, self.config.max_model_card_bytes)  # before reading any
            served = self._loader(path, name, version, context)
            try:
                served.warm_up()
            except BaseException:
                served.close()
                raise
        except Exception as exc:  # a version that fails is reported, never served; the others carry on
            entry.fail(exc, self._version_dir(name, version), self.retry_first_s)
            log.error("model %s version %d failed to load: %s", name, version, entry.error_message)
            return
        served.load_seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_load(name, served.load_seconds)
        with self._lock:
            entry.servable, entry.state = served, AVAILABLE
            entry.recovered()
            self._served.add(name)
        log.info("model %s version %d (%s) ready in %.1f s", name, version, served.kind.value, served.load_seconds)

    def _agree(self, name: str, selected: list[int]) -> bool:
        """Make the newest selected version every ready worker has the default; return whether one still waits."""
        entries = self.versions.get(name, {})
        local = {v for v in selected if v in entries and entries[v].available}
        current = self.shared.default(name)
        if not selected:
            if current is not None:
                self.shared.commit(name, None)
            return False
        target = agreed(name, local, self.shared.peers())
        if target is not None and target != current:
            self.shared.commit(name, target)
            current = target
        return bool(local) and max(local) != current

    def _retire(self, name: str, selected: set[int]) -> None:
        """Unload the available versions of ``name`` that are neither selected nor the default; forget stale ends."""
        entries = self.versions.get(name, {})
        default = self._default_entry(name) if selected else None  # a model gone from disk goes entirely
        on_disk = set(self.plans[name].on_disk()) if name in self.plans else set()
        for version, entry in sorted(entries.items()):
            if entry.available and version not in selected and entry is not default:
                self._unload(entry)
        # A served model still planned keeps its END versions while it has none available: its status shows them.
        keep_ends = name in self.plans and not any(e.available for e in entries.values())
        for version, entry in sorted(entries.items()):
            if entry.state == END and version not in on_disk and not keep_ends:
                with self._lock:
                    del entries[version]
        if not entries:
            with self._lock:
                self.versions.pop(name, None)
                self._served.discard(name)

    def _unload(self, entry: ServedVersion) -> None:
        """Stop handing ``entry`` out, wait for its requests in flight, close it and free its memory."""
        with self._lock:
            entry.state = UNLOADING
        deadline = time.monotonic() + UNLOAD_WAIT_S
        while entry.users and time.monotonic() < deadline:
            time.sleep(0.02)
        if entry.users:
            log.warning("model %s version %d: %d requests still running after %.0f s; unloading anyway",
                        entry.name, entry.version, entry.users, UNLOAD_WAIT_S)
        served, entry.servable = entry.servable, None
        if served is not None:
            served.close()
        del served
        gc.collect()  # TensorFlow's loaded functions sit in reference cycles: free them now, not some time
        entry.state = END
        log.info("model %s version %d unloaded", entry.name, entry.version)

    def _publish(self) -> None:
        """Tell the other workers which versions this one has available and which is its default."""
        if self.shared is None:
            return
        models = {}
        for name, entries in sorted(self.versions.items()):
            default = self._default_entry(name)
            models[name] = {"available": sorted(v for v, e in entries.items() if e.available),
                            "default": default.version if default else None,
                            "states": {str(v): e.state for v, e in sorted(entries.items())}}
        self.shared.publish(models)

    def _version_dir(self, name: str, version: int) -> Path:
        return self.plans[name].model_dir / str(version)

    # --- lookups ---------------------------------------------------------------------------------------------------

    def unavailable(self) -> dict[str, str]:
        """Return the models this worker has served that have no available version now, each with why."""
        found = {}
        with self._lock:
            for name in sorted(self._served):
                entries = self.versions.get(name) or {}
                if name in self.plans and not any(e.available for e in entries.values()):
                    states = ", ".join(f"{v} {e.state}" for v, e in sorted(entries.items(), reverse=True))
                    found[name] = f"model {name!r} has no available version (versions: {states or 'none'})"
        return found

    def readiness(self) -> tuple[str, str]:
        """Return this worker's readiness (state, error): its state, or ``unavailable`` when it is READY but a
        model it has served has no available version."""
        state, error = self.state, self.error
        if state == State.READY:
            missing = self.unavailable()
            if missing:
                return UNAVAILABLE, "; ".join(missing.values())
        return state, error

    def _default_entry(self, name: str) -> ServedVersion | None:
        """Return the entry of the default version of ``name``: the agreed one, else the newest available."""
        entries = self.versions.get(name) or {}
        agreed_version = self.shared.default(name) if self.shared is not None else None
        entry = entries.get(agreed_version) if agreed_version is not None else None
        if entry is not None and entry.available:
            return entry
        available = [e for _, e in sorted(list(entries.items())) if e.available]  # list(): the poller adds some
        return available[-1] if available else None

    def default_version(self, name: str) -> int:
        """Return the default version of model ``name`` (what a route's version 0 means).

        Raises:
            NotReady, ModelNotFound: as :meth:`get`.
        """
        return self.get(name).version

    def _check_ready(self) -> None:
        self._wait_for_loading()
        if not self.ready:
            raise NotReady("models are still loading" if self.state == State.LOADING
                           else f"models failed to load: {self.error}")

    def _entries(self, name: str) -> dict[int, ServedVersion]:
        entries = self.versions.get(name)
        if not entries:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"unknown model {name!r}; served models: {known}")
        return entries

    def get(self, name: str | None = None, version: int | None = None) -> Servable:
        """Return a served model version (the default model when ``name`` is empty, its default version when
        ``version`` is None), without holding it: for metadata. A prediction holds it with :meth:`lease`.

        Raises:
            NotReady: models are still loading (after the wait of :meth:`hold_requests`), or loading failed.
            ModelNotFound: no such model, or that version is not available.
        """
        return self._find(name, version).servable

    @contextlib.contextmanager
    def lease(self, name: str | None = None, version: int | None = None, label: str | None = None
              ) -> Iterator[Servable]:
        """Hold a served model version (as :meth:`get`; or the version ``label`` points at) while the block runs.

        A version the policy drops meanwhile is unloaded only once every lease on it has ended.

        Raises:
            NotReady, ModelNotFound: as :meth:`get` and :meth:`get_label`.
        """
        entry = self._find_label(name, label, hold=True) if label is not None else self._find(name, version, hold=True)
        try:
            yield entry.servable
        finally:
            with self._lock:
                entry.users -= 1

    def _find(self, name: str | None, version: int | None, hold: bool = False) -> ServedVersion:
        """Return the entry :meth:`get` describes, counting a user on it when ``hold``."""
        self._check_ready()
        if not name:
            name = self.default_name()
        entries = self._entries(name)
        with self._lock:
            entry = self._default_entry(name) if version is None else entries.get(int(version))
            if entry is None or not entry.available:
                raise ModelNotFound(self._not_available(name, version, entry))
            if hold:
                entry.users += 1
            return entry

    def _not_available(self, name: str, version: int | None, entry: ServedVersion | None) -> str:
        served = ", ".join(str(v) for v, e in sorted(self.versions.get(name, {}).items()) if e.available) or "none"
        if version is None:
            return f"model {name!r} has no available version"
        state = f" (it is {entry.state})" if entry is not None else ""
        return f"model {name!r} version {version} is not served{state}; available versions: {served}"

    def label_version(self, name: str, label: str) -> int:
        """Return the version label ``label`` of model ``name`` points at.

        Raises:
            NotReady: as :meth:`get`.
            ModelNotFound: no such model, or it has no such label.
        """
        self._check_ready()
        self._entries(name)
        labels = self.plans[name].labels if name in self.plans else {}
        if label not in labels:
            known = ", ".join(sorted(labels)) or "none"
            raise ModelNotFound(f"Unrecognized servable version label: {label!r} of model {name!r}; "
                                f"its labels: {known}")
        return labels[label]

    def get_label(self, name: str, label: str) -> Servable:
        """Return the version label ``label`` of ``name`` points at; it must be AVAILABLE (404 saying so if not)."""
        return self._find_label(name, label).servable

    def _find_label(self, name: str | None, label: str, hold: bool = False) -> ServedVersion:
        version = self.label_version(name or self.default_name(), label)
        try:
            return self._find(name, version, hold)
        except ModelNotFound as exc:
            raise ModelNotFound(f"label {label!r} of model {name!r} points at version {version}, which is not "
                                f"available: {exc}") from None

    def status(self, name: str, version: int | None = None) -> list[dict]:
        """Return TF Serving's ``model_version_status`` of ``name``: every version it knows, or one, newest first.

        Raises:
            NotReady: as :meth:`get`.
            ModelNotFound: no such model, or it never had that version.
        """
        self._check_ready()
        entries = self._entries(name)
        with self._lock:
            if version is None:
                return [e.status() for _, e in sorted(entries.items(), reverse=True)]
            entry = entries.get(int(version))
            if entry is None:
                known = ", ".join(str(v) for v in sorted(entries, reverse=True))
                raise ModelNotFound(f"model {name!r} version {version} is not served; versions it has: {known}")
            return [entry.status()]

    def available_versions(self, name: str) -> list[int]:
        """Return the versions of ``name`` this worker can serve now, oldest first."""
        return sorted(v for v, e in self.versions.get(name, {}).items() if e.available)

    def default_name(self) -> str:
        """Return the default model's name: the config's, else the first image classifier by name, else the first."""
        if self.config.default_model:
            return self.config.default_model
        models = self.models
        if not models:
            raise ModelNotFound(f"no model is served: {self.config.model_repository} holds none")
        images = [name for name, served in models.items() if served.kind is ModelKind.IMAGE_CLASSIFIER]
        return (images or sorted(models))[0]

    def close(self) -> None:
        """Stop polling and the batchers."""
        if self._poller is not None:
            self._poller.stop()
        for entries in list(self.versions.values()):
            for entry in list(entries.values()):
                if entry.servable is not None:
                    entry.servable.close()
        if self.shared is not None:
            self.shared.withdraw()
