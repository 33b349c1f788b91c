"""The model repository: ``REPO/NAME/<integer version>/``, TensorFlow Serving's layout.

Find models and versions, resolve what a user typed ("REPO/NAME" for the
newest version, "REPO/NAME/VERSION" for one), and load a version to predict
with it through its SavedModel. Only complete versions count: a version
directory appears by one rename when everything in it is written (see
:mod:`training.export`), and hidden work directories are never listed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurizer.errors import ImgclfError, InvalidImage
from featurizer.image_io import (DEFAULT_MAX_PIXELS, decode_rgb, decode_to_input, normalize, open_checked,
                                 resize_bilinear)
from training import export_names as names

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[0-9]{1,18}")  # fits int64, as TF Serving parses it


class ModelNotFound(ImgclfError, LookupError):
    """No model, or no such version of it, in the repository."""


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe model name (one path component), else raise ValueError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("model name must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'; "
                         f"received {name!r}")
    return name


def integer_dirs(model_dir: Path) -> dict[int, Path]:
    """Return every integer-named directory of ``model_dir`` (complete or not) by version."""
    found: dict[int, Path] = {}
    try:
        entries = list(Path(model_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if _VERSION.fullmatch(entry.name) and entry.is_dir():
            found[int(entry.name)] = entry
    return found


def is_complete(version_dir: Path) -> bool:
    """Return whether ``version_dir`` holds a servable export."""
    return all((Path(version_dir) / required).is_file() for required in names.REQUIRED_FILES)


def _complete_versions(model_dir: Path) -> list[int]:
    return sorted(v for v, path in integer_dirs(model_dir).items() if is_complete(path))


def list_versions(repo: str | Path, name: str) -> list[int]:
    """Return the complete versions of model ``name`` in ``repo``, oldest first."""
    return _complete_versions(Path(repo) / validate_name(name))


def list_models(repo: str | Path) -> dict[str, list[int]]:
    """Return ``{name: versions}`` for every model in ``repo`` with at least one complete version."""
    models = {}
    try:
        entries = sorted(Path(repo).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return models
    for entry in entries:
        if entry.is_dir() and _NAME.fullmatch(entry.name):
            versions = _complete_versions(entry)
            if versions:
                models[entry.name] = versions
    return models


def resolve(spec: str | Path) -> Path:
    """Return the version directory ``spec`` names: "REPO/NAME" (newest version) or "REPO/NAME/VERSION".

    Raises:
        ModelNotFound: naming what the repository does hold.
    """
    path = Path(spec)
    if _VERSION.fullmatch(path.name):
        if is_complete(path):
            return path
        versions = _complete_versions(path.parent)
        if versions:  # the parent is a model: this names a version it lacks
            raise ModelNotFound(f"model {str(path.parent)!r} has no version {path.name}; "
                                f"versions: {_join(versions)}")
    if not _NAME.fullmatch(path.name):
        raise ModelNotFound(f"{str(spec)!r} names no model; expected REPO/NAME or REPO/NAME/VERSION")
    versions = _complete_versions(path)
    if versions:
        return path / str(versions[-1])
    repo = path.parent
    if not repo.is_dir():
        raise ModelNotFound(f"no model repository at {str(repo)!r} (from {str(spec)!r})")
    models = list_models(repo)
    held = ", ".join(f"{n} (versions {_join(v)})" for n, v in models.items()) or "none"
    if path.is_dir():
        raise ModelNotFound(f"model {str(path)!r} has no complete version yet; models in {str(repo)!r}: {held}")
    raise ModelNotFound(f"no model {path.name!r} in {str(repo)!r}; models there: {held}")


def _op_error_text(message: str) -> str:
    """Return the line of a TensorFlow op error that says what went wrong (not where)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    boilerplate = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or ["unknown error"])[-1]


def _join(items) -> str:
    return ", ".join(str(i) for i in items) or "none"


@dataclass
class LoadedModel:
    """One exported version, loaded: predict from image bytes or from bottleneck vectors."""

    path: Path  # the version directory
    name: str
    version: int
    labels: list[str]
    card: dict
    max_pixels: int = DEFAULT_MAX_PIXELS  # images with more pixels are refused before decoding
    _saved_model: object = field(default=None, repr=False)
    device: str = ""  # "/device:GPU:0" etc.: every call runs under tf.device(device); "" = TensorFlow's placement

    def _on_device(self):
        """Return the device scope of this model's calls (thread-local: entered by the calling thread)."""
        from featurizer.devices import device_scope

        return device_scope(self.device)

    @property
    def bottleneck_dim(self) -> int:
        """Return the length of the bottleneck vectors the model takes."""
        return int(self.card["featurizer"]["dim"])

    def predict_bytes(self, images: list[bytes]) -> np.ndarray:
        """Return probabilities [N, C] for encoded images, through the SavedModel's serving signature.

        This is what TensorFlow Serving computes; EXIF orientation is not applied
        (see :mod:`training.serving_preprocess`). imgclf's own CLI and service use
        :meth:`decode` + :meth:`predict_rgb`, which preprocess exactly as training did.

        Raises:
            InvalidImage: an image is empty, corrupt, too large or of an unsupported type
                (the message names its index).
        """
        import tensorflow as tf

        for index, data in enumerate(images):
            try:
                open_checked(bytes(data), self.max_pixels).close()
            except InvalidImage as exc:
                raise type(exc)(f"image {index}: {exc}") from exc
        if not images:
            return np.zeros((0, len(self.labels)), np.float32)
        try:
            return self._serve_bytes(images)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
            batch_error = exc
        for index, data in enumerate(images):  # say which image TensorFlow could not decode
            try:
                self._serve_bytes([data])
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
                raise InvalidImage(f"image {index}: cannot decode it: {_op_error_text(exc.message)}") from exc
        raise InvalidImage(f"cannot decode the images: {_op_error_text(batch_error.message)}") from batch_error

    def _serve_bytes(self, images: list[bytes]) -> np.ndarray:
        import tensorflow as tf

        signature = self._saved_model.signatures[names.SERVING_SIGNATURE]
        with self._on_device():
            out = signature(**{names.IMAGE_BYTES_KEY: tf.constant([bytes(d) for d in images], tf.string)})
        return out[names.PROBABILITIES_KEY].numpy()

    def decode(self, data: bytes) -> np.ndarray:
        """Decode and validate one encoded image as the featurizer does (EXIF applied): uint8 RGB [H, W, 3].

        Raises:
            InvalidImage: empty, corrupt, too large or of an unsupported type.
        """
        return decode_rgb(bytes(data), self.max_pixels, self._contract.get("jpeg_dct_method"))

    def preprocess(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Return (uint8 RGB as :meth:`decode`, network input as :meth:`to_input`) for one encoded image, faster.

        Raises:
            InvalidImage: empty, corrupt, too large or of an unsupported type.
        """
        c = self._contract
        return decode_to_input(bytes(data), int(c["input_size"]), float(c["input_mean"]), float(c["input_std"]),
                               self.max_pixels, c.get("jpeg_dct_method"))

    def to_input(self, rgb: np.ndarray) -> np.ndarray:
        """Resize and normalise a decoded image to the network input [S, S, 3] (float32)."""
        c = self._contract
        return normalize(resize_bilinear(rgb, int(c["input_size"])), float(c["input_mean"]), float(c["input_std"]))

    def predict_rgb(self, images: list[np.ndarray]) -> np.ndarray:
        """Return probabilities [N, C] for decoded RGB images, preprocessed exactly as training features were."""
        if not images:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.predict_inputs(np.stack([self.to_input(rgb) for rgb in images]))

    def predict_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Return probabilities [N, C] for network inputs [N, S, S, 3], through the images signature."""
        import tensorflow as tf

        signature = self._saved_model.signatures[names.IMAGES_SIGNATURE]
        with self._on_device():
            out = signature(**{names.IMAGES_KEY: tf.constant(np.asarray(inputs, dtype=np.float32))})
        return out[names.PROBABILITIES_KEY].numpy()

    @property
    def _contract(self) -> dict:
        return self.card["featurizer"]["contract"]

    def predict_bottlenecks(self, vectors: np.ndarray) -> np.ndarray:
        """Return probabilities [N, C] for bottleneck vectors [N, D], through the bottleneck signature."""
        import tensorflow as tf

        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.bottleneck_dim:
            raise ValueError(f"bottleneck vectors must be [N, {self.bottleneck_dim}]; "
                             f"received shape {vectors.shape}")
        signature = self._saved_model.signatures[names.BOTTLENECK_SIGNATURE]
        with self._on_device():
            out = signature(**{names.BOTTLENECK_KEY: tf.constant(vectors)})
        return out[names.PROBABILITIES_KEY].numpy()


def read_card(version_dir: str | Path) -> dict:
    """Return the model card (a JSON object) of a complete version directory.

    Raises:
        ModelNotFound: the directory is not a complete export, or its card is unreadable or not an object.
    """
    path = Path(version_dir)
    if not is_complete(path):
        missing = [f for f in names.REQUIRED_FILES if not (path / f).is_file()]
        raise ModelNotFound(f"{str(path)!r} is not an exported model version (missing {', '.join(missing)})")
    card_file = path / names.MODEL_CARD_FILE
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or UTF-8
        raise ModelNotFound(f"{str(card_file)!r} is not a readable model card ({type(exc).__name__}: {exc})") from exc
    if not isinstance(card, dict):
        raise ModelNotFound(f"{str(card_file)!r} is not a readable model card (a JSON object, not "
                            f"{type(card).__name__})")
    return card


def load_model(version_dir: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               device: str | None = None, allow_unsafe_ops: bool | None = None) -> LoadedModel:
    """Load one version directory (see :func:`resolve`) for prediction.

    ``device`` pins the model's variables and calls ("/device:GPU:0", "/device:CPU:0", "" for
    TensorFlow's placement); by default ``IMGCLF_DEVICE``, after the process's devices are
    configured (:func:`featurizer.devices.configure_tensorflow`).

    A SavedModel is a program: its ops are checked against imgclf's inference
    allow-list (:func:`featurizer.op_policy.check_saved_model`) before TensorFlow
    loads anything. ``allow_unsafe_ops`` True loads it anyway (with a logged
    warning); None reads ``IMGCLF_ALLOW_UNSAFE_OPS`` ("1"/"true" allows).

    Raises:
        ModelNotFound: the directory is not a complete export, or its model card is corrupt or has no labels.
        UnsafeGraph: the SavedModel holds ops outside the allow-list (names them) and unsafe ops are not allowed.
        GraphError: saved_model.pb cannot be parsed.
        ValueError: its labels.txt and model card disagree, or IMGCLF_ALLOW_UNSAFE_OPS is not a yes or a no.
    """
    import tensorflow as tf

    from featurizer.op_policy import allow_unsafe_ops_from_env, check_saved_model

    path = Path(version_dir)
    card = read_card(path)
    labels = card.get("labels")
    if not isinstance(labels, list):
        raise ModelNotFound(f"{str(path / names.MODEL_CARD_FILE)!r} is not a readable model card with labels "
                            f"(labels: {type(labels).__name__})")
    labels_file = path / names.LABELS_FILE
    if labels_file.is_file() and labels_file.read_text(encoding="utf-8").splitlines() != labels:
        raise ValueError(f"{str(labels_file)!r} disagrees with the labels in {names.MODEL_CARD_FILE}")
    version = int(path.name) if _VERSION.fullmatch(path.name) else int(card.get("version", 0))
    check_saved_model(path, allow_unsafe_ops=allow_unsafe_ops_from_env() if allow_unsafe_ops is None
                      else bool(allow_unsafe_ops))
    from featurizer.devices import configure_tensorflow, device_scope

    device = configure_tensorflow().device if device is None else device
    with device_scope(device):  # the variables are created on the pinned device
        saved_model = tf.saved_model.load(str(path))
    log.info("loaded model %s version %d (%d classes) from %s", card.get("name", path.parent.name), version,
             len(labels), path)
    return LoadedModel(path=path, name=card.get("name", path.parent.name), version=version, labels=labels,
                       card=card, max_pixels=max_pixels, _saved_model=saved_model, device=device)
