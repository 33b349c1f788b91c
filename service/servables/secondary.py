"""The secondary models as servables: the digit classifiers (mnist-mlp, lenet5) and the regression (quadratic).

They are tiny, so each request calls the model itself (no batcher), in float32
whatever the worker's precision (:func:`imgclf.core.tf_private.full_precision`,
applied by :class:`imgclf.models.serving.SecondaryModel`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.errors import BadRequest
from imgclf.core.model_kind import ModelKind
from imgclf.core.values import describe, is_number
from imgclf.featurizer.images.decode import decode_rgb
from imgclf.models import signature as sig
from imgclf.models.digit_image import to_mnist
from imgclf.models.serving import SecondaryModel, load_secondary
from imgclf.service.servables.base import LoadContext, Servable, Signature, card_signature


class SecondaryServable(Servable):
    """A secondary model: one ``serving_default`` signature, described by its model card."""

    def __init__(self, name: str, version: int, model: SecondaryModel, context: LoadContext):
        super().__init__(name, version, model.labels, model.card)
        self.model = model
        self.max_pixels = context.config.max_pixels

    @classmethod
    def load(cls, path: Path, name: str, version: int, context: LoadContext) -> SecondaryServable:
        """Load a secondary model's version directory."""
        return cls(name, version, load_secondary(path, allow_unsafe_ops=context.config.allow_unsafe_ops), context)

    def make_signatures(self) -> dict[str, Signature]:
        """Return the one signature, as the model card describes it."""
        return {names.SERVING_SIGNATURE: card_signature(self.card)}


class DigitClassifierServable(SecondaryServable):
    """mnist-mlp, lenet5: 28×28 digits in, ten probabilities out.

    It answers POST /predict like an image classifier: any picture of a digit is
    turned into an MNIST-style input (:func:`imgclf.models.digit_image.to_mnist`).
    """

    kind = ModelKind.DIGIT_CLASSIFIER
    input_notes = {
        "key": sig.IMAGES_KEY,
        "accepts": ["a 28x28 array of numbers (a trailing channel of 1 is allowed)",
                    '{"b64": "<base64 image>"}: a picture of one digit, any size and mode'],
        "range": "an array whose values all lie in [0, 1] is taken as 0-1; otherwise values are 0-255 and "
                 "divided by 255",
        "convention": "white digit on black like MNIST; pictures with a light background are inverted, "
                      "cropped to the digit, scaled to 20 px and centred by mass",
    }

    def warm_up(self) -> None:
        """Predict one blank digit."""
        self.model.predict(np.zeros((1, sig.IMAGE_SIZE, sig.IMAGE_SIZE), np.float32))

    def decode_picture(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Decode and validate one encoded picture; return (uint8 RGB, MNIST-style input [28, 28])."""
        rgb = decode_rgb(bytes(data), self.max_pixels)
        return rgb, to_mnist(rgb)

    def decode_instance(self, value, index: int, signature: Signature) -> np.ndarray:
        """Return one MNIST-style input [28, 28] in [0, 1]: from a 28×28 array (0-1 or 0-255) or a picture (bytes)."""
        if isinstance(value, bytes):
            return self.picture_input(value, index)
        if isinstance(value, dict):
            raise BadRequest(f'instance {index} must be a 28x28 array or {{"b64": "<base64 image>"}}; '
                             f"received {describe(value)}")
        return _digit_array(value, index)

    def predict(self, batch: np.ndarray, signature: Signature) -> dict[str, np.ndarray]:
        """Return probabilities [N, 10] and classes [N] of digits [N, 28, 28] in [0, 1]."""
        outputs = self.model.predict(np.asarray(batch, dtype=np.float32))
        return {sig.PROBABILITIES_KEY: np.asarray(outputs[sig.PROBABILITIES_KEY], dtype=np.float32),
                sig.CLASSES_KEY: np.asarray(outputs[sig.CLASSES_KEY]).reshape(-1).astype(np.int64)}


class RegressionServable(SecondaryServable):
    """quadratic: raw x in, raw y out; not for POST /predict."""

    kind = ModelKind.REGRESSION
    input_notes = {
        "key": sig.X_KEY,
        "accepts": ["a number x", "[x]"],
        "range": "raw x (the model was trained on [-20, 20]; outside it extrapolates)",
    }

    def warm_up(self) -> None:
        """Predict x = 0."""
        self.model.predict(np.zeros((1, 1), np.float32))

    @property
    def takes_pictures(self) -> bool:
        """Return False: a regression takes numbers."""
        return False

    def decode_picture(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Refuse a picture: a regression takes numbers."""
        raise BadRequest(f"model {self.name!r} is a regression model (x in, y out), not an image classifier")

    def decode_instance(self, item, index: int, signature: Signature) -> np.ndarray:
        """Return one x as [x] (float64; :meth:`decode_batch` checks it fits float32): a number or [number]."""
        if isinstance(item, list) and len(item) == 1:
            item = item[0]
        if not is_number(item):
            raise BadRequest(f"instance {index} must be a number x or [x]; received {describe(item)}")
        try:
            return np.array([float(item)], dtype=np.float64)
        except OverflowError as exc:  # an integer beyond float range
            raise BadRequest(f"instance {index}: x must be a finite float32 number; received a huge integer") from exc

    def decode_batch(self, items: list, signature: Signature) -> np.ndarray:
        """Return x [N, 1] as float32, refusing values float32 cannot hold."""
        x = super().decode_batch(items, signature)
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        if not np.isfinite(x32).all():
            raise BadRequest(f"x values must be finite float32 numbers; instance {int(np.argmin(np.isfinite(x32)))} "
                             "is not")
        return x32

    def predict(self, batch: np.ndarray, signature: Signature) -> dict[str, np.ndarray]:
        """Return y [N, 1] for x [N, 1] (raw units)."""
        y = self.model.predict(np.asarray(batch, dtype=np.float32))[sig.Y_KEY]
        return {sig.Y_KEY: np.asarray(y, dtype=np.float32).reshape(-1, 1)}


def _digit_array(item, index: int) -> np.ndarray:
    """Return a 28×28 array instance (0-1 or 0-255, optionally 28×28×1) as float32 in [0, 1]."""
    shape_error = BadRequest(f"instance {index} must be a 28x28 array of numbers (or 28x28x1) or "
                             f'{{"b64": ...}}; received {describe(item)}')
    if not isinstance(item, list) or len(item) != sig.IMAGE_SIZE:
        raise shape_error
    rows = []
    for row in item:
        if not isinstance(row, list) or len(row) != sig.IMAGE_SIZE:
            raise shape_error
        if all(isinstance(v, list) and len(v) == 1 for v in row):  # [28, 28, 1]
            row = [v[0] for v in row]
        if not all(is_number(v) for v in row):
            raise BadRequest(f"instance {index} must hold only numbers (pixel values 0-1 or 0-255)")
        rows.append(row)
    try:
        pixels = np.asarray(rows, dtype=np.float64)
    except OverflowError as exc:
        raise BadRequest(f"instance {index}: pixel values must lie in 0-255; received a huge integer") from exc
    if not np.isfinite(pixels).all():
        raise BadRequest(f"instance {index}: pixel values must be finite numbers (no NaN or Infinity)")
    if pixels.min() < 0 or pixels.max() > 255:
        raise BadRequest(f"instance {index}: pixel values must lie in 0-1 or 0-255; received "
                         f"{pixels.min():g}..{pixels.max():g}")
    if pixels.max() > 1:
        pixels = pixels / 255.0
    return pixels.astype(np.float32)
