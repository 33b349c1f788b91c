"""The image classifier as a servable: pictures (or bottleneck vectors) in, labels out, batched per worker.

Pictures are decoded in Python exactly as training decoded them (EXIF applied),
then predicted through the SavedModel's images signature in batches gathered
from concurrent requests (:mod:`imgclf.service.servables.batching`) — or, for a model
served on OpenVINO (``IMGCLF_BACKEND``, :mod:`imgclf.training.serving_backend`),
through its OpenVINO featurizer and the head. Signature ``bottleneck`` takes
featurizer vectors.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.core import export_names as names
from imgclf.core.errors import BadRequest
from imgclf.core.model_kind import ModelKind
from imgclf.core.values import describe
from imgclf.service.servables.base import STRING, LoadContext, Servable, Signature, TensorSpec
from imgclf.training.classifier import LoadedModel, load_model

log = logging.getLogger(__name__)


class ImageClassifierServable(Servable):
    """An exported image classifier (Inception-v3 bottlenecks + a dense head)."""

    kind = ModelKind.IMAGE_CLASSIFIER
    def __init__(self, name: str, version: int, model: LoadedModel, context: LoadContext):
        super().__init__(name, version, model.labels, model.card)
        self.model = model
        self.batcher = context.batcher(name, model.infer_inputs, lanes=model.batch_lanes)
        # Scores above it are flagged unfamiliar: the export's threshold, unless the service sets another rate.
        self.unfamiliar_threshold = _threshold(model, context.config.unfamiliar_tpr, name, version)
        self._reliability = _read_optional(model.path / names.RELIABILITY_DIAGRAM_FILE)

    @classmethod
    def load(cls, path: Path, name: str, version: int, context: LoadContext) -> ImageClassifierServable:
        """Load an image classifier's version directory and start its batcher."""
        model = load_model(path, max_pixels=context.config.max_pixels,
                           allow_unsafe_ops=context.config.allow_unsafe_ops, backend=context.config.backend)
        return cls(name, version, model, context)

    def reliability_diagram(self) -> bytes | None:
        """Return the export's reliability diagram (PNG), read when the version loaded; None when it has none."""
        return self._reliability

    def warm_up(self) -> None:
        """Decode small pictures as requests are decoded, and predict one through the batcher.

        A request's first decode traces the decode functions (0.26 s here, seconds on a loaded machine, for
        every request that arrives meanwhile); its first model call optimises the graph and picks kernels.
        Warmed: a JPEG and a PNG, and with ``--decode fast`` a JPEG large enough to be DCT-scaled.
        """
        size = int(self.card["featurizer"]["contract"]["input_size"])
        pictures = [_blank_picture("JPEG", (48, 32)), _blank_picture("PNG", (48, 32))]
        if self.model.decode_mode == "fast":
            pictures.append(_blank_picture("JPEG", (4 * size, 4 * size)))
        inputs = [self.decode_input(picture) for picture in pictures]  # what requests do (the RGB too: annotation)
        for picture in pictures:
            self.decode_picture(picture)
        self.batcher.submit(inputs[0][None])

    def make_signatures(self) -> dict[str, Signature]:
        """Return the serving (image bytes) and bottleneck signatures; both answer probabilities, classes, labels,
        whether each input is unfamiliar and its unfamiliar score."""
        outputs = (TensorSpec(names.PROBABILITIES_KEY, "float32", (-1, len(self.labels))),
                   TensorSpec(names.CLASSES_KEY, "int64", (-1,)), TensorSpec(names.LABELS_KEY, STRING, (-1,)),
                   TensorSpec(names.UNFAMILIAR_KEY, "bool", (-1,)),
                   TensorSpec(names.UNFAMILIAR_SCORE_KEY, "float32", (-1,)))
        pictures = TensorSpec(names.IMAGE_BYTES_KEY, STRING, (-1,))
        bottlenecks = TensorSpec(names.BOTTLENECK_KEY, "float32", (-1, self.model.bottleneck_dim))
        return {names.SERVING_SIGNATURE: Signature(names.SERVING_SIGNATURE, pictures, outputs),
                names.BOTTLENECK_SIGNATURE: Signature(names.BOTTLENECK_SIGNATURE, bottlenecks, outputs)}

    def decode_picture(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Decode and validate one encoded image; return (uint8 RGB, network input [S, S, 3])."""
        return self.model.preprocess(data)

    def decode_input(self, data: bytes) -> np.ndarray:
        """Decode and validate one encoded image; return its network input [S, S, 3] (no RGB copy)."""
        return self.model.preprocess_input(data)

    def decode_instance(self, value, index: int, signature: Signature) -> np.ndarray:
        """Return the network input of one encoded image (serving), or check one bottleneck row (bottleneck)."""
        if signature.takes_pictures:
            if not isinstance(value, bytes):
                raise BadRequest(f'instance {index} must be {{"b64": "<base64 image>"}} or '
                                 f'{{"{names.IMAGE_BYTES_KEY}": {{"b64": "<base64 image>"}}}}; '
                                 f"received {describe(value)}")
            return self.picture_input(value, index)
        return _bottlenecks([value], self.model.bottleneck_dim, index)[0]

    def decode_batch(self, values: list, signature: Signature) -> np.ndarray:
        """Return network inputs [N, S, S, 3] (serving) or bottleneck rows [N, D] (bottleneck)."""
        if signature.takes_pictures:
            return super().decode_batch(values, signature)
        return _bottlenecks(values, self.model.bottleneck_dim)

    def predict(self, batch: np.ndarray, signature: Signature) -> dict[str, np.ndarray]:
        """Return probabilities, classes (the argmax), labels, unfamiliar flags and scores of network inputs or
        bottleneck rows (flags: scores above :attr:`unfamiliar_threshold`)."""
        if signature.takes_pictures:
            out = self.batcher.submit(np.asarray(batch, dtype=np.float32))
        else:
            out = self.model.infer_bottlenecks(batch)
        probabilities = np.asarray(out[names.PROBABILITIES_KEY], dtype=np.float32)
        scores = np.asarray(out[names.UNFAMILIAR_SCORE_KEY], dtype=np.float32)
        classes = np.argmax(probabilities, axis=1)  # as the SavedModel's tf.argmax: the first of equal maxima
        return {names.PROBABILITIES_KEY: probabilities, names.CLASSES_KEY: classes.astype(np.int64),
                names.LABELS_KEY: np.array([self.labels[c] for c in classes], dtype=object),
                names.UNFAMILIAR_KEY: scores > np.float32(self.unfamiliar_threshold),
                names.UNFAMILIAR_SCORE_KEY: scores}


def _threshold(model: LoadedModel, tpr: float, name: str, version: int) -> float:
    """Return the unfamiliar threshold of a loaded model: the export's (``tpr`` 0), else the one at ``tpr`` on the
    validation scores the export keeps (an export that kept none keeps its own, with a warning)."""
    if not tpr:
        return model.detector.threshold
    try:
        return model.detector.threshold_at(tpr)
    except ValueError as exc:
        log.warning("model %s version %s: IMGCLF_UNFAMILIAR_TPR=%g is not applied (%s); it keeps the export's "
                    "unfamiliar threshold %g", name, version, tpr, exc, model.detector.threshold)
        return model.detector.threshold


def _read_optional(path: Path) -> bytes | None:
    """Return a file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _bottlenecks(items: list, dim: int, first: int = 0) -> np.ndarray:
    """Return bottleneck rows [N, dim] as float32, refusing non-numbers and non-finite values (``first``: the
    first row's instance number, for messages)."""
    rows = []
    for index, row in enumerate(items, first):
        if not isinstance(row, list) or len(row) != dim:
            raise BadRequest(f"instance {index} must be a list of {dim} numbers; received {describe(row)}")
        if not set(map(type, row)) <= {int, float}:  # no strings, booleans or nested lists
            raise BadRequest(f"instance {index} must hold only numbers; received "
                             f"{sorted(t.__name__ for t in set(map(type, row)) - {int, float})}")
        rows.append(row)
    try:
        vectors = np.asarray(rows, dtype=np.float64)
    except OverflowError as exc:  # an integer beyond float range
        raise BadRequest(f"bottleneck values must be finite float32 numbers: {exc}") from exc
    with np.errstate(over="ignore"):
        vectors = vectors.astype(np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise BadRequest(f"bottleneck values must be finite float32 numbers (no NaN or Infinity); "
                         f"instance {first + int(np.argmax(bad))} is not")
    return vectors


def _blank_picture(kind: str, size: tuple[int, int]) -> bytes:
    """Return a grey picture of ``size`` encoded as ``kind`` (a Pillow format name)."""
    out = io.BytesIO()
    Image.new("RGB", size, (128, 128, 128)).save(out, kind)
    return out.getvalue()
