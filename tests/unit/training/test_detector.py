"""The exported detector: its low-rank Mahalanobis fit equals the dense reference, its threshold, its file entry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from imgclf.training import detector as det
from imgclf.training.unfamiliar import fit_mahalanobis, l2_normalize, threshold_at_tpr


def data(n: int, d: int, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(0, 3, (classes, d))
    return (centres[labels] + rng.normal(0, 1, (n, d)) * rng.uniform(0.2, 2, d)).astype(np.float32), labels


@pytest.mark.parametrize("n, d", [(30, 64), (200, 16)], ids=["fewer-images-than-dims", "more-images"])
def test_low_rank_scores_equal_the_dense_mahalanobis(n, d):
    features, labels = data(n, d)
    arrays, shrinkage = det.fit_statistics(features, labels)
    probe, _ = data(50, d, seed=1)
    probe = np.vstack([probe, np.random.default_rng(2).uniform(-5, 5, (10, d))])  # far from every class
    dense = fit_mahalanobis(features, labels)  # D×D inverse and Cholesky factor: computed another way
    assert shrinkage == pytest.approx(dense.shrinkage, rel=1e-9)
    detector = det.Detector(arrays=arrays, shrinkage=shrinkage)
    np.testing.assert_allclose(detector.score(probe), dense.score(probe), rtol=2e-4, atol=1e-4)
    assert arrays["basis"].shape == (d, min(n - 4, d))  # residuals of 4 class means span n - 4 directions


def test_shrinkage_is_sklearns_ledoit_wolf():
    features, labels = data(40, 32, seed=3)
    x = l2_normalize(features.astype(np.float64))
    means = np.stack([x[labels == c].mean(0) for c in range(4)])
    _, want = sklearn_ledoit_wolf(x - means[labels], assume_centered=True)
    assert det.fit_statistics(features, labels)[1] == pytest.approx(want, rel=1e-9)


def test_the_score_is_scale_free_and_far_inputs_score_high():
    features, labels = data(60, 32)
    detector = det.fit_detector("mahalanobis", features, labels, features[:20])
    np.testing.assert_allclose(detector.score(features * 7.5), detector.score(features), rtol=1e-6)  # ℓ2-normalised
    far = np.random.default_rng(4).uniform(-5, 5, (20, 32))
    assert detector.score(far).min() > np.percentile(detector.score(features), 95)


def test_fit_sets_the_threshold_on_validation_and_keeps_the_scores():
    features, labels = data(400, 16, seed=5)
    validation, _ = data(5000, 16, seed=6)
    fitted = det.fit_detector("mahalanobis", features, labels, validation)
    scores = fitted.score(validation)
    assert fitted.threshold == pytest.approx(threshold_at_tpr(scores), rel=1e-9)
    assert fitted.flags(scores).mean() == pytest.approx(0.05, abs=0.001)
    assert len(fitted.validation_scores) == det.MAX_KEPT_SCORES  # quantiles beyond that many
    assert fitted.threshold_at(0.5) == pytest.approx(np.median(scores), rel=0.01)


def test_an_unfitted_detector_says_it_cannot_score():
    with pytest.raises(ValueError, match="holds no statistics"):
        det.Detector().score(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="method must be one of"):
        det.fit_detector("energy", *data(10, 4), np.zeros((2, 4)))


def test_the_entry_round_trips_and_bad_entries_are_refused():
    features, labels = data(40, 8)
    fitted = det.fit_detector("mahalanobis", features, labels, features)
    entry = fitted.to_dict()
    again = det.Detector.from_dict(entry)
    assert (again.method, again.threshold, again.tpr, again.shrinkage) == (
        fitted.method, pytest.approx(fitted.threshold, rel=1e-6), fitted.tpr, fitted.shrinkage)
    np.testing.assert_array_equal(again.validation_scores, fitted.validation_scores)
    assert entry["directions"] == fitted.arrays["basis"].shape[1] and not again.fitted
    assert det.Detector.from_dict({**entry, "threshold": None}).threshold == math.inf
    for bad, message in ((None, "must be an object"), ({"method": "vim", "tpr": 0.95}, "unknown unfamiliar"),
                         ({"method": "mahalanobis", "threshold": "x", "tpr": 0.95}, "finite number or null"),
                         ({"method": "mahalanobis", "threshold": 1.0, "tpr": 2}, "tpr must be in"),
                         ({"method": "mahalanobis", "threshold": 1.0, "tpr": 0.9, "validation_scores": [1, None]},
                          "validation_scores")):
        with pytest.raises(ValueError, match=message):
            det.Detector.from_dict(bad)
