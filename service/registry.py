"""The models a worker serves: loaded once per worker, warmed up, then ready.

Every model of the repository is loaded (its newest version, or the version
pinned in the config) as the :class:`~imgclf.service.servable.Servable` of its
kind, runs its warm-up, and only then does the registry report ready. Loading
runs in a background thread by default, so the worker answers ``/healthz`` at
once and ``/readyz`` with 503 until it is done. A model request that arrives
meanwhile gets 503 (Retry-After), or, once :meth:`ModelRegistry.hold_requests`
was called (gunicorn's first-start workers), waits a bounded time for loading
to finish. Listeners (:meth:`ModelRegistry.on_state`) hear every state change:
gunicorn_conf records it for the other workers' ``/readyz``.

The registry is a Flask extension: :func:`init_app` creates it for an app (with
that app's config and metrics) and :func:`current_registry` returns it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import Flask, current_app

from imgclf.core.devices import configure_tensorflow
from imgclf.core.errors import ImgclfError, ModelNotFound
from imgclf.core.model_kind import ModelKind
from imgclf.core.precision import resolve_precision
from imgclf.core.repository import list_models
from imgclf.service.app_config import current_config
from imgclf.service.config import ServiceConfig
from imgclf.service.errors import NotReady
from imgclf.service.in_flight import InFlight
from imgclf.service.metrics import Metrics, current_metrics
from imgclf.service.servable import LoadContext, Servable
from imgclf.service.servables import load_servable

log = logging.getLogger(__name__)

EXTENSION = "imgclf.registry"  # gunicorn_conf finds the registry here to hold a worker back until it is ready


def apply_precision(requested: str) -> str:
    """Resolve ``requested`` for this process's device and turn on the matching rewrite for this process.

    bf16 (CPU): oneDNN's bfloat16 rewrite; fp16 (GPU of compute capability >= 7.0):
    grappler's auto mixed precision, which makes float16 (TensorFlow has no bf16
    rewrite for GPUs; see :mod:`imgclf.core.precision`). The rewrite is a
    process-wide grappler option that applies to every graph the process runs
    afterwards, the loaded SavedModels included; a worker serves in one precision.
    """
    precision = resolve_precision(requested)
    option = {"bf16": "auto_mixed_precision_onednn_bfloat16", "fp16": "auto_mixed_precision"}.get(precision)
    if option:
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({option: True})
    log.info("serving precision: %s (requested %s)", precision, requested)
    return precision


class ModelRegistry:
    """Loads and holds the served models of one worker."""

    def __init__(self, config: ServiceConfig, metrics: Metrics | None = None, expected=None):
        self.config = config
        self.models: dict[str, Servable] = {}
        self.state = "loading"  # loading | ready | failed
        self.error = ""
        self.precision = ""  # fp32 | bf16 | fp16, resolved when loading
        self.metrics = metrics  # this app's metrics: batches and load times are recorded there
        self._expected = expected  # (model name) -> its prediction requests in flight in this worker, for its batcher
        self._thread: threading.Thread | None = None
        self._done = threading.Event()  # set when loading has ended, ready or failed
        self._lock = threading.Lock()  # orders state changes and listeners
        self._listeners: list[Callable[[str, str], None]] = []
        self._hold_seconds = 0.0  # how long a model request waits for loading (see hold_requests)
        self._hold_at_most = 0  # how many model requests may wait at once (0: none, 503 at once)
        self.waiting = 0  # model requests waiting for loading now

    @property
    def ready(self) -> bool:
        """Return whether every model is loaded and warmed up."""
        return self.state == "ready"

    def start(self) -> None:
        """Load the models, in a background thread when configured."""
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

    def _set_state(self, state: str, error: str = "") -> None:
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
        if self.state != "loading" or not self._hold_at_most:  # the usual case, without the lock
            return
        with self._lock:
            if self.state != "loading" or self.waiting >= self._hold_at_most:
                return
            self.waiting += 1
        try:
            self._done.wait(self._hold_seconds)
        finally:
            with self._lock:
                self.waiting -= 1

    def load_all(self) -> None:
        """Load and warm up every model of the repository; set the state."""
        try:
            # First of all: GPU memory growth/limit, IMGCLF_DEVICE checked (the error lists the devices).
            configure_tensorflow()
            self.precision = apply_precision(self.config.precision)
            repo = self.config.model_repository
            available = list_models(repo) if repo.is_dir() else {}
            unknown = sorted(set(self.config.model_versions) - set(available))
            if unknown:
                raise ModelNotFound(f"pinned model(s) {', '.join(unknown)} not in {repo}")
            default = self.config.default_model
            if default and default not in available:  # else every /predict without a model name would 404
                raise ModelNotFound(f"the default model {default!r} (IMGCLF_DEFAULT_MODEL) is not in {repo}; "
                                    f"served models: {', '.join(sorted(available)) or 'none'}")
            for name, versions in sorted(available.items()):
                version = int(self.config.model_versions.get(name, max(versions)))
                if version not in versions:
                    raise ModelNotFound(f"model {name!r} has no version {version} in {repo}; "
                                        f"versions: {', '.join(map(str, versions))}")
                self.models[name] = self._load(name, version)
            if not self.models:
                log.warning("model repository %s holds no model; nothing to serve", repo)
            self._set_state("ready")
        except (ImgclfError, ValueError, OSError) as exc:
            log.error("loading models failed: %s", exc)
            self._set_state("failed", str(exc))
        except Exception as exc:
            log.exception("loading models failed")
            self._set_state("failed", f"{type(exc).__name__}: {exc}")

    def _load(self, name: str, version: int) -> Servable:
        """Load version ``version`` of ``name`` as the servable of its kind, warm it up, record the time."""
        started = time.perf_counter()
        context = LoadContext(self.config, on_batch=self.metrics.batch_observer if self.metrics else None,
                              expected=self._expected)
        served = load_servable(self.config.model_repository / name / str(version), name, version, context)
        served.warm_up()
        served.load_seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_load(name, served.load_seconds)
        log.info("model %s version %d (%s) ready in %.1f s", name, version, served.kind.value, served.load_seconds)
        return served

    def get(self, name: str | None = None, version: int | None = None) -> Servable:
        """Return a served model (the default one when ``name`` is empty).

        Raises:
            NotReady: models are still loading (after the wait of :meth:`hold_requests`), or loading failed.
            ModelNotFound: no such model, or that version is not the one served.
        """
        self._wait_for_loading()
        if not self.ready:
            raise NotReady("models are still loading" if self.state == "loading"
                           else f"models failed to load: {self.error}")
        if not name:
            name = self.default_name()
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"unknown model {name!r}; served models: {known}")
        if version is not None and int(version) != served.version:
            raise ModelNotFound(f"model {name!r} version {version} is not served; "
                                f"the served version is {served.version}")
        return served

    def default_name(self) -> str:
        """Return the default model's name: the config's, else the first image classifier by name, else the first."""
        if self.config.default_model:
            return self.config.default_model
        if not self.models:
            raise ModelNotFound(f"no model is served: {self.config.model_repository} holds none")
        images = [name for name, served in sorted(self.models.items()) if served.kind is ModelKind.IMAGE_CLASSIFIER]
        return (images or sorted(self.models))[0]

    def close(self) -> None:
        """Stop the batchers."""
        for served in self.models.values():
            served.close()


def init_app(app: Flask) -> ModelRegistry:
    """Create the app's registry (its config, its metrics), count its prediction requests in flight; return it.

    Loading starts with :meth:`ModelRegistry.start`, once the app is complete.
    """
    in_flight = InFlight()
    registry = ModelRegistry(current_config(app), current_metrics(app), expected=in_flight.count)
    in_flight.init_app(app, lambda: registry.default_name() if registry.ready else None)
    app.extensions[EXTENSION] = registry
    return registry


def current_registry(app: Flask | None = None) -> ModelRegistry:
    """Return the model registry of ``app`` (by default the app handling this request)."""
    return (app or current_app).extensions[EXTENSION]
