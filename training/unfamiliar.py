"""Unfamiliar-input (out-of-distribution) scores on frozen features: fit at training time, score per request.

Every score follows one convention: **higher means more unfamiliar**. A detector
is fitted once on the training split (float64 arithmetic), keeps a few float32
arrays (what an export would store, :attr:`nbytes`), and scores a batch with
``detector.score(features, logits)`` in float32 numpy. The threshold is set on
the validation split so that a chosen share of familiar images passes
(:func:`threshold_at_tpr`, 95% by default); an image is unfamiliar when its
score is above it (:func:`is_unfamiliar`).

The candidates, all post hoc (no retraining of the network):

- :class:`MaxSoftmax`: minus the largest softmax probability, the classic
  baseline (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
  Out-of-Distribution Examples in Neural Networks", ICLR 2017).
- :class:`Energy`: the free energy of the logits, ``-T·logsumexp(logits/T)``
  (Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection",
  NeurIPS 2020).
- :class:`Mahalanobis`: the smallest squared Mahalanobis distance of the
  ℓ2-normalised bottleneck to a class mean, with one covariance shared by the
  classes and shrunk towards a scaled identity (Lee, Lee, Lee & Shin, "A Simple
  Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
  Attacks", NeurIPS 2018; the shrinkage of Ledoit & Wolf, "A well-conditioned
  estimator for large-dimensional covariance matrices", J. Multivariate
  Analysis 2004, which 2048 features from a few hundred images need).
- :class:`NearestNeighbors`: the distance from the ℓ2-normalised bottleneck to
  its k-th nearest ℓ2-normalised training bottleneck (Sun, Ming, Zhu & Li,
  "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022).
- :class:`Vim`: Virtual-logit Matching, the norm of the feature's part outside
  the training features' principal subspace, scaled to the logits and set
  against their energy (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with
  Virtual-logit Matching", CVPR 2022).

And the measures: :func:`auroc` (the probability that an unfamiliar image
scores above a familiar one, ties counting half) and :func:`fpr_at_tpr` (the
share of unfamiliar images that pass the threshold which lets ``tpr`` of the
familiar ones through). Numpy only, so the service can score without TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_TPR = 0.95  # share of familiar (validation) images that must pass the threshold


def _matrix(name: str, values, dim: int | None = None) -> np.ndarray:
    """Return ``values`` as a finite float64 [N, D] array, or raise ValueError saying what was received."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [examples, values]; received shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers; received dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} values per row; received shape {array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return array


def _scores(name: str, values) -> np.ndarray:
    """Return ``values`` as a finite non-empty float64 vector, or raise ValueError."""
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores; received shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers; received dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return array


def _labels(labels, rows: int) -> np.ndarray:
    """Return integer class labels [N] (one per feature row), or raise ValueError."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != rows:
        raise ValueError(f"train_labels must be a 1-D array with one label per feature row ({rows}); "
                         f"received shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        raise ValueError(f"train_labels must be integers >= 0; received dtype {array.dtype}, "
                         f"smallest {array.min()}")
    return array.astype(np.int64)


def l2_normalize(features, eps: float = 1e-12) -> np.ndarray:
    """Return each row of ``features`` divided by its Euclidean norm (a zero row stays zero); same dtype."""
    features = np.asarray(features)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, eps).astype(features.dtype)


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    """Return logsumexp over the last axis, shifted by the row maximum so large logits cannot overflow."""
    top = logits.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))[..., 0]


def _logits32(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be a 2-D array [examples, classes >= 2]; received shape {logits.shape}")
    return logits


def _features32(features, dim: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != dim:
        raise ValueError(f"features must be a 2-D array [examples, {dim}]; received shape {features.shape}")
    return features


@dataclass(frozen=True)
class MaxSoftmax:
    """Minus the largest softmax probability (Hendrycks & Gimpel 2017): scores from -1 (sure) to -1/classes."""

    name = "msp"

    @property
    def nbytes(self) -> int:
        """Return the bytes an export stores for this detector beyond its threshold: none."""
        return 0

    def score(self, features, logits) -> np.ndarray:
        """Return ``-max softmax(logits)`` per row (float32); ``features`` is not used."""
        logits = _logits32(logits)
        return -np.exp(logits.max(axis=1) - _logsumexp(logits))


@dataclass(frozen=True)
class Energy:
    """The free energy of the logits, ``-T·logsumexp(logits/T)`` (Liu et al. 2020); T = 1 in the paper's tests."""

    temperature: float = 1.0
    name = "energy"

    def __post_init__(self):
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0; received {self.temperature!r}")

    @property
    def nbytes(self) -> int:
        """Return the bytes an export stores beyond the threshold: the temperature (one float32)."""
        return 4

    def score(self, features, logits) -> np.ndarray:
        """Return the energy per row (float32); lower logits overall mean more unfamiliar."""
        logits = _logits32(logits)
        t = np.float32(self.temperature)
        return -t * _logsumexp(logits / t)


def ledoit_wolf(residuals) -> tuple[np.ndarray, float]:
    """Return the Ledoit-Wolf shrunk covariance of zero-mean rows [N, D] and its shrinkage in [0, 1].

    The estimate is ``(1 - s)·S + s·μ·I`` with ``S = XᵀX / N`` and ``μ = trace(S) / D``;
    ``s`` minimises the expected Frobenius loss (Ledoit & Wolf 2004), the same
    formula as scikit-learn's ``ledoit_wolf(X, assume_centered=True)``.
    """
    x = _matrix("residuals", residuals)
    n, d = x.shape
    squares = x * x
    sample = x.T @ x / n
    trace = squares.sum(axis=0) / n  # the diagonal of S
    mu = trace.sum() / d
    beta_ = float((squares.T @ squares).sum())
    delta_ = float((sample * sample).sum())
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace.sum() + d * mu * mu) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    covariance = (1.0 - shrinkage) * sample
    covariance.flat[::d + 1] += shrinkage * mu
    return covariance, float(shrinkage)


@dataclass(frozen=True)
class Mahalanobis:
    """Class means and a whitening matrix of ℓ2-normalised bottlenecks: distance = ‖(z - mean_c)·W‖².

    ``whitener`` is the lower Cholesky factor ``L`` of the shared precision matrix
    (``P = L·Lᵀ``), so the squared Mahalanobis distance of ``z`` to class ``c`` is
    ``‖z·L - mean_c·L‖²``; ``whitened_means`` stores ``mean_c·L``.
    """

    whitener: np.ndarray  # float32 [D, D]
    whitened_means: np.ndarray  # float32 [classes, D]
    shrinkage: float  # weight of the scaled identity in the shared covariance
    name = "mahalanobis"

    @property
    def nbytes(self) -> int:
        """Return the bytes of the arrays an export stores."""
        return int(self.whitener.nbytes + self.whitened_means.nbytes)

    def score(self, features, logits=None) -> np.ndarray:
        """Return the smallest squared Mahalanobis distance to a class mean per row (float32)."""
        z = l2_normalize(_features32(features, self.whitener.shape[0])) @ self.whitener
        # ‖a - b‖² = ‖a‖² - 2a·b + ‖b‖², smallest over the classes; rounding can make a tiny one negative.
        distances = ((z * z).sum(1, keepdims=True) - 2 * z @ self.whitened_means.T
                     + (self.whitened_means * self.whitened_means).sum(1))
        return np.maximum(distances.min(axis=1), 0)


def fit_mahalanobis(train_features, train_labels, shrinkage: float | str = "ledoit-wolf") -> Mahalanobis:
    """Fit class means and one shared, shrunk covariance on ℓ2-normalised training bottlenecks.

    Args:
        train_features: [N, D] bottlenecks of the training split.
        train_labels: [N] integer classes; every class present gets a mean.
        shrinkage: "ledoit-wolf" to choose the weight of the identity from the data, or a fixed weight
            in (0, 1] (a ridge: ``(1 - s)·S + s·trace(S)/D·I``).
    """
    x = l2_normalize(_matrix("train_features", train_features))
    y = _labels(train_labels, x.shape[0])
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    residuals = x - means[np.searchsorted(classes, y)]
    if shrinkage == "ledoit-wolf":
        covariance, weight = ledoit_wolf(residuals)
    elif isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and 0 < shrinkage <= 1:
        weight = float(shrinkage)
        sample = residuals.T @ residuals / len(x)
        covariance = (1 - weight) * sample
        covariance.flat[::x.shape[1] + 1] += weight * np.trace(sample) / x.shape[1]
    else:
        raise ValueError(f'shrinkage must be "ledoit-wolf" or a number in (0, 1]; received {shrinkage!r}')
    if weight <= 0:  # a covariance of rank < D cannot be inverted; the identity's share makes it definite
        raise ValueError("the shared covariance needs shrinkage > 0 (Ledoit-Wolf chose 0): pass a fixed one")
    precision = np.linalg.inv(covariance)
    whitener = np.linalg.cholesky((precision + precision.T) / 2)
    return Mahalanobis(whitener.astype(np.float32), (means @ whitener).astype(np.float32), weight)


@dataclass(frozen=True)
class NearestNeighbors:
    """The ℓ2-normalised training bottlenecks: the score is the distance to the k-th nearest (Sun et al. 2022)."""

    bank: np.ndarray  # float32 [N, D], unit rows
    k: int
    name = "knn"

    @property
    def nbytes(self) -> int:
        """Return the bytes of the arrays an export stores."""
        return int(self.bank.nbytes)

    def score(self, features, logits=None) -> np.ndarray:
        """Return the Euclidean distance of each normalised row to its k-th nearest training row (float32)."""
        z = l2_normalize(_features32(features, self.bank.shape[1]))
        similarity = z @ self.bank.T
        kth = -np.partition(-similarity, self.k - 1, axis=1)[:, self.k - 1]  # k-th largest cosine
        # For unit vectors ‖a - b‖ = sqrt(2 - 2·cos); a zero row has distance 1 to everything.
        norms = (z * z).sum(1)
        return np.sqrt(np.maximum(norms + 1 - 2 * kth, 0))


def fit_knn(train_features, k: int = 10) -> NearestNeighbors:
    """Keep the ℓ2-normalised training bottlenecks for a k-th-nearest-neighbour score."""
    x = _matrix("train_features", train_features)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(x):
        raise ValueError(f"k must be an integer from 1 to the number of training rows ({len(x)}); received {k!r}")
    return NearestNeighbors(l2_normalize(x).astype(np.float32), int(k))


@dataclass(frozen=True)
class Vim:
    """ViM (Wang et al. 2022): ``alpha·‖residual‖ - logsumexp(logits)``, the residual outside the principal subspace.

    Features are moved to the origin ``u`` where the head's logits are all zero;
    ``basis`` spans the top principal directions of the training features about
    ``u``; the residual is what is left of ``x - u`` outside them; ``alpha`` scales
    its norm to the mean largest training logit (the "virtual logit").
    """

    origin: np.ndarray  # float32 [D]
    basis: np.ndarray  # float32 [D, dim], orthonormal columns
    alpha: float
    name = "vim"

    @property
    def nbytes(self) -> int:
        """Return the bytes of the arrays an export stores (and alpha, one float32)."""
        return int(self.origin.nbytes + self.basis.nbytes + 4)

    def residual(self, features) -> np.ndarray:
        """Return the norm of each row's part outside the principal subspace (float32)."""
        x = _features32(features, self.origin.shape[0]) - self.origin
        inside = x @ self.basis
        return np.sqrt(np.maximum((x * x).sum(1) - (inside * inside).sum(1), 0))

    def score(self, features, logits) -> np.ndarray:
        """Return the virtual logit minus the energy term: higher is more unfamiliar (float32)."""
        return np.float32(self.alpha) * self.residual(features) - _logsumexp(_logits32(logits))


def fit_vim(train_features, weight, bias, dim: int) -> Vim:
    """Fit ViM's origin, principal subspace and scale on the training bottlenecks.

    Args:
        train_features: [N, D] bottlenecks, as the head sees them before any of its own layers.
        weight, bias: the head's logits as an affine map of those bottlenecks, ``logits = x·weight + bias``
            ([D, classes] and [classes]; fold a standardisation layer into them first).
        dim: principal dimensions kept, from 1 to min(N, D) - 1 (the paper keeps 1000 of 2048; with few
            images, keep well under N, or the training residuals are all ~0).
    """
    x = _matrix("train_features", train_features)
    w = _matrix("weight", weight, None)
    b = np.asarray(bias, dtype=np.float64)
    if w.shape[0] != x.shape[1] or b.shape != (w.shape[1],):
        raise ValueError(f"weight must be [{x.shape[1]}, classes] and bias [classes]; received "
                         f"{w.shape} and {b.shape}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim < min(x.shape):
        raise ValueError(f"dim must be an integer from 1 to {min(x.shape) - 1}; received {dim!r}")
    origin = -b @ np.linalg.pinv(w)  # the point whose logits are all zero (least-norm solution)
    centred = x - origin
    _, vectors = np.linalg.eigh(centred.T @ centred / len(x))  # ascending eigenvalues
    basis = vectors[:, ::-1][:, :dim]
    inside = centred @ basis
    residual = np.sqrt(np.maximum((centred * centred).sum(1) - (inside * inside).sum(1), 0))
    logits = x @ w + b
    alpha = float(logits.max(axis=1).mean() / residual.mean())
    return Vim(origin.astype(np.float32), basis.astype(np.float32), alpha)


def threshold_at_tpr(validation_scores, tpr: float = DEFAULT_TPR) -> float:
    """Return the threshold that lets ``tpr`` of the familiar validation scores pass (score <= threshold).

    With n scores, the ceil(tpr·n) lowest pass; the threshold lies halfway to the
    next score, so float32 rounding at serving time does not move an image across
    it. Scores tied at the cut all pass (the share can then exceed ``tpr``).
    """
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0 < tpr <= 1:
        raise ValueError(f"tpr must be a number in (0, 1]; received {tpr!r}")
    scores = np.sort(_scores("validation_scores", validation_scores))
    count = min(len(scores), max(1, math.ceil(tpr * len(scores) - 1e-9)))
    if count == len(scores):
        return float(scores[-1])
    return float((scores[count - 1] + scores[count]) / 2)


def is_unfamiliar(scores, threshold: float) -> np.ndarray:
    """Return True where a score is above the threshold."""
    return np.asarray(scores) > threshold


def auroc(in_scores, out_scores) -> float:
    """Return the area under the ROC curve of unfamiliar (positive) against familiar scores.

    It equals the probability that a random unfamiliar image scores above a random
    familiar one, ties counting one half (the Mann-Whitney U statistic, from
    average ranks).
    """
    familiar, unfamiliar = _scores("in_scores", in_scores), _scores("out_scores", out_scores)
    both = np.concatenate([familiar, unfamiliar])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_scores = both[order]
    # Average ranks over ties: every run of equal scores gets the mean of its positions (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(both)]
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    n_in, n_out = len(familiar), len(unfamiliar)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))


def fpr_at_tpr(in_scores, out_scores, tpr: float = DEFAULT_TPR) -> float:
    """Return the share of unfamiliar scores that pass the threshold letting ``tpr`` of ``in_scores`` through."""
    threshold = threshold_at_tpr(in_scores, tpr)
    return float(np.mean(_scores("out_scores", out_scores) <= threshold))


__all__ = [
    "DEFAULT_TPR", "Energy", "Mahalanobis", "MaxSoftmax", "NearestNeighbors", "Vim", "auroc", "fit_knn",
    "fit_mahalanobis", "fit_vim", "fpr_at_tpr", "is_unfamiliar", "l2_normalize", "ledoit_wolf",
    "threshold_at_tpr",
]
