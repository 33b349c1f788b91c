"""Load an exported secondary model and predict with it through its SavedModel signature.

The service calls :func:`is_secondary` on a version's model card to tell the
secondary models from the image classifiers, then :func:`load_secondary`; the
returned :class:`SecondaryModel` checks each batch (shape, dtype, NaN, pixel
range) before it reaches TensorFlow, so bad input is a ValueError, never an
op error. TensorFlow only; no web framework.
"""

from __future__ import annotations

import contextlib

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import signature as sig
from training import export_names as names
from training.repository import ModelNotFound, read_card

log = logging.getLogger(__name__)

_VERSION = re.compile(r"[0-9]{1,18}")


def is_secondary(card: dict) -> bool:
    """Return whether a model card describes a secondary model (regression or digit classifier)."""
    return isinstance(card, dict) and card.get("kind") in sig.KINDS


@dataclass
class SecondaryModel:
    """One exported version of a secondary model, loaded."""

    path: Path  # the version directory
    name: str
    version: int
    kind: str  # "regression" or "digit-classifier"
    card: dict
    labels: list[str]  # "0".."9" for the digit models, [] for the regression
    device: str = ""  # every call runs under tf.device(device); "" = TensorFlow's placement
    _saved_model: object = field(default=None, repr=False)

    @property
    def input_key(self) -> str:
        """Return the signature's input key: "x" or "images"."""
        return sig.X_KEY if self.kind == sig.REGRESSION else sig.IMAGES_KEY

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

        from featurizer.devices import device_scope

        values = sig.check_input(self.kind, array)
        function = self._saved_model.signatures[sig.SIGNATURE]
        with device_scope(self.device), full_precision():
            out = function(**{self.input_key: tf.constant(values)})
        return {key: value.numpy() for key, value in out.items()}


_MIXED_PRECISION_REWRITES = ("auto_mixed_precision", "auto_mixed_precision_mkl",
                             "auto_mixed_precision_onednn_bfloat16", "auto_mixed_precision_cpu")


@contextlib.contextmanager
def full_precision():
    """Run this thread's function calls in float32 even when the process has mixed precision on.

    A service worker turns on a process-wide bf16 (CPU) or fp16 (GPU) graph
    rewrite for the featurizer (``IMGCLF_PRECISION``); the secondary models are
    tiny and precise arithmetic is their point (the quadratic's y lost a factor
    of two in RMSE to bf16), so their calls switch those rewrites off. TensorFlow
    takes the rewrite options of a function call from the calling thread's
    function-call options, which are set here for the duration of the call.
    """
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context  # no public per-call switch exists

    ctx = context.context()
    saved = ctx.function_call_options
    config = config_pb2.ConfigProto.FromString(saved.config_proto_serialized)
    for option in _MIXED_PRECISION_REWRITES:
        setattr(config.graph_options.rewrite_options, option, rewriter_config_pb2.RewriterConfig.OFF)
    ctx.function_call_options = context.FunctionCallOptions(executor_type=saved.executor_type,
                                                           config_proto=config)
    try:
        yield
    finally:
        ctx.function_call_options = saved


def load_secondary(version_dir: str | Path, device: str | None = None,
                   allow_unsafe_ops: bool | None = None) -> SecondaryModel:
    """Load one exported version of a secondary model for prediction.

    Args:
        version_dir: ``REPO/NAME/<version>`` (see :func:`training.repository.resolve`).
        device: pin the variables and calls ("/device:GPU:0", "/device:CPU:0", "" for TensorFlow's
            placement); by default ``IMGCLF_DEVICE`` (:func:`featurizer.devices.configure_tensorflow`).
        allow_unsafe_ops: load even when the SavedModel holds ops outside the inference allow-list
            (:mod:`featurizer.op_policy`); None reads ``IMGCLF_ALLOW_UNSAFE_OPS``.

    Returns:
        The loaded model.

    Raises:
        ModelNotFound: not a complete export, an unreadable card, or a card of another kind of model.
        ValueError: its labels.txt and model card disagree, or the SavedModel lacks the signature.
    """
    import tensorflow as tf

    from featurizer.devices import configure_tensorflow, device_scope

    path = Path(version_dir)
    card = read_card(path)
    if not is_secondary(card):
        raise ModelNotFound(f"{str(path)!r} holds a {card.get('kind', 'image classifier')!r} model, not a "
                            f"secondary model (kind {' or '.join(sig.KINDS)})")
    labels = card.get("labels", [])
    labels_file = path / names.LABELS_FILE
    if labels_file.is_file() and labels_file.read_text(encoding="utf-8").splitlines() != labels:
        raise ValueError(f"{str(labels_file)!r} disagrees with the labels in {names.MODEL_CARD_FILE}")
    version = int(path.name) if _VERSION.fullmatch(path.name) else int(card.get("version", 0))
    from featurizer.op_policy import allow_unsafe_ops_from_env, check_saved_model

    check_saved_model(path, allow_unsafe_ops=allow_unsafe_ops_from_env() if allow_unsafe_ops is None
                      else allow_unsafe_ops)  # before TensorFlow runs anything of it
    device = configure_tensorflow().device if device is None else device
    with device_scope(device):
        saved_model = tf.saved_model.load(str(path))
    if sig.SIGNATURE not in saved_model.signatures:
        raise ValueError(f"{str(path)!r} has no {sig.SIGNATURE!r} signature "
                         f"(it has: {', '.join(saved_model.signatures) or 'none'})")
    name = card.get("name", path.parent.name)
    log.info("loaded secondary model %s version %d (%s) from %s", name, version, card["kind"], path)
    return SecondaryModel(path=path, name=name, version=version, kind=card["kind"], card=card,
                          labels=list(labels), device=device, _saved_model=saved_model)
