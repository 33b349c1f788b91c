"""An exported image classifier, loaded: predict from image bytes, decoded images or bottleneck vectors.

:func:`load_model` loads one version of the model repository
(:mod:`imgclf.core.repository`) through :func:`imgclf.core.saved_model.load_version`;
:class:`LoadedModel` decodes and preprocesses images exactly as the featurizer
did for training and calls the SavedModel's signatures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.devices import device_scope
from imgclf.core.errors import InvalidImage, ModelNotFound
from imgclf.core.model_kind import ModelKind
from imgclf.core.saved_model import load_version
from imgclf.featurizer.images.decode import (
    DEFAULT_MAX_PIXELS,
    decode_input,
    decode_rgb,
    decode_to_input,
    normalize,
    open_checked,
    resize_bilinear,
)
from imgclf.training.detector import Detector

log = logging.getLogger(__name__)


def _op_error_text(message: str) -> str:
    """Return the line of a TensorFlow op error that says what went wrong (not where)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    boilerplate = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or ["unknown error"])[-1]


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
    # The featurizer on another runtime (imgclf.training.serving_backend): images go through it, then the
    # bottleneck signature (the head); None = the SavedModel's images signature, all on TensorFlow.
    featurizer_graph: object = field(default=None, repr=False)
    backend: str = "tensorflow"  # what runs the featurizer: tensorflow | openvino
    # The unfamiliar-input detector the export's head carries (method, threshold, validation scores), and
    # its calibration temperature, read from calibration.json (checked against the card when loading).
    detector: Detector = field(default_factory=Detector)
    temperature: float = 1.0

    def _on_device(self):
        """Return the device scope of this model's calls (thread-local: entered by the calling thread)."""
        return device_scope(self.device)

    @property
    def batch_lanes(self) -> int:
        """Return how many batches may usefully run at once: OpenVINO's streams, else one."""
        return int(getattr(self.featurizer_graph, "streams", 1) or 1)

    @property
    def bottleneck_dim(self) -> int:
        """Return the length of the bottleneck vectors the model takes."""
        return int(self.card["featurizer"]["dim"])

    def predict_bytes(self, images: list[bytes]) -> np.ndarray:
        """Return probabilities [N, C] for encoded images, through the SavedModel's serving signature.

        This is what TensorFlow Serving computes; EXIF orientation is not applied
        (see :mod:`imgclf.training.serving_preprocess`). imgclf's own CLI and service use
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
        c = self._contract
        return decode_rgb(bytes(data), self.max_pixels, c.get("jpeg_dct_method"), self.decode_mode,
                          int(c["input_size"]))

    def preprocess(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Return (uint8 RGB as :meth:`decode`, network input as :meth:`to_input`) for one encoded image, faster.

        Raises:
            InvalidImage: empty, corrupt, too large or of an unsupported type.
        """
        c = self._contract
        return decode_to_input(bytes(data), int(c["input_size"]), float(c["input_mean"]), float(c["input_std"]),
                               self.max_pixels, c.get("jpeg_dct_method"), self.decode_mode)

    def preprocess_input(self, data: bytes) -> np.ndarray:
        """Return the network input of one encoded image, as :meth:`preprocess` without the RGB copy.

        Raises:
            InvalidImage: empty, corrupt, too large or of an unsupported type.
        """
        c = self._contract
        return decode_input(bytes(data), int(c["input_size"]), float(c["input_mean"]), float(c["input_std"]),
                            self.max_pixels, c.get("jpeg_dct_method"), self.decode_mode)

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
        return self.infer_inputs(inputs)[names.PROBABILITIES_KEY]

    def infer_inputs(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Return probabilities [N, C] and unfamiliar scores [N] (float32) for network inputs [N, S, S, 3]."""
        import tensorflow as tf

        if self.featurizer_graph is not None:
            return self.infer_bottlenecks(self.featurizer_graph.run(np.asarray(inputs, dtype=np.float32)))

        signature = self._saved_model.signatures[names.IMAGES_SIGNATURE]
        with self._on_device():
            out = signature(**{names.IMAGES_KEY: tf.constant(np.asarray(inputs, dtype=np.float32))})
        return _head_outputs(out)

    @property
    def _contract(self) -> dict:
        return self.card["featurizer"]["contract"]

    @property
    def decode_mode(self) -> str:
        """Return how the training features decoded JPEGs ("exact", or "fast": DCT-scaled); cards before it: exact."""
        return self._contract.get("decode", "exact")

    def predict_bottlenecks(self, vectors: np.ndarray) -> np.ndarray:
        """Return probabilities [N, C] for bottleneck vectors [N, D], through the bottleneck signature."""
        return self.infer_bottlenecks(vectors)[names.PROBABILITIES_KEY]

    def infer_bottlenecks(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """Return probabilities [N, C] and unfamiliar scores [N] (float32) for bottleneck vectors [N, D]."""
        import tensorflow as tf

        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.bottleneck_dim:
            raise ValueError(f"bottleneck vectors must be [N, {self.bottleneck_dim}]; "
                             f"received shape {vectors.shape}")
        signature = self._saved_model.signatures[names.BOTTLENECK_SIGNATURE]
        with self._on_device():
            out = signature(**{names.BOTTLENECK_KEY: tf.constant(vectors)})
        return _head_outputs(out)


def _head_outputs(out: dict) -> dict[str, np.ndarray]:
    """Return the probabilities and unfamiliar scores of a signature's outputs as float32 numpy arrays."""
    return {key: np.asarray(out[key].numpy(), dtype=np.float32)
            for key in (names.PROBABILITIES_KEY, names.UNFAMILIAR_SCORE_KEY)}


def read_statistics(version_dir: Path, card: dict) -> tuple[float, Detector]:
    """Return the temperature and the unfamiliar-input detector an export's head was built with.

    They are read from ``calibration.json``, checked against its sha256 in the card, so that a version is
    never served with its calibration or its unfamiliar-input threshold silently missing. (The detector's
    statistics themselves are constants of the exported head graph, which computes the scores.)

    Raises:
        ValueError: a file is missing, differs from the card, or does not parse (TF Serving's status:
            INVALID_ARGUMENT); the message names the file and the way out.
    """
    import json

    from imgclf.featurizer.graph.load import file_sha256

    listed = card.get("files") if isinstance(card.get("files"), dict) else {}
    retrain = "retrain the model with imgclf train, which writes them"
    if names.CALIBRATION_FILE not in listed:
        raise ValueError(f"{names.CALIBRATION_FILE} is not in the model card: the export has no calibration or "
                         f"unfamiliar-input statistics (made before imgclf wrote them?); {retrain}")

    def checked(file: str) -> Path:
        path = Path(version_dir) / file
        entry = listed.get(file)
        if not path.is_file():
            raise ValueError(f"{file} is missing from the export; {retrain}")
        if not isinstance(entry, dict) or entry.get("sha256") != file_sha256(path):
            raise ValueError(f"{file} differs from the sha256 its model card lists (corrupt or edited); {retrain}")
        return path

    try:
        statistics = json.loads(checked(names.CALIBRATION_FILE).read_text(encoding="utf-8"))
        temperature = statistics["temperature"]
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < 1e6:
            raise ValueError(f"the temperature must be a number > 0; received {temperature!r}")
        entry = statistics["unfamiliar"]
        return float(temperature), Detector.from_dict(entry)
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{names.CALIBRATION_FILE} cannot be read ({type(exc).__name__}: {exc}); {retrain}") from exc


def load_model(version_dir: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               device: str | None = None, allow_unsafe_ops: bool | None = None,
               backend: str = "card") -> LoadedModel:
    """Load one version directory (see :func:`resolve`) for prediction.

    ``device`` pins the model's variables and calls ("/device:GPU:0", "/device:CPU:0", "" for
    TensorFlow's placement); by default ``IMGCLF_DEVICE``, after the process's devices are
    configured (:func:`imgclf.core.devices.configure_tensorflow`).

    A SavedModel is a program: its ops are checked against imgclf's inference
    allow-list (:func:`imgclf.core.op_policy.check_saved_model`) before TensorFlow
    loads anything. ``allow_unsafe_ops`` True loads it anyway (with a logged
    warning); None reads ``IMGCLF_ALLOW_UNSAFE_OPS`` ("1"/"true" allows).

    ``backend`` (card | tensorflow | openvino | auto) says what runs the
    featurizer; see :mod:`imgclf.training.serving_backend`.

    Raises:
        ModelNotFound: the directory is not a complete export, its model card is corrupt or has no labels,
            or it holds another kind of model.
        UnsafeGraph: the SavedModel holds ops outside the allow-list (names them) and unsafe ops are not allowed.
        GraphError: saved_model.pb cannot be parsed.
        ValueError: its labels.txt and model card disagree, its calibration or unfamiliar-input statistics are
            missing or corrupt (:func:`read_statistics`), or IMGCLF_ALLOW_UNSAFE_OPS is not a yes or a no.
    """
    loaded = load_version(version_dir, device=device, allow_unsafe_ops=allow_unsafe_ops, labels_required=True)
    if loaded.kind is not ModelKind.IMAGE_CLASSIFIER:
        raise ModelNotFound(f"{str(loaded.path)!r} holds a {loaded.kind.value} model, not an image classifier")
    from imgclf.training.serving_backend import choose_backend, load_openvino_featurizer

    try:
        temperature, detector = read_statistics(loaded.path, loaded.card)
    except ValueError as exc:
        raise ValueError(f"{str(loaded.path)!r}: {exc}") from exc
    chosen = choose_backend(loaded.path, loaded.card, backend)
    featurizer_graph = load_openvino_featurizer(loaded.path, loaded.card) if chosen == "openvino" else None
    return LoadedModel(path=loaded.path, name=loaded.name, version=loaded.version, labels=loaded.labels,
                       card=loaded.card, max_pixels=max_pixels, _saved_model=loaded.saved_model, device=loaded.device,
                       featurizer_graph=featurizer_graph, backend=chosen, detector=detector, temperature=temperature)
