"""How well an export's unfamiliar-input detector works, for its model card: AUROC and FPR at 95% TPR.

Familiar images are the held-out in-distribution ones (the test split; the
validation split when the test split is empty). They are compared with:

* generated sets (:mod:`imgclf.featurizer.images.unfamiliar`): noise, flat colours, textures,
  featurized by the model's own featurizer;
* classes left out of training: for up to :data:`LEFT_OUT_CLASSES` classes, the
  detector is fitted again on the training split without that class (its
  threshold on the validation split without it), and the left-out class's
  held-out images are the unfamiliar ones (what a photo of a new kind of thing
  looks like to a model that never saw it). The detector reads bottlenecks
  only, so no head needs training for this.

Per set: ``auroc`` (the chance that an unfamiliar image scores above a familiar
one), ``fpr_at_95_tpr`` (the share of unfamiliar images that pass as familiar at
the threshold keeping 95% of the familiar ones), and ``flagged`` (the share the
export's own threshold flags).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from imgclf.featurizer.images.unfamiliar import SETS, unfamiliar_pictures
from imgclf.training.detector import Detector, fit_detector
from imgclf.training.unfamiliar import auroc, fpr_at_tpr

log = logging.getLogger(__name__)

PER_SET = 24  # generated pictures per set
LEFT_OUT_CLASSES = 3  # at most this many shadow heads, one per left-out class


def _figures(familiar: np.ndarray, unfamiliar: np.ndarray, detector: Detector) -> dict:
    both = len(familiar) and len(unfamiliar)
    return {"images": int(len(unfamiliar)), "auroc": _finite(auroc(familiar, unfamiliar)) if both else None,
            "fpr_at_95_tpr": _finite(fpr_at_tpr(familiar, unfamiliar, 0.95)) if both else None,
            "flagged": _finite(float(detector.flags(unfamiliar).mean())) if len(unfamiliar) else None}


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def generated_sets(featurizer, per_set: int = PER_SET) -> dict[str, np.ndarray]:
    """Return bottlenecks [n, D] of each generated set, featurized as the training images were."""
    out = {}
    for kind in SETS:
        vectors = [v for v in featurizer.features(unfamiliar_pictures(kind, per_set)) if isinstance(v, np.ndarray)]
        out[kind] = np.stack(vectors) if vectors else np.zeros((0, featurizer.dim), np.float32)
    return out


def report(detector: Detector, familiar: np.ndarray, generated: dict[str, np.ndarray],
           left_out: dict[str, dict] | None = None) -> dict:
    """Return the card's figures: per generated set and per left-out class, plus the familiar images' own rate.

    Args:
        familiar: held-out in-distribution bottlenecks.
        generated: bottlenecks per generated set (:func:`generated_sets`).
        left_out: per left-out class, figures made by :func:`left_out_figures`.
    """
    familiar_scores = detector.score(familiar)
    sets = {kind: _figures(familiar_scores, detector.score(vectors), detector) for kind, vectors in generated.items()}
    return {"familiar_images": int(len(familiar)),
            "familiar_flagged": _finite(float(detector.flags(familiar_scores).mean())) if len(familiar) else None,
            "sets": sets, "left_out_classes": left_out or {}}


def left_out_figures(label_names: list[str], train, val, held_out, method: str,
                     limit: int = LEFT_OUT_CLASSES) -> dict[str, dict]:
    """Return figures per left-out class, from the detector fitted without it.

    Args:
        train, val, held_out: (features, labels) of the splits; held_out are the familiar/unfamiliar images.
        method: the detector's method.
        limit: how many classes to leave out (the ones with the most held-out images first).
    """
    num_classes = len(label_names)
    if num_classes < 2:
        return {}
    counts = np.bincount(held_out[1], minlength=num_classes)
    chosen = [int(c) for c in np.argsort(-counts, kind="stable")[:limit] if counts[c] > 0]
    figures = {}
    for k in chosen:
        keep_train, keep_val = train[1] != k, val[1] != k
        if not keep_val.any() or keep_train.sum() < 2:
            continue
        shadow = fit_detector(method, train[0][keep_train], train[1][keep_train], val[0][keep_val])
        inside = held_out[1] != k
        familiar, unfamiliar = shadow.score(held_out[0][inside]), shadow.score(held_out[0][~inside])
        figures[label_names[k]] = _figures(familiar, unfamiliar, shadow)
        log.info("unfamiliar inputs: class %r left out of training: AUROC %s", label_names[k],
                 figures[label_names[k]]["auroc"])
    return figures


def format_table(figures: dict) -> str:
    """Return the report as a short table (one row per set)."""
    lines = [f"unfamiliar inputs ({figures.get('method', '')}, threshold {figures.get('threshold')}): "
             f"{figures.get('familiar_flagged')} of {figures.get('familiar_images')} held-out familiar images flagged",
             f"{'set':<24} {'images':>6}  {'AUROC':>6}  {'FPR@95':>6}  {'flagged':>7}"]
    rows = [(kind, row) for kind, row in figures.get("sets", {}).items()]
    rows += [(f"left out: {label}"[:24], row) for label, row in figures.get("left_out_classes", {}).items()]
    for name, row in rows:
        cells = [_cell(row.get(key), 6 if key != "flagged" else 7) for key in ("auroc", "fpr_at_95_tpr", "flagged")]
        lines.append(f"{name:<24} {row['images']:>6}  " + "  ".join(cells))
    return "\n".join(lines)


def _cell(value, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"
