"""Temperature scaling: the fit against scipy's optimiser, NLL and ECE against explicit loops, the small-split rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax as scipy_log_softmax

from imgclf.training import calibration as cal


def overconfident(n: int, classes: int = 5, sharpness: float = 4.0, seed: int = 0):
    """Return logits that are right ~70% of the time but say so with ~99% confidence, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    right = rng.random(n) < 0.7
    guess = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
    logits[np.arange(n), guess] += 2.0
    return logits * sharpness, labels


def reference_nll(logits, labels, temperature):
    return float(-np.mean(scipy_log_softmax(np.asarray(logits) / temperature, axis=1)[np.arange(len(labels)), labels]))


def test_nll_matches_scipy():
    logits, labels = overconfident(200)
    for t in (0.5, 1.0, 3.0):
        assert cal.nll(logits, labels, t) == pytest.approx(reference_nll(logits, labels, t), rel=1e-12)


def test_fitted_temperature_is_scipys_minimiser_and_lowers_the_nll():
    logits, labels = overconfident(400)
    fitted = cal.fit_temperature(logits, labels)
    best = minimize_scalar(lambda t: reference_nll(logits, labels, t), bounds=(0.05, 20), method="bounded",
                           options={"xatol": 1e-8})
    assert fitted == pytest.approx(best.x, rel=1e-4)
    assert fitted > 1.5  # overconfident logits are softened
    assert cal.nll(logits, labels, fitted) < cal.nll(logits, labels) - 0.1


def test_a_perfectly_separated_split_reaches_the_lower_bound():
    labels = np.arange(30) % 3
    logits = np.eye(3)[labels] * 2.0  # every answer right: sharper is always better
    assert cal.fit_temperature(logits, labels) == cal.MIN_TEMPERATURE


def explicit_ece(probabilities, labels, bins):
    total, n = 0.0, len(labels)
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        rows = [i for i in range(n) if low < probabilities[i].max() <= high or (b == 0 and probabilities[i].max() == 0)]
        if rows:
            confidence = np.mean([probabilities[i].max() for i in rows])
            accuracy = np.mean([probabilities[i].argmax() == labels[i] for i in rows])
            total += len(rows) / n * abs(accuracy - confidence)
    return total


def test_ece_matches_an_explicit_loop():
    logits, labels = overconfident(300, sharpness=1.5, seed=3)
    probabilities = cal.softmax(logits)
    assert cal.ece(probabilities, labels) == pytest.approx(explicit_ece(probabilities, labels, 15), abs=1e-12)
    assert cal.ece(probabilities, labels, 10) == pytest.approx(explicit_ece(probabilities, labels, 10), abs=1e-12)


def test_ece_of_calibrated_draws_is_small_and_of_overconfident_ones_large():
    rng = np.random.default_rng(1)
    n, classes = 20000, 4
    probabilities = rng.dirichlet(np.ones(classes), n)
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])  # drawn from the stated probabilities
    assert cal.ece(probabilities, labels) < 0.02
    logits, labels = overconfident(2000)
    assert cal.ece(cal.softmax(logits), labels) > 0.2


def test_calibrate_reports_both_splits_before_and_after():
    val_logits, val_labels = overconfident(300, seed=1)
    test_logits, test_labels = overconfident(300, seed=2)
    result = cal.calibrate("temperature", val_logits, val_labels, test_logits, test_labels)
    assert result.method == "temperature" and result.note == ""
    assert result.validation.nll_after < result.validation.nll_before
    assert result.test.ece_after < result.test.ece_before  # it carries over to unseen logits
    assert result.test.ece_after == pytest.approx(
        cal.ece(cal.softmax(test_logits, result.temperature), test_labels))
    entry = result.to_dict()
    assert entry["validation"]["examples"] == 300 and entry["bins"] == 15
    table = cal.format_table(entry)
    assert "validation" in table and f"{result.test.ece_after:.4f}" in table


def test_a_small_validation_split_is_not_fitted_and_says_so():
    logits, labels = overconfident(cal.MIN_VALIDATION - 1)
    result = cal.calibrate("temperature", logits, labels, logits, labels)
    assert (result.method, result.temperature) == ("none", 1.0)
    assert f"{cal.MIN_VALIDATION - 1} images" in result.note and "uncalibrated" in result.note
    assert result.validation.nll_after == result.validation.nll_before


def test_none_keeps_the_softmax_and_an_empty_test_split_has_no_figures():
    logits, labels = overconfident(50)
    result = cal.calibrate("none", logits, labels, np.zeros((0, 5)), np.zeros(0, int))
    assert result.temperature == 1.0 and "--calibration none" in result.note
    assert result.test.examples == 0 and result.test.nll_before is None
    assert math.isnan(cal.nll(np.zeros((0, 5)), np.zeros(0, int)))
    with pytest.raises(ValueError, match="calibration must be one of"):
        cal.calibrate("platt", logits, labels, logits, labels)


def test_reliability_diagram_draws_two_panels():
    logits, labels = overconfident(200)
    rgb = cal.reliability_diagram(cal.softmax(logits), cal.softmax(logits, 3.0), labels, "title")
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 100)
    half = rgb.shape[1] // 2
    assert blue[:, :half].sum() > 500 and blue[:, half:].sum() > 500  # bars in both panels
