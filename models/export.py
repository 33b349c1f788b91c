"""Export a trained secondary model into the model repository, atomically, as the image classifiers are.

``REPO/NAME/<next version>/`` receives a SavedModel with one signature,
``serving_default`` (see :mod:`imgclf.models.signature`), ``labels.txt`` for the digit
models and ``model_card.json``. Everything is written into a hidden
``REPO/NAME/.export-XXXX`` directory and renamed into place by
:func:`imgclf.core.repository.publish_version`, so a server never sees half a version.

The quadratic's min-max constants are inside the graph: callers send raw x
and receive raw y. The digit models' softmax and argmax are inside too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import keras
import tensorflow as tf

from imgclf.core import export_names as names
from imgclf.core.model_card import CARD_FORMAT, library_versions
from imgclf.core.repository import publish_version, validate_name
from imgclf.models import signature as sig
from imgclf.models.config import DIGIT_CLASSIFIER, REGRESSION, ModelSpec
from imgclf.models.data import X_RANGE, Data

log = logging.getLogger(__name__)

# Card keys the export writes itself; the caller's part may not set them.
GENERATED_KEYS = ("format", "name", "version", "created_utc", "kind", "model", "description", "labels",
                  "num_classes", "signature", "normalization", "input_range", "library_versions")


class _RegressionServing(tf.Module):
    """Raw x [N, 1] → raw y [N, 1]: normalise, run the network, de-normalise, all in float32."""

    def __init__(self, model: keras.Model, normalization: dict):
        super().__init__()
        self.model = model
        self._norm = {k: float(v) for k, v in normalization.items()}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name=sig.X_KEY)])
    def serve(self, x):
        n = self._norm
        x01 = (x - n["x_min"]) / (n["x_max"] - n["x_min"])
        y01 = self.model(x01, training=False)
        return {sig.Y_KEY: y01 * (n["y_max"] - n["y_min"]) + n["y_min"]}


class _DigitServing(tf.Module):
    """Images [N, 28, 28] in [0, 1] → probabilities [N, 10] and the argmax class (int64)."""

    def __init__(self, model: keras.Model):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, sig.IMAGE_SIZE, sig.IMAGE_SIZE], tf.float32,
                                                name=sig.IMAGES_KEY)])
    def serve(self, images):
        logits = self.model(images, training=False)
        return {sig.PROBABILITIES_KEY: tf.nn.softmax(logits, axis=-1),
                sig.CLASSES_KEY: tf.argmax(logits, axis=-1, output_type=tf.int64)}


def serving_module(spec: ModelSpec, model: keras.Model, data: Data) -> tf.Module:
    """Return the tf.Module whose ``serve`` function becomes the ``serving_default`` signature."""
    if spec.kind == REGRESSION:
        return _RegressionServing(model, data.normalization)
    return _DigitServing(model)


def export_secondary(repo: str | Path, name: str, spec: ModelSpec, model: keras.Model, data: Data,
                     caller_card: dict) -> Path:
    """Export ``model`` as the next version of ``name`` in ``repo``; return the version directory.

    Args:
        repo: the model repository.
        name: the model's name there (one path component).
        spec: which secondary model this is.
        model: the trained network (normalised x → normalised y, or images → logits).
        data: the run's data (the quadratic's normalisation constants).
        caller_card: JSON-ready card entries from the training run (``training``, ``metrics``,
            ``splits``, ``data``); keys the export writes itself are refused.

    Raises:
        ValueError: a bad name, or reserved keys in ``caller_card``.
    """
    validate_name(name)
    reserved = sorted(set(caller_card) & set(GENERATED_KEYS))
    if reserved:
        raise ValueError(f"card keys {reserved} are written by the export itself")

    def write(work: Path) -> dict:
        module = serving_module(spec, model, data)
        tf.saved_model.save(module, str(work), signatures={sig.SIGNATURE: module.serve.get_concrete_function()})
        labels = sig.DIGIT_LABELS if spec.kind == DIGIT_CLASSIFIER else []
        if labels:
            (work / names.LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        return build_card(name, spec, data, labels, caller_card)

    version_dir = publish_version(repo, name, write)
    log.info("exported %s version %s (%s) to %s", name, version_dir.name, spec.name, version_dir)
    return version_dir


def build_card(name: str, spec: ModelSpec, data: Data, labels: list[str], caller_card: dict) -> dict:
    """Return the model card of a secondary model (``version`` is set when it is published)."""
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "version": 0,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "kind": spec.kind,
        "model": spec.name,
        "description": spec.description,
        "labels": list(labels),
        "signature": sig.signature_description(spec.kind),
    }
    if spec.kind == REGRESSION:
        card["normalization"] = dict(data.normalization)
        card["input_range"] = list(X_RANGE)
    else:
        card["num_classes"] = len(labels)
        card["input_range"] = list(sig.PIXEL_RANGE)
    card["library_versions"] = library_versions()
    return {**card, **caller_card}
