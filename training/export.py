"""Export a trained head with its featurizer into the model repository, atomically.

``REPO/NAME/<version>/`` (TensorFlow Serving's layout) receives:

* ``saved_model.pb`` (+ ``variables/``): signature ``serving_default`` takes a
  batch of encoded images (``image_bytes``: string [None]) and signature
  ``bottleneck`` takes bottleneck vectors (float32 [None, D]); both return
  ``probabilities`` [None, C], ``classes`` (int64 top-1 id) and ``labels``
  (string top-1 label). Preprocessing, featurizer and head are all inside, in
  float32, so ``tensorflow_model_server`` serves it as it is.
  Signatures also return ``unfamiliar_score`` (float32 [None]) and
  ``unfamiliar`` (bool [None]). The probabilities are calibrated (the head's
  temperature is inside) and computed in float64 up to the softmax, so no
  runtime's mixed-precision rewrite reaches them (:mod:`imgclf.training.head_graph`).
* ``head.pb``: the frozen head; ``end_to_end.pb``: featurizer + head for one
  encoded image, named as the 2016 retraining tutorial named its graph, made
  of current ops only (see :mod:`imgclf.training.frozen_graphs`); both answer
  ``final_result`` (calibrated probabilities), ``unfamiliar_score`` and ``unfamiliar``.
* ``calibration.json``: the temperature and the unfamiliar-input detector (method,
  threshold, the validation scores the threshold came from), listed with its
  sha256 in the card and checked when a version loads (the detector's statistics
  are constants of the head graphs); ``reliability.png``, the reliability
  diagram, when training drew one.
* ``labels.txt`` and ``model_card.json`` (see :mod:`imgclf.training.model_card`).

A candidate the publish gate rejected (:mod:`imgclf.training.gate`) is written the
same way, with the gate's report as ``gate.json``, but renamed to
``REPO/NAME/rejected/<UTC time>/``, which no server lists.

Everything is written into a hidden work directory inside REPO/NAME, synced,
then renamed to the next integer: a server never sees half a version, and a
crash leaves at most a hidden directory that nothing lists. The next export
removes such leftovers once nothing has touched them for an hour (a younger one
may be another export's, running now).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from imgclf.core import export_names as names
from imgclf.core.atomic import atomic_file
from imgclf.core.repository import keep_rejected, publish_version, validate_name
from imgclf.featurizer.graph.load import file_sha256
from imgclf.featurizer.runtime.featurizer import Featurizer
from imgclf.training.detector import Detector
from imgclf.training.frozen_graphs import end_to_end_graph_def, featurizer_graph_def, graph_function
from imgclf.training.head_graph import HeadWeights, TrustedHead
from imgclf.training.model_card import build_card, check_caller_card
from imgclf.training.serving_preprocess import batch_to_input

log = logging.getLogger(__name__)



def export_model(repo: str | Path, name: str, head, featurizer: Featurizer, label_names: list[str],
                 card: dict, rejected_by: dict | None = None, *, calibration: dict | None = None,
                 unfamiliar: dict | None = None, reliability_png: bytes | None = None) -> Path:
    """Export ``head`` on top of ``featurizer`` as the next version of model ``name`` in ``repo``.

    Args:
        head: a :class:`~imgclf.training.head_graph.TrustedHead` (the head's weights, its temperature and its
            unfamiliar-input detector), or a Keras model, float32 [None, D] bottlenecks → probabilities
            [None, C] (softmax inside), exported uncalibrated with a detector that flags nothing (logged).
        label_names: C labels, in class-id order.
        card: the caller's part of the model card, JSON-ready, e.g. ``{"training": config,
            "metrics": ..., "splits": {"train": n, ...}}``; the export adds the rest.
        rejected_by: the publish gate's report (JSON-ready) on a candidate it rejected: the export
            goes to ``repo/name/rejected/<UTC time>/`` with the report as ``gate.json``, not to a version.
        calibration, unfamiliar: the card's figures of the calibration (NLL and ECE before and after) and of
            the detector (AUROC, false-positive rates), JSON-ready; the export adds what it computes with.
        reliability_png: the reliability diagram, written beside the card.

    Returns:
        The new version directory (or the rejected candidate's directory).
    """
    validate_name(name)
    labels = check_labels(label_names)
    caller = check_caller_card(card)
    trusted = trusted_head(head, featurizer.dim, len(labels))
    caller = {**caller, "calibration": {**(calibration or {}), **calibration_entry(trusted)},
              "unfamiliar": {**(unfamiliar or {}), **{key: value for key, value in trusted.detector.to_dict().items()
                                                       if key != "validation_scores"}}}

    def write(work: Path) -> dict:
        featurizer_def = featurizer_graph_def(featurizer)
        head_def = trusted.graph_def()
        write_saved_model(work, featurizer, featurizer_def, head_def, labels)
        _write(work / names.HEAD_GRAPH_FILE, head_def.SerializeToString())
        _write(work / names.END_TO_END_GRAPH_FILE,
               end_to_end_graph_def(featurizer, featurizer_def, head_def).SerializeToString())
        _write(work / names.LABELS_FILE, "".join(f"{label}\n" for label in labels).encode("utf-8"))
        listed = [names.HEAD_GRAPH_FILE, names.END_TO_END_GRAPH_FILE, names.LABELS_FILE,
                  *write_statistics(work, trusted)]
        if reliability_png is not None:
            _write(work / names.RELIABILITY_DIAGRAM_FILE, reliability_png)
            listed.append(names.RELIABILITY_DIAGRAM_FILE)
        if featurizer.backend == "openvino":  # the IR its features came from (int8: quantized on its images)
            ir = Path(names.OPENVINO_FEATURIZER_FILE)
            featurizer.graph.save_ir(work / ir.parent, ir.stem)
            listed += [ir.as_posix(), ir.with_suffix(".bin").as_posix()]
        files = {f: {"bytes": (work / f).stat().st_size, "sha256": file_sha256(work / f)} for f in listed}
        if rejected_by is not None:
            _write(work / names.GATE_REPORT_FILE, json.dumps(rejected_by, indent=2, allow_nan=False).encode())
        return build_card(name, 0, labels, featurizer, caller, files)

    if rejected_by is not None:
        kept = keep_rejected(repo, name, write)
        log.info("kept the rejected candidate of %s at %s (not published)", name, kept)
        return kept
    version_dir = publish_version(repo, name, write)
    log.info("exported %s version %s (%d classes) to %s", name, version_dir.name, len(labels), version_dir)
    return version_dir


def check_labels(label_names) -> list[str]:
    """Return the labels as a list, refusing empty, duplicate or multi-line ones."""
    labels = list(label_names)
    bad = [label for label in labels if not isinstance(label, str) or not label or label != label.strip()
           or any(ch in label for ch in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")]
    if not labels or bad:
        raise ValueError(f"labels must be non-empty one-line strings without surrounding spaces; "
                         f"received {labels if not labels else bad!r}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"labels must be unique; received duplicates {duplicates}")
    return labels


def trusted_head(head, dim: int, num_classes: int) -> TrustedHead:
    """Return ``head`` as a :class:`TrustedHead` after checking it maps [N, dim] to [N, num_classes]."""
    if isinstance(head, TrustedHead):
        if (head.weights.dim, head.weights.num_classes) != (dim, num_classes):
            raise ValueError(f"head must map [N, {dim}] to [N, {num_classes}]; received "
                             f"[N, {head.weights.dim}] to [N, {head.weights.num_classes}]")
        if not (np.isfinite(head.temperature) and head.temperature > 0):
            raise ValueError(f"the temperature must be a finite number > 0; received {head.temperature}")
        return head
    check_head(head, dim, num_classes)
    log.warning("exporting a head without calibration or an unfamiliar-input threshold: its probabilities are "
                "the softmax's own and no input is flagged unfamiliar (imgclf train fits both)")
    return TrustedHead(HeadWeights.from_keras(head), 1.0, Detector())


def calibration_entry(trusted: TrustedHead) -> dict:
    """Return what the card's ``calibration`` entry says of the exported head itself."""
    return {"temperature": float(trusted.temperature), "head_precision": "float64 inside the graph, float32 answers"}


def write_statistics(work: Path, trusted: TrustedHead) -> list[str]:
    """Write ``calibration.json`` (the temperature; the detector's method, threshold and validation scores; its
    statistics are constants of the head graph); return the files written."""
    statistics = {"temperature": float(trusted.temperature), "unfamiliar": trusted.detector.to_dict()}
    _write(work / names.CALIBRATION_FILE, json.dumps(statistics, indent=2, allow_nan=False).encode())
    return [names.CALIBRATION_FILE]


def check_head(head, dim: int, num_classes: int) -> None:
    """Check that ``head`` maps [N, dim] to probabilities [N, num_classes]."""
    probe = np.random.default_rng(0).normal(size=(2, dim)).astype(np.float32)
    try:
        out = np.asarray(head(probe, training=False), dtype=np.float64)
    except Exception as exc:
        raise ValueError(f"head must take float32 [None, {dim}] bottlenecks; calling it failed: {exc}") from exc
    if out.shape != (2, num_classes):
        raise ValueError(f"head must return [N, {num_classes}] (one column per label); "
                         f"received shape [N, {', '.join(map(str, out.shape[1:]))}]")
    if not np.allclose(out.sum(axis=1), 1.0, atol=1e-3) or (out < 0).any():
        raise ValueError("head must return probabilities (end in a softmax); its outputs do not sum to 1")


class _ServingModel(tf.Module):
    """The SavedModel's functions: encoded images or bottlenecks → probabilities, top-1 id and label."""

    def __init__(self, featurizer: Featurizer, featurizer_def, head_def, labels: list[str]):
        super().__init__()
        contract = featurizer.contract
        self._contract = contract
        self._dim = featurizer.dim
        self._labels = list(labels)
        self._featurize = graph_function(featurizer_def, contract.image_input, contract.bottleneck)
        self._classify = graph_function(head_def, names.HEAD_INPUT, list(names.HEAD_OUTPUTS))

    def _outputs(self, vectors: tf.Tensor) -> dict:
        probabilities, score, unfamiliar = self._classify(vectors)
        classes = tf.argmax(probabilities, axis=1, output_type=tf.int64)
        labels = tf.gather(tf.constant(self._labels, tf.string), classes)
        return {names.PROBABILITIES_KEY: probabilities, names.CLASSES_KEY: classes, names.LABELS_KEY: labels,
                names.UNFAMILIAR_KEY: unfamiliar, names.UNFAMILIAR_SCORE_KEY: score}

    def serve_bytes(self, image_bytes: tf.Tensor) -> dict:
        images = batch_to_input(image_bytes, self._contract)
        return self._outputs(tf.reshape(self._featurize(images), [-1, self._dim]))

    def serve_bottleneck(self, bottleneck: tf.Tensor) -> dict:
        return self._outputs(bottleneck)

    def serve_images(self, images: tf.Tensor) -> dict:
        return self._outputs(tf.reshape(self._featurize(images), [-1, self._dim]))

    def signatures(self) -> dict:
        """Return the concrete functions to save as signatures."""
        image_bytes = tf.TensorSpec([None], tf.string, name=names.IMAGE_BYTES_KEY)
        bottleneck = tf.TensorSpec([None, self._dim], tf.float32, name=names.BOTTLENECK_KEY)
        size = self._contract.input_size
        images = tf.TensorSpec([None, size, size, 3], tf.float32, name=names.IMAGES_KEY)
        return {
            names.IMAGES_SIGNATURE: tf.function(self.serve_images).get_concrete_function(images),
            names.SERVING_SIGNATURE: tf.function(self.serve_bytes).get_concrete_function(image_bytes),
            names.BOTTLENECK_SIGNATURE: tf.function(self.serve_bottleneck).get_concrete_function(bottleneck),
        }


def write_saved_model(directory: Path, featurizer: Featurizer, featurizer_def, head_def, labels: list[str]) -> None:
    """Write the SavedModel (all three signatures) into ``directory``."""
    module = _ServingModel(featurizer, featurizer_def, head_def, labels)
    tf.saved_model.save(module, str(directory), signatures=module.signatures())


def _write(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


