"""The unfamiliar-input detector: energy, the 95% threshold, AUROC and FPR against references, its file entry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from imgclf.training import detector as det


def test_energy_is_minus_logsumexp():
    logits = np.random.default_rng(0).normal(0, 30, (50, 7))
    np.testing.assert_allclose(det.energy(logits), -logsumexp(logits, axis=1), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 7, 20, 101, 1000])
def test_the_threshold_keeps_at_least_95_percent_and_no_lower_one_does(n):
    scores = np.random.default_rng(n).normal(size=n)
    threshold = det.threshold_at_tpr(scores)
    kept = (scores.astype(np.float32) <= np.float32(threshold)).mean()
    assert kept >= 0.95
    below = np.sort(scores[scores.astype(np.float32) <= np.float32(threshold)])
    if len(below) > 1:  # the next lower score as threshold keeps fewer than 95%
        assert (scores <= below[-2]).mean() < 0.95


def test_auroc_equals_sklearn_ties_included():
    rng = np.random.default_rng(2)
    familiar, unfamiliar = rng.integers(0, 10, 300).astype(float), rng.integers(3, 14, 200).astype(float)
    want = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[familiar, unfamiliar])
    assert det.auroc(familiar, unfamiliar) == pytest.approx(want, abs=1e-12)
    assert det.auroc(familiar, familiar + 100) == 1.0 and det.auroc(familiar + 100, familiar) == 0.0
    assert math.isnan(det.auroc([], [1.0]))


def test_fpr_at_tpr_counts_unfamiliar_scores_at_or_below_the_threshold():
    familiar = np.arange(100, dtype=float)  # the 95% threshold is 94
    unfamiliar = np.array([10.0, 94.0, 94.5, 200.0])
    assert det.fpr_at_tpr(familiar, unfamiliar) == 0.5


def test_fit_sets_the_threshold_on_validation_and_keeps_the_scores():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (5000, 4))
    fitted = det.fit_detector("energy", np.zeros((5000, 2)), logits)
    scores = det.energy(logits)
    assert fitted.threshold == pytest.approx(det.threshold_at_tpr(scores), rel=1e-6)
    assert len(fitted.validation_scores) == det.MAX_KEPT_SCORES  # quantiles beyond that many
    assert fitted.threshold_at(0.5) == pytest.approx(np.median(scores), abs=0.02)
    assert fitted.flags(scores).mean() == pytest.approx(0.05, abs=0.002)


def test_the_entry_round_trips_and_bad_entries_are_refused():
    fitted = det.fit_detector("energy", np.zeros((40, 2)), np.random.default_rng(4).normal(size=(40, 3)))
    again = det.Detector.from_dict(fitted.to_dict())
    assert (again.method, again.threshold, again.tpr) == (fitted.method, fitted.threshold, fitted.tpr)
    np.testing.assert_array_equal(again.validation_scores, fitted.validation_scores)
    assert det.Detector.from_dict({**fitted.to_dict(), "threshold": None}).threshold == math.inf
    for bad, message in ((None, "must be an object"), ({"method": "vim", "tpr": 0.95}, "unknown unfamiliar"),
                         ({"method": "energy", "threshold": "x", "tpr": 0.95}, "finite number or null"),
                         ({"method": "energy", "threshold": 1.0, "tpr": 2}, "tpr must be in"),
                         ({"method": "energy", "threshold": 1.0, "tpr": 0.9, "validation_scores": [1, None]},
                          "validation_scores")):
        with pytest.raises(ValueError, match=message):
            det.Detector.from_dict(bad)
