"""The publish gate's checks: the binomial test against exact fractions, each check at its boundaries."""

import json
from fractions import Fraction
from math import comb

import numpy as np
import pytest

from imgclf.core.errors import UsageError
from imgclf.training.gate import (
    FAIL,
    PASS,
    SKIPPED,
    CurrentVersion,
    GateConfig,
    binomial_tail,
    check_beats_majority,
    check_min_accuracy,
    check_regression,
    judge,
    majority_class,
)

LABELS = ["a", "b", "c", "d"]


def exact_tail(k: int, n: int, p: Fraction) -> Fraction:
    """P(X >= k), X ~ Binomial(n, p), summed term by term in exact rationals (the reference)."""
    return sum((comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(max(k, 0), n + 1)), Fraction(0))


@pytest.mark.parametrize("k, n, p", [
    (5, 5, Fraction(2, 5)), (4, 5, Fraction(2, 5)), (9, 10, Fraction(2, 5)), (0, 7, Fraction(1, 3)),
    (3, 7, Fraction(1, 3)), (11, 13, Fraction(6, 13)), (60, 100, Fraction(1, 2)), (1, 1, Fraction(1, 10)),
    (140, 400, Fraction(1, 4)), (390, 400, Fraction(1, 4)), (8, 1000, Fraction(1, 1000)),
])
def test_binomial_tail_matches_exact_fractions(k, n, p):
    reference = exact_tail(k, n, p)
    got = binomial_tail(k, n, float(p))
    assert got == pytest.approx(float(reference), rel=1e-9, abs=1e-300)


def test_binomial_tail_edges():
    assert binomial_tail(0, 0, 0.5) == 1.0 and binomial_tail(-1, 3, 0.5) == 1.0
    assert binomial_tail(4, 3, 0.5) == 0.0
    assert binomial_tail(1, 3, 0.0) == 0.0 and binomial_tail(3, 3, 1.0) == 1.0
    # a large split: each term underflows on its own (0.5 ** 2000), their sum in log space does not
    assert binomial_tail(1100, 2000, 0.5) == pytest.approx(float(exact_tail(1100, 2000, Fraction(1, 2))), rel=1e-9)
    assert 0.0 < binomial_tail(1100, 2000, 0.5) < 1e-5


@pytest.mark.parametrize("k, n, p", [(1, -1, 0.5), (1, 2.5, 0.5), (1, 3, 1.5), (1, 3, float("nan"))])
def test_binomial_tail_refuses_nonsense(k, n, p):
    with pytest.raises(ValueError, match="must be"):
        binomial_tail(k, n, p)


def test_majority_class_is_the_most_common_label_of_the_split():
    assert majority_class(np.array([3, 1, 3, 0, 3]), 4) == (3, 0.6)
    assert majority_class(np.array([2, 1, 2, 1]), 4) == (1, 0.5)  # a tie: the lowest id
    assert majority_class(np.array([], np.int64), 4) == (None, 0.0)


@pytest.mark.parametrize("correct, n, rate, status", [
    (5, 5, 0.4, FAIL),  # p = 0.4**5 = 0.01024: even a perfect 5 is not clear against 2 of 5
    (6, 6, 2 / 6, PASS),  # p = 0.00137
    (5, 6, 2 / 6, FAIL),  # p = 0.0178
    (9, 10, 0.4, PASS),  # p = 0.00168
    (8, 10, 0.4, FAIL),  # p = 0.0123
    (11, 13, 6 / 13, PASS),
    (10, 13, 6 / 13, FAIL),
    (2, 5, 0.4, FAIL),  # the baseline's own score
])
def test_beats_majority_at_its_boundary(correct, n, rate, status):
    check, p_value = check_beats_majority(correct, n, rate)
    assert check.status == status, check
    assert (p_value < 0.01) == (status == PASS)
    assert f"{correct} of {n}" in check.detail


def test_an_empty_test_split_fails_the_baseline_check():
    check, p_value = check_beats_majority(0, 0, 0.0)
    assert check.status == FAIL and p_value == 1.0 and "empty" in check.detail


@pytest.mark.parametrize("accuracy, minimum, status", [
    (0.9, None, SKIPPED), (0.9, 0.9, PASS), (0.7, 0.7, PASS), (0.8999, 0.9, FAIL), (1.0, 1.0, PASS),
    (0.0, 0.0, PASS), (2 / 3, 0.6667, FAIL),
])
def test_min_accuracy_at_its_boundary(accuracy, minimum, status):
    assert check_min_accuracy(accuracy, minimum).status == status


@pytest.mark.parametrize("accuracy, current, max_regression, status", [
    (0.89, 0.90, 0.01, PASS),  # exactly the allowed loss (0.90 - 0.89 is 0.010000000000000009 in floats)
    (0.88, 0.90, 0.01, FAIL),
    (0.95, 0.90, 0.0, PASS),  # better is always fine
    (0.90, 0.90, 0.0, PASS),
    (0.8, 0.9, 0.0, FAIL),
    (0.0, 1.0, 1.0, PASS),
])
def test_regression_at_its_boundary(accuracy, current, max_regression, status):
    check = check_regression(accuracy, CurrentVersion(4, predicted=np.zeros(1)), current, max_regression)
    assert check.status == status and "version 4" in check.detail


def test_regression_is_skipped_without_a_comparable_version():
    assert check_regression(0.5, CurrentVersion(), None, 0.01).status == SKIPPED
    check = check_regression(0.5, CurrentVersion(2, skipped="other labels"), None, 0.01)
    assert check.status == SKIPPED and "version 2" in check.detail and "other labels" in check.detail


def _split(n_per_class=(3, 3, 2, 2)):
    return np.repeat(np.arange(len(n_per_class)), n_per_class)


def test_judge_passes_a_good_candidate_and_reports_every_number():
    labels = _split()  # 10 examples, majority 3 of 10
    predicted = labels.copy()
    predicted[0] = 1  # 9 of 10
    current = CurrentVersion(1, predicted=labels.copy())  # 10 of 10: the candidate loses 0.1
    report = judge(GateConfig(max_regression=0.1, min_accuracy=0.9), labels, predicted, LABELS, current)
    assert report.passed and report.published
    assert (report.correct, report.num_examples, report.accuracy) == (9, 10, 0.9)
    assert (report.baseline_label, report.baseline_rate) == ("a", 0.3)
    assert report.p_value == pytest.approx(float(exact_tail(9, 10, Fraction(3, 10))), rel=1e-9)
    assert report.current_version == 1 and report.current_accuracy == 1.0
    assert [c.status for c in report.checks] == [PASS, PASS, PASS]
    data = report.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["passed"] and data["current_version"] == {"version": 1, "accuracy": 1.0, "correct": 10,
                                                          "skipped": None}
    table = report.format_table()
    assert "candidate" in table and "majority class" in table and "current (version 1)" in table
    assert "PASS" in table and "0.9000" in table and "0.3000" in table


def test_judge_rejects_a_chance_level_candidate_and_says_why():
    labels = _split()
    predicted = np.roll(labels, 5)  # shuffled answers: none right
    report = judge(GateConfig(), labels, predicted, LABELS)
    assert not report.passed and not report.published
    assert report.checks[0].status == FAIL and report.checks[2].status == SKIPPED
    assert report.reason().startswith("candidate rejected by the publish gate: ")
    assert "p = " in report.reason() and "\n" not in report.reason()
    assert "none (first version)" in report.format_table() and "FAIL" in report.format_table()


def test_publish_always_publishes_a_failing_candidate_and_says_so():
    labels = _split()
    report = judge(GateConfig(publish="always"), labels, np.roll(labels, 5), LABELS)
    assert not report.passed and report.published
    assert "published anyway (--publish always)" in report.reason()


def test_judge_fails_a_candidate_that_regresses_or_misses_min_accuracy():
    labels = _split()
    predicted = labels.copy()
    predicted[:2] = 1  # 8 of 10 (p = 0.0016 against 3 of 10: beats the baseline)
    current = CurrentVersion(3, predicted=labels)
    report = judge(GateConfig(min_accuracy=0.85), labels, predicted, LABELS, current)
    assert [c.status for c in report.checks] == [PASS, FAIL, FAIL]
    assert "--min-accuracy" in report.reason() and "--max-regression" in report.reason()


def test_an_uncompared_current_version_is_in_the_report():
    labels = _split()
    report = judge(GateConfig(), labels, labels, LABELS, CurrentVersion(7, skipped="other labels (['x', 'y'])"))
    assert report.passed and report.current_version == 7 and report.current_correct is None
    assert report.to_dict()["current_version"]["skipped"] == "other labels (['x', 'y'])"
    assert "not compared: other labels" in report.format_table()


def test_judge_refuses_answers_that_do_not_match_the_labels():
    with pytest.raises(ValueError, match="one class id per test label"):
        judge(GateConfig(), _split(), np.zeros(3), LABELS)


@pytest.mark.parametrize("config, message", [
    (GateConfig(min_accuracy=1.5), "--min-accuracy must be a number between 0 and 1; received 1.5"),
    (GateConfig(min_accuracy=-0.1), "--min-accuracy must be"),
    (GateConfig(min_accuracy=float("nan")), "--min-accuracy must be"),
    (GateConfig(max_regression=2.0), "--max-regression must be a number between 0 and 1; received 2.0"),
    (GateConfig(max_regression=None), "--max-regression must be"),
    (GateConfig(publish="sometimes"), "--publish must be one of gated, always; received 'sometimes'"),
])
def test_bad_gate_settings_are_usage_errors(config, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config.validate()
