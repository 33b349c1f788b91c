"""Load an exported secondary model and predict with it through its SavedModel signature.

The service's loader (:mod:`imgclf.service.servables.loader`) picks this loader from
a version's model card kind; :func:`load_secondary` returns a
:class:`SecondaryModel`, which checks each batch (shape, dtype, NaN, pixel
range) before it reaches TensorFlow, so bad input is a ValueError, never an
op error. TensorFlow only; no web framework.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.core.devices import device_scope
from imgclf.core.errors import ModelNotFound
from imgclf.core.model_kind import SECONDARY_KINDS, ModelKind
from imgclf.core.repository import read_card
from imgclf.core.saved_model import load_version
from imgclf.core.tf_private import full_precision
from imgclf.models import signature as sig

log = logging.getLogger(__name__)


def is_secondary(card: dict) -> bool:
    """Return whether a model card describes a secondary model (regression or digit classifier)."""
    return isinstance(card, dict) and card.get("kind") in SECONDARY_KINDS


@dataclass
class SecondaryModel:
    """One exported version of a secondary model, loaded."""

    path: Path  # the version directory
    name: str
    version: int
    kind: ModelKind  # REGRESSION or DIGIT_CLASSIFIER
    card: dict
    labels: list[str]  # "0".."9" for the digit models, [] for the regression
    device: str = ""  # every call runs under tf.device(device); "" = TensorFlow's placement
    _saved_model: object = field(default=None, repr=False)

    @property
    def input_key(self) -> str:
        """Return the signature's input key: "x" or "images"."""
        return sig.X_KEY if self.kind is ModelKind.REGRESSION else sig.IMAGES_KEY

    def predict(self, array) -> dict[str, np.ndarray]:
        """Run the ``serving_default`` signature on one batch; return its outputs as numpy arrays.

        Args:
            array: regression: raw x, [N, 1]; digit classifier: images [N, 28, 28], pixels in [0, 1].

        Returns:
            ``{"y": [N, 1]}`` or ``{"probabilities": [N, 10] float32, "classes": [N] int64}``.

        Raises:
            ValueError: the batch has the wrong shape or type, NaN/infinite values, or pixels outside [0, 1].
        """
        import tensorflow as tf

        values = sig.check_input(self.kind, array)
        function = self._saved_model.signatures[sig.SIGNATURE]
        with device_scope(self.device), full_precision():
            out = function(**{self.input_key: tf.constant(values)})
        return {key: value.numpy() for key, value in out.items()}


def load_secondary(version_dir: str | Path, device: str | None = None,
                   allow_unsafe_ops: bool | None = None) -> SecondaryModel:
    """Load one exported version of a secondary model for prediction.

    Args:
        version_dir: ``REPO/NAME/<version>`` (see :func:`imgclf.core.repository.resolve`).
        device: pin the variables and calls ("/device:GPU:0", "/device:CPU:0", "" for TensorFlow's
            placement); by default ``IMGCLF_DEVICE`` (:func:`imgclf.core.devices.configure_tensorflow`).
        allow_unsafe_ops: load even when the SavedModel holds ops outside the inference allow-list
            (:mod:`imgclf.core.op_policy`); None reads ``IMGCLF_ALLOW_UNSAFE_OPS``.

    Returns:
        The loaded model.

    Raises:
        ModelNotFound: not a complete export, an unreadable card, or a card of another kind of model.
        ValueError: its labels.txt and model card disagree, or the SavedModel lacks the signature.
    """
    path = Path(version_dir)
    card = read_card(path)
    if not is_secondary(card):
        raise ModelNotFound(f"{str(path)!r} holds a {card.get('kind', 'image classifier')!r} model, not a "
                            f"secondary model (kind {' or '.join(k.value for k in SECONDARY_KINDS)})")
    loaded = load_version(path, device=device, allow_unsafe_ops=allow_unsafe_ops)
    if sig.SIGNATURE not in loaded.saved_model.signatures:
        raise ValueError(f"{str(path)!r} has no {sig.SIGNATURE!r} signature "
                         f"(it has: {', '.join(loaded.saved_model.signatures) or 'none'})")
    return SecondaryModel(path=loaded.path, name=loaded.name, version=loaded.version, kind=loaded.kind,
                          card=loaded.card, labels=loaded.labels, device=loaded.device,
                          _saved_model=loaded.saved_model)
