"""The unfamiliar-input detector an export carries: a score per image, and the threshold that flags it.

A score is computed from an image's bottleneck and the head's logits; higher
means less like the training images. An image is *unfamiliar* when its score
is above the threshold, which training sets at a 95% true-positive rate on the
validation split: 95% of the validation images (which are in-distribution by
construction) count as familiar. Which score is used, and why, is documented
with the measurements in :mod:`imgclf.training.unfamiliar`.

The detector exists twice, computed the same way: in numpy (:meth:`Detector.score`,
the reference, used at training time) and as TensorFlow ops in float64 inside the
exported head graph (:meth:`Detector.tf_score`; see :mod:`imgclf.training.head_graph`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

METHODS = ("energy",)
DEFAULT_TPR = 0.95
MAX_KEPT_SCORES = 2001  # validation scores kept in an export (quantiles beyond that)


def energy(logits: np.ndarray) -> np.ndarray:
    """Return the energy score ``−logsumexp(logits)`` per row (Liu et al. 2020, temperature 1), in float64."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1)
    return -(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


@dataclass
class Detector:
    """An unfamiliar-input score and its threshold (scores above it are flagged)."""

    method: str = "energy"
    threshold: float = math.inf  # inf: nothing is flagged (a detector that was not fitted)
    tpr: float = DEFAULT_TPR  # the validation true-positive rate the threshold was set at
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # the method's statistics (none for energy)
    # The validation split's scores, sorted (at most MAX_KEPT_SCORES quantiles): another TPR's threshold.
    validation_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Return the score [N] of bottlenecks [N, D] with their logits [N, C] (float64)."""
        if self.method == "energy":
            return energy(logits)
        raise ValueError(f"unknown unfamiliar-input method {self.method!r}")

    def tf_score(self, features, logits):
        """Return the score [N] as float64 TensorFlow ops (the same computation as :meth:`score`)."""
        import tensorflow as tf

        if self.method == "energy":
            return tf.negative(tf.reduce_logsumexp(logits, axis=1))
        raise ValueError(f"unknown unfamiliar-input method {self.method!r}")

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """Return which scores are above the threshold (compared in float32, as served)."""
        return np.asarray(scores, np.float32) > np.float32(self.threshold)

    def threshold_at(self, tpr: float) -> float:
        """Return the threshold at another validation true-positive rate (from the kept validation scores)."""
        if not len(self.validation_scores):
            raise ValueError("this detector kept no validation scores; its threshold cannot be moved by rate")
        return threshold_at_tpr(self.validation_scores, tpr)

    def to_dict(self) -> dict:
        """Return what the export's statistics file holds (arrays aside), JSON-ready; an unset threshold is None."""
        finite = math.isfinite(self.threshold)
        return {"method": self.method, "threshold": float(np.float32(self.threshold)) if finite else None,
                "tpr": self.tpr, "validation_scores": [float(v) for v in self.validation_scores]}

    @classmethod
    def from_dict(cls, entry: dict, arrays: dict[str, np.ndarray] | None = None) -> Detector:
        """Return the detector ``to_dict`` described, checking every field (ValueError says which is wrong)."""
        if not isinstance(entry, dict):
            raise ValueError(f"the unfamiliar-input entry must be an object; received {type(entry).__name__}")
        method, threshold, tpr = entry.get("method"), entry.get("threshold"), entry.get("tpr")
        if method not in METHODS:
            raise ValueError(f"unknown unfamiliar-input method {method!r} (this imgclf knows {', '.join(METHODS)})")
        if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise ValueError(f"the unfamiliar-input threshold must be a finite number or null; received {threshold!r}")
        if not (isinstance(tpr, (int, float)) and 0 < tpr <= 1):
            raise ValueError(f"the unfamiliar-input tpr must be in (0, 1]; received {tpr!r}")
        scores = entry.get("validation_scores", [])
        if not isinstance(scores, list) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in scores):
            raise ValueError("the unfamiliar-input validation_scores must be a list of finite numbers")
        return cls(method, math.inf if threshold is None else float(threshold), float(tpr), dict(arrays or {}),
                   np.sort(np.asarray(scores, np.float32)))


def threshold_at_tpr(scores: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """Return the smallest score threshold that keeps at least ``tpr`` of ``scores`` at or below it."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(scores):
        raise ValueError("a threshold needs at least one in-distribution score")
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1]; received {tpr}")
    index = max(math.ceil(tpr * len(scores)) - 1, 0)
    # As a float32 (scores are served and compared in float32; rounding keeps their order).
    return float(np.float32(scores[index]))


def fit_detector(method: str, val_features: np.ndarray, val_logits: np.ndarray, tpr: float = DEFAULT_TPR,
                 **_training) -> Detector:
    """Fit ``method`` (its statistics from the training split, when it has any) and set its threshold
    at ``tpr`` on the validation split."""
    if method not in METHODS:
        raise ValueError(f"unfamiliar-input method must be one of {', '.join(METHODS)}; received {method!r}")
    detector = Detector(method, tpr=tpr)
    scores = np.sort(detector.score(val_features, val_logits))
    detector.threshold = threshold_at_tpr(scores, tpr)
    if len(scores) > MAX_KEPT_SCORES:
        scores = np.quantile(scores, np.linspace(0, 1, MAX_KEPT_SCORES), method="inverted_cdf")
    detector.validation_scores = scores.astype(np.float32)
    return detector


def auroc(familiar: np.ndarray, unfamiliar: np.ndarray) -> float:
    """Return the area under the ROC curve separating ``unfamiliar`` (positives: higher scores) from ``familiar``.

    The Mann-Whitney statistic with ties counted half: the chance that a random unfamiliar score is
    above a random familiar one.
    """
    familiar = np.asarray(familiar, dtype=np.float64)
    unfamiliar = np.asarray(unfamiliar, dtype=np.float64)
    if not len(familiar) or not len(unfamiliar):
        return math.nan
    pooled = np.concatenate([familiar, unfamiliar])
    order = np.argsort(pooled, kind="mergesort")
    ranks = np.empty(len(pooled))
    sorted_scores = pooled[order]
    # Average ranks over ties (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(pooled)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + 1 + end)
    rank_sum = ranks[len(familiar):].sum()
    n_out = len(unfamiliar)
    return float((rank_sum - n_out * (n_out + 1) / 2) / (n_out * len(familiar)))


def fpr_at_tpr(familiar: np.ndarray, unfamiliar: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """Return the share of ``unfamiliar`` scores that pass as familiar at the threshold keeping ``tpr`` of
    ``familiar`` (the false-positive rate at that true-positive rate, unfamiliar inputs being the negatives)."""
    if not len(unfamiliar):
        return math.nan
    threshold = threshold_at_tpr(familiar, tpr)
    return float((np.asarray(unfamiliar, np.float32) <= np.float32(threshold)).mean())
