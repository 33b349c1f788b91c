"""The unfamiliar-input detector an export carries: a score per image, and the threshold that flags it.

The score is the Mahalanobis distance of the image's ℓ2-normalised bottleneck
to the nearest class mean, under one covariance shared by the classes and
shrunk towards a scaled identity by Ledoit and Wolf's rule (Lee et al. 2018;
Ledoit & Wolf 2004). Higher means less like the training images. An image is
*unfamiliar* when its score is above the threshold, which training sets at a
95% true-positive rate on the validation split: 95% of the validation images
(in-distribution by construction, and not used for the fit) count as familiar.

Why this score: ``bench/unfamiliar.py`` measured the candidates the issue named
(:mod:`imgclf.training.unfamiliar`) on digit photos against noise, flat colours,
textures and left-out digits, on the tiny and the full-size graph. Mahalanobis
and kNN separated noise, flat colours and textures perfectly (AUROC 1.00) on
both graphs; the energy score and the top softmax probability scored noise as
*more* familiar than digits (AUROC 0.00–0.16: the issue's "noise labelled eight
at 99.8%"); ViM failed on the full-size graph (0.55). Mahalanobis needs no
setting (kNN needs k below the smallest class) and its statistics do not grow
with every training image.

The fit is exact but low-rank. With residuals ``R`` (each training vector
minus its class mean, [N, D]) the sample covariance ``S = RᵀR / N`` has rank
``r ≤ min(N, D)``; its eigenpairs come from the N×N Gram matrix when N < D (no
D×D inverse: milliseconds instead of seconds). The shrunk covariance is
``a·I + U·diag(b)·Uᵀ`` with ``a = s·μ`` and ``b = (1 − s)·λ``, so by Woodbury
``d²(y) = (‖y‖² − Σₖ cₖ (uₖᵀy)²) / a`` with ``cₖ = bₖ / (a + bₖ)``. The export
keeps the class means [C, D], ``U`` [D, r] and ``c`` [r]: 16 KB per kept
direction and per class, at most 16 MB with 2048-d bottlenecks.

The detector exists twice, computed the same way: in numpy (:meth:`Detector.score`,
the reference, used at training time) and as TensorFlow ops in float64 inside the
exported head graph (:meth:`Detector.tf_score`; see :mod:`imgclf.training.head_graph`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from imgclf.training.unfamiliar import DEFAULT_TPR, l2_normalize, threshold_at_tpr

METHODS = ("mahalanobis",)
MAX_KEPT_SCORES = 2001  # validation scores kept in an export (quantiles beyond that)
MIN_SHRINKAGE = 1e-3  # a Ledoit-Wolf weight of 0 on a rank-deficient covariance would make it singular
_RANK_TOLERANCE = 1e-10  # eigenvalues below this share of the largest are none


@dataclass
class Detector:
    """An unfamiliar-input score and its threshold (scores above it are flagged)."""

    method: str = "mahalanobis"
    threshold: float = math.inf  # inf: nothing is flagged (a detector that was not fitted)
    tpr: float = DEFAULT_TPR  # the validation true-positive rate the threshold was set at
    # The method's statistics: "means" [C, D] float32, "basis" [D, r] float32, "weights" [r] float64,
    # "scale" [] float64 (the isotropic part a). Empty for a detector read back from an export's file.
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # The validation split's scores, sorted (at most MAX_KEPT_SCORES quantiles): another TPR's threshold.
    validation_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    shrinkage: float | None = None  # the Ledoit-Wolf weight of the identity

    @property
    def fitted(self) -> bool:
        return bool(self.arrays)

    def score(self, features: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
        """Return the squared Mahalanobis distance [N] of bottlenecks [N, D] to the nearest class mean (float64)."""
        if not self.fitted:
            raise ValueError("this detector holds no statistics (an unfitted one, or one read from an export file; "
                             "the export's graphs compute its scores)")
        a = self.arrays
        means, basis = a["means"].astype(np.float64), a["basis"].astype(np.float64)
        z = l2_normalize(np.asarray(features, dtype=np.float64))
        projected = z @ basis
        mean_projected = means @ basis
        weights = a["weights"]
        squared = ((z * z).sum(1, keepdims=True) - 2 * z @ means.T + (means * means).sum(1))
        explained = ((projected * projected) @ weights)[:, None] - 2 * (projected * weights) @ mean_projected.T \
            + (mean_projected * mean_projected) @ weights
        return np.maximum((squared - explained).min(axis=1) / float(a["scale"]), 0.0)

    def tf_score(self, features, logits=None):
        """Return :meth:`score` as float64 TensorFlow ops on float64 bottlenecks [N, D]."""
        import tensorflow as tf

        if not self.fitted:  # nothing to measure against: every score 0, and the threshold (inf) flags none
            return tf.zeros_like(features[:, 0])
        a = self.arrays
        means, basis = a["means"].astype(np.float64), a["basis"].astype(np.float64)
        mean_projected = means @ basis
        weights = a["weights"]
        z = features / tf.maximum(tf.norm(features, axis=1, keepdims=True), tf.constant(1e-12, tf.float64))
        projected = tf.matmul(z, tf.constant(basis), name="unfamiliar_projection")
        squared = (tf.reduce_sum(z * z, axis=1, keepdims=True)
                   - 2 * tf.matmul(z, tf.constant(means.T)) + tf.constant((means * means).sum(1)))
        explained = (tf.linalg.matvec(projected * projected, tf.constant(weights))[:, None]
                     - 2 * tf.matmul(projected * tf.constant(weights), tf.constant(mean_projected.T))
                     + tf.constant((mean_projected * mean_projected) @ weights))
        distance = tf.reduce_min(squared - explained, axis=1) * tf.constant(1.0 / float(a["scale"]), tf.float64)
        return tf.maximum(distance, tf.constant(0.0, tf.float64))

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
                "tpr": self.tpr, "shrinkage": self.shrinkage,
                "directions": int(self.arrays["basis"].shape[1]) if self.fitted else 0,
                "validation_scores": [float(v) for v in self.validation_scores]}

    @classmethod
    def from_dict(cls, entry: dict) -> Detector:
        """Return the detector ``to_dict`` described (no arrays), checking every field (ValueError says which)."""
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
        return cls(method, math.inf if threshold is None else float(threshold), float(tpr),
                   validation_scores=np.sort(np.asarray(scores, np.float32)), shrinkage=entry.get("shrinkage"))


def fit_statistics(train_features: np.ndarray, train_labels: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """Return the low-rank Mahalanobis statistics of ℓ2-normalised training bottlenecks, and the shrinkage.

    Class means of every class present; residuals from them; Ledoit-Wolf's weight ``s`` (the formula of
    :func:`imgclf.training.unfamiliar.ledoit_wolf`, from the Gram matrix); the sample covariance's nonzero
    eigenpairs. See the module notes for the algebra.
    """
    x = l2_normalize(np.asarray(train_features, dtype=np.float64))
    y = np.asarray(train_labels, dtype=np.int64)
    if x.ndim != 2 or len(x) < 2 or y.shape != x.shape[:1]:
        raise ValueError(f"the detector needs [N >= 2, D] training bottlenecks with one label each; received "
                         f"{x.shape} and {y.shape}")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    residuals = x - means[np.searchsorted(classes, y)]
    n, d = residuals.shape
    row_norms = (residuals * residuals).sum(axis=1)
    trace = row_norms.sum() / n  # trace(S)
    mu = trace / d
    if n <= d:
        gram = residuals @ residuals.T
        delta_ = float((gram * gram).sum()) / n**2  # ‖S‖²_F = ‖RRᵀ‖²_F / n²
        eigenvalues, vectors = np.linalg.eigh(gram)
        keep = eigenvalues > _RANK_TOLERANCE * max(float(eigenvalues.max()), 1e-300)
        sigma = np.sqrt(eigenvalues[keep])
        basis = residuals.T @ vectors[:, keep] / sigma
        eigenvalues = eigenvalues[keep] / n
    else:
        sample = residuals.T @ residuals / n
        delta_ = float((sample * sample).sum())
        eigenvalues, basis = np.linalg.eigh(sample)
        keep = eigenvalues > _RANK_TOLERANCE * max(float(eigenvalues.max()), 1e-300)
        eigenvalues, basis = eigenvalues[keep], basis[:, keep]
    beta = (float((row_norms * row_norms).sum()) / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu * mu) / d
    shrinkage = 0.0 if min(beta, delta) <= 0 else min(beta, delta) / delta
    shrinkage = min(max(shrinkage, MIN_SHRINKAGE), 1.0)
    scale = shrinkage * mu if mu > 0 else 1.0
    spread = (1.0 - shrinkage) * eigenvalues
    return {"means": means.astype(np.float32), "basis": basis.astype(np.float32),
            "weights": spread / (scale + spread), "scale": np.float64(scale)}, float(shrinkage)


def fit_detector(method: str, train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                 tpr: float = DEFAULT_TPR) -> Detector:
    """Fit ``method`` on the training split and set its threshold at ``tpr`` on the validation split."""
    if method not in METHODS:
        raise ValueError(f"unfamiliar-input method must be one of {', '.join(METHODS)}; received {method!r}")
    arrays, shrinkage = fit_statistics(train_features, train_labels)
    detector = Detector(method, tpr=tpr, arrays=arrays, shrinkage=shrinkage)
    scores = np.sort(detector.score(val_features))
    detector.threshold = threshold_at_tpr(scores, tpr)
    if len(scores) > MAX_KEPT_SCORES:
        scores = np.quantile(scores, np.linspace(0, 1, MAX_KEPT_SCORES), method="inverted_cdf")
    detector.validation_scores = scores.astype(np.float32)
    return detector
