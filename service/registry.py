"""The models a worker serves: loaded once per worker, warmed up, then ready.

Every model of the repository is loaded (its newest version, or the version
pinned in the config), runs one warm-up prediction, and only then does the
registry report ready. Loading runs in a background thread by default, so the
worker answers ``/healthz`` at once and ``/readyz`` with 503 until it is done.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.core.devices import configure_tensorflow
from imgclf.core.errors import ImgclfError, ModelNotFound
from imgclf.core.repository import list_models, read_card
from imgclf.service.batching import Batcher
from imgclf.service.config import ServiceConfig
from imgclf.service.errors import NotReady
from imgclf.training.classifier import LoadedModel, load_model

log = logging.getLogger(__name__)


IMAGE_CLASSIFIER = "image-classifier"  # the kind of imgclf's own exports (their model card names none)


@dataclass
class ServedModel:
    """One loaded image-classifier version and its batcher."""

    name: str
    version: int
    model: LoadedModel
    batcher: Batcher
    load_seconds: float
    kind = IMAGE_CLASSIFIER

    @property
    def labels(self) -> list[str]:
        """Return the label names in class-id order."""
        return self.model.labels

    def preprocess(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Decode and validate one encoded image; return (uint8 RGB, network input)."""
        return self.model.preprocess(data)

    def predict_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Return probabilities [k, C] for network inputs [k, S, S, 3], batched with other requests."""
        return self.batcher.submit(np.asarray(inputs, dtype=np.float32))


@dataclass
class ServedDigits:
    """A secondary MNIST model (mnist-mlp, lenet5): 28×28 digits in, ten probabilities out.

    It answers POST /predict like an image classifier: any picture of a digit is
    turned into an MNIST-style input (:func:`imgclf.models.digit_image.to_mnist`). The
    models are tiny, so each request calls the model itself (no batcher).
    """

    name: str
    version: int
    model: object  # imgclf.models.serving.SecondaryModel
    max_pixels: int
    load_seconds: float = 0.0
    batcher = None
    kind = "digit-classifier"

    @property
    def labels(self) -> list[str]:
        """Return the digits as labels, "0".."9"."""
        return self.model.labels

    def preprocess(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Decode and validate one encoded picture; return (uint8 RGB, MNIST-style input [28, 28])."""
        from imgclf.featurizer.image_io import decode_rgb
        from imgclf.models.digit_image import to_mnist

        rgb = decode_rgb(bytes(data), self.max_pixels)
        return rgb, to_mnist(rgb)

    def predict_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Return probabilities [k, 10] for inputs [k, 28, 28] in [0, 1]."""
        return self.model.predict(np.asarray(inputs, dtype=np.float32))["probabilities"]


@dataclass
class ServedRegression:
    """A secondary regression model (quadratic): raw x in, raw y out; not for POST /predict."""

    name: str
    version: int
    model: object  # imgclf.models.serving.SecondaryModel
    load_seconds: float = 0.0
    batcher = None
    kind = "regression"
    labels: list = field(default_factory=list)

    def predict_values(self, x: np.ndarray) -> np.ndarray:
        """Return y [k, 1] for x [k, 1] (raw units)."""
        return self.model.predict(np.asarray(x, dtype=np.float32))["y"]


def apply_precision(requested: str) -> str:
    """Resolve ``requested`` for this process's device and turn on the matching rewrite for this process.

    bf16 (CPU): oneDNN's bfloat16 rewrite; fp16 (GPU of compute capability >= 7.0):
    grappler's auto mixed precision, which makes float16 (TensorFlow has no bf16
    rewrite for GPUs; see :mod:`imgclf.core.precision`). The rewrite is a
    process-wide grappler option that applies to every graph the process runs
    afterwards, the loaded SavedModels included; a worker serves in one precision.
    """
    from imgclf.core.precision import resolve_precision

    precision = resolve_precision(requested)
    option = {"bf16": "auto_mixed_precision_onednn_bfloat16", "fp16": "auto_mixed_precision"}.get(precision)
    if option:
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({option: True})
    log.info("serving precision: %s (requested %s)", precision, requested)
    return precision


class ModelRegistry:
    """Loads and holds the served models of one worker."""

    def __init__(self, config: ServiceConfig, on_batch=None, on_load=None, expected=None):
        self.config = config
        self.models: dict[str, ServedModel] = {}
        self.state = "loading"  # loading | ready | failed
        self.error = ""
        self.precision = ""  # fp32 | bf16 | fp16, resolved when loading
        self._on_batch = on_batch  # (model name) -> callback(images, seconds) for metrics
        self._on_load = on_load  # callback(model name, seconds)
        self._expected = expected  # (model name) -> its prediction requests in flight in this worker, for its batcher
        self._thread: threading.Thread | None = None

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
            for name, versions in sorted(available.items()):
                version = int(self.config.model_versions.get(name, max(versions)))
                if version not in versions:
                    raise ModelNotFound(f"model {name!r} has no version {version} in {repo}; "
                                        f"versions: {', '.join(map(str, versions))}")
                self.models[name] = self._load(name, version)
            if not self.models:
                log.warning("model repository %s holds no model; nothing to serve", repo)
            self.state = "ready"
        except (ImgclfError, ValueError, OSError) as exc:
            self.state, self.error = "failed", str(exc)
            log.error("loading models failed: %s", exc)
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("loading models failed")

    def _load(self, name: str, version: int):
        started = time.perf_counter()
        path = self.config.model_repository / name / str(version)
        try:
            card = read_card(path)
        except ModelNotFound:
            card = {}  # load_model says what is wrong with it
        from imgclf.models.serving import is_secondary

        if is_secondary(card):
            return self._load_secondary(name, version, path, card, started)
        model = load_model(path, max_pixels=self.config.max_pixels, allow_unsafe_ops=self.config.allow_unsafe_ops)
        batcher = Batcher(model.predict_inputs, self.config.batch_max_size, self.config.batch_max_wait_ms / 1000.0,
                          enabled=self.config.batching,
                          on_batch=self._on_batch(name) if self._on_batch else None, name=name,
                          expected=(lambda: self._expected(name)) if self._expected else None)
        served = ServedModel(name, version, model, batcher, 0.0)
        size = int(model.card["featurizer"]["contract"]["input_size"])
        served.predict_inputs(np.zeros((1, size, size, 3), np.float32))  # warm-up: graph optimisation, kernels
        served.load_seconds = time.perf_counter() - started
        if self._on_load:
            self._on_load(name, served.load_seconds)
        log.info("model %s version %d ready in %.1f s", name, version, served.load_seconds)
        return served

    def _load_secondary(self, name: str, version: int, path: Path, card: dict, started: float):
        from imgclf.models.serving import load_secondary

        model = load_secondary(path, allow_unsafe_ops=self.config.allow_unsafe_ops)
        if card.get("kind") == ServedDigits.kind:
            served = ServedDigits(name, version, model, self.config.max_pixels)
            served.predict_inputs(np.zeros((1, 28, 28), np.float32))  # warm-up
        else:
            served = ServedRegression(name, version, model)
            served.predict_values(np.zeros((1, 1), np.float32))
        served.load_seconds = time.perf_counter() - started
        if self._on_load:
            self._on_load(name, served.load_seconds)
        log.info("model %s version %d (%s) ready in %.1f s", name, version, served.kind, served.load_seconds)
        return served

    def get(self, name: str | None = None, version: int | None = None) -> ServedModel:
        """Return a served model (the default one when ``name`` is empty).

        Raises:
            NotReady: models are still loading (or loading failed).
            ModelNotFound: no such model, or that version is not the one served.
        """
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
        images = [name for name, served in sorted(self.models.items()) if served.kind == IMAGE_CLASSIFIER]
        return (images or sorted(self.models))[0]

    def close(self) -> None:
        """Stop the batchers."""
        for served in self.models.values():
            if served.batcher is not None:
                served.batcher.close()
