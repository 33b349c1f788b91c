"""Unfamiliar-input scores and measures, each checked against a reference computed another way."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist, mahalanobis
from scipy.special import logsumexp, softmax
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf
from sklearn.metrics import roc_auc_score

from imgclf.training.unfamiliar import (
    Energy,
    MaxSoftmax,
    auroc,
    fit_knn,
    fit_mahalanobis,
    fit_vim,
    fpr_at_tpr,
    is_unfamiliar,
    l2_normalize,
    ledoit_wolf,
    threshold_at_tpr,
)


def _clusters(seed: int, classes: int = 3, per_class: int = 40, dim: int = 12):
    """Return features around ``classes`` random centres (correlated noise) and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    mixing = rng.normal(0, 1, (dim, dim))
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + rng.normal(0, 1, (len(y), dim)) @ mixing + 5.0  # positive offset: not centred
    return x, y


def test_auroc_matches_sklearn_and_pair_count_with_ties():
    rng = np.random.default_rng(0)
    familiar = rng.integers(0, 20, 150).astype(float)  # coarse values: many ties within and across sets
    unfamiliar = rng.integers(5, 30, 90).astype(float)
    pairs = (unfamiliar[:, None] > familiar[None, :]).sum() + 0.5 * (unfamiliar[:, None] == familiar[None, :]).sum()
    expected = pairs / (len(familiar) * len(unfamiliar))
    labels = np.r_[np.zeros(len(familiar)), np.ones(len(unfamiliar))]
    assert auroc(familiar, unfamiliar) == pytest.approx(expected, abs=1e-12)
    assert auroc(familiar, unfamiliar) == pytest.approx(roc_auc_score(labels, np.r_[familiar, unfamiliar]),
                                                        abs=1e-12)
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([2.0, 3.0], [0.0, 1.0]) == 0.0


@pytest.mark.parametrize("n", [20, 100, 200, 2000])
def test_threshold_lets_exactly_the_asked_share_of_validation_scores_pass(n):
    scores = np.random.default_rng(n).normal(size=n)
    threshold = threshold_at_tpr(scores, 0.95)
    passed = ~is_unfamiliar(scores, threshold)
    assert passed.sum() == round(0.95 * n)
    # It is the midpoint between the last passing score and the first flagged one.
    ordered = np.sort(scores)
    assert threshold == pytest.approx((ordered[round(0.95 * n) - 1] + ordered[round(0.95 * n)]) / 2)


def test_threshold_rounds_up_and_keeps_ties_together():
    assert (np.arange(10.0) <= threshold_at_tpr(np.arange(10.0), 0.95)).sum() == 10  # ceil(9.5) = 10
    assert threshold_at_tpr(np.arange(10.0), 1.0) == 9.0
    tied = np.r_[np.zeros(18), np.ones(2)]
    assert (tied <= threshold_at_tpr(tied, 0.5)).sum() == 18  # all of a tied run pass together


def test_fpr_at_tpr_counts_unfamiliar_scores_at_or_below_the_threshold():
    familiar = np.arange(100.0)  # the 95 lowest pass: threshold 94.5
    unfamiliar = np.array([10.0, 94.0, 94.5, 95.0, 200.0])
    assert fpr_at_tpr(familiar, unfamiliar) == pytest.approx(3 / 5)


def test_energy_and_max_softmax_match_scipy():
    logits = np.random.default_rng(1).normal(0, 30, (50, 7))  # large logits: the shift must avoid overflow
    np.testing.assert_allclose(Energy().score(None, logits), -logsumexp(logits, axis=1), rtol=1e-5)
    np.testing.assert_allclose(Energy(2.0).score(None, logits), -2.0 * logsumexp(logits / 2.0, axis=1),
                               rtol=1e-5)
    np.testing.assert_allclose(MaxSoftmax().score(None, logits), -softmax(logits, axis=1).max(axis=1),
                               rtol=1e-5)
    assert Energy().score(None, logits).dtype == np.float32


def test_ledoit_wolf_matches_sklearn():
    x, _ = _clusters(2, dim=30, per_class=10)  # fewer rows than twice the columns: the shrinkage matters
    x = x - x.mean(axis=0)
    covariance, shrinkage = ledoit_wolf(x)
    expected, expected_shrinkage = sklearn_ledoit_wolf(x, assume_centered=True)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-10)
    np.testing.assert_allclose(covariance, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shrinkage", ["ledoit-wolf", 0.3])
def test_mahalanobis_matches_scipy_with_an_explicit_inverse(shrinkage):
    x, y = _clusters(3)
    detector = fit_mahalanobis(x, y, shrinkage)
    z = l2_normalize(x)
    means = np.stack([z[y == c].mean(axis=0) for c in range(3)])
    residuals = z - means[y]
    sample = residuals.T @ residuals / len(z)
    weight = sklearn_ledoit_wolf(residuals, assume_centered=True)[1] if shrinkage == "ledoit-wolf" else shrinkage
    covariance = (1 - weight) * sample + weight * np.trace(sample) / z.shape[1] * np.eye(z.shape[1])
    inverse = np.linalg.inv(covariance)
    queries = np.r_[x[:5], np.random.default_rng(4).normal(0, 10, (5, x.shape[1]))]
    expected = [min(mahalanobis(q, m, inverse) ** 2 for m in means) for q in l2_normalize(queries)]
    np.testing.assert_allclose(detector.score(queries), expected, rtol=2e-3)
    assert detector.shrinkage == pytest.approx(weight)
    assert detector.nbytes == (x.shape[1] ** 2 + 3 * x.shape[1]) * 4


@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_matches_brute_force(k):
    x, _ = _clusters(5)
    detector = fit_knn(x, k)
    queries = np.r_[x[:4] * 2.0, np.random.default_rng(6).normal(size=(6, x.shape[1]))]  # a training row scaled
    distances = np.sort(cdist(l2_normalize(queries), l2_normalize(x)), axis=1)
    # Squares, since a square root near 0 turns float32 rounding (~1e-7) into ~3e-4.
    np.testing.assert_allclose(detector.score(queries) ** 2, distances[:, k - 1] ** 2, atol=1e-5)
    if k == 1:
        np.testing.assert_allclose(detector.score(x[:4] * 2.0) ** 2, 0, atol=1e-5)  # scale does not matter


def test_vim_matches_the_paper_recipe_with_an_explicit_null_space():
    x, y = _clusters(7, dim=16, per_class=60)
    rng = np.random.default_rng(8)
    weight, bias = rng.normal(size=(16, 3)), rng.normal(size=3)
    detector = fit_vim(x, weight, bias, dim=6)
    # The paper's steps, with the residual taken as a projection on the null space (not by subtraction).
    origin = -np.linalg.pinv(weight.T) @ bias
    centred = x - origin
    values, vectors = np.linalg.eigh(np.cov(centred.T, bias=True) + np.outer(centred.mean(0), centred.mean(0)))
    null_space = vectors[:, np.argsort(values)[::-1][6:]]
    alpha = (x @ weight + bias).max(axis=1).mean() / np.linalg.norm(centred @ null_space, axis=1).mean()
    queries = np.r_[x[:5], rng.normal(0, 5, (5, 16))]
    logits = queries @ weight + bias
    expected = alpha * np.linalg.norm((queries - origin) @ null_space, axis=1) - logsumexp(logits, axis=1)
    np.testing.assert_allclose(detector.score(queries, logits), expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose((origin @ weight + bias), 0, atol=1e-9)  # logits vanish at the origin


def test_in_distribution_scores_lower_than_far_away_points():
    x, y = _clusters(9)
    far = np.random.default_rng(10).normal(0, 1, (40, x.shape[1]))  # other directions than the clusters
    for detector in (fit_mahalanobis(x, y), fit_knn(x, 5)):
        assert auroc(detector.score(x[::2]), detector.score(far)) > 0.9


@pytest.mark.parametrize("call, message", [
    (lambda: auroc([], [1.0]), "non-empty 1-D"),
    (lambda: auroc([np.nan], [1.0]), "NaN or infinite"),
    (lambda: threshold_at_tpr([1.0, 2.0], 0.0), "tpr must be a number in"),
    (lambda: threshold_at_tpr([1.0, 2.0], 1.5), "tpr must be a number in"),
    (lambda: fit_knn(np.ones((3, 4)), 4), "k must be an integer from 1 to"),
    (lambda: fit_knn(np.ones(4), 1), "2-D array"),
    (lambda: fit_mahalanobis(np.ones((3, 4)), [0, 1], 0.1), "one label per feature row"),
    (lambda: fit_mahalanobis(np.ones((3, 4)), [0, 1, 1], 0.0), "shrinkage must be"),
    (lambda: fit_mahalanobis(np.ones((3, 4)), [0, 1, 1], "oas"), "shrinkage must be"),
    (lambda: fit_vim(np.ones((5, 4)), np.ones((4, 2)), np.ones(2), 4), "dim must be an integer from 1 to 3"),
    (lambda: fit_vim(np.ones((5, 4)), np.ones((3, 2)), np.ones(2), 2), "weight must be"),
    (lambda: Energy(0.0), "temperature must be"),
    (lambda: fit_knn(np.ones((3, 4)), 1).score(np.ones((2, 5))), r"\[examples, 4\]"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()
