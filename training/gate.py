"""The publish gate: a trained candidate becomes a version only when it is clearly better than nothing.

Like TFX's Evaluator, which "blesses" a model before it is pushed, `imgclf train`
checks its candidate on the test split before the export goes where the service
polls. Three checks, all on the same test split:

* **beats the majority class**: a one-sided exact binomial test of the number of
  correct answers against the rate of always answering the split's most common
  class, p < :data:`SIGNIFICANCE`. The margin this asks for shrinks as the split
  grows: 5 of 5 is not enough against 2 of 5 (p = 0.0102), 9 of 10 against 4 of
  10 is.
* **meets --min-accuracy**, when given.
* **loses at most --max-regression** of accuracy against the current default
  version (the newest complete one), evaluated on the same test bottlenecks,
  when that version has the same labels and featurizer; otherwise skipped, and
  the report says why.

Everything here is pure (numbers in, a :class:`GateReport` out); the job
(:mod:`imgclf.training.train_job`) evaluates the versions and writes the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from imgclf.core.errors import UsageError

PUBLISH_MODES = ("gated", "always")  # gated: only a candidate that passes every check; always: whatever it scores
SIGNIFICANCE = 0.01  # the binomial test's level: a chance-level head passes once in a hundred runs at most
DEFAULT_MAX_REGRESSION = 0.01  # accuracy (absolute, 0-1) a new version may lose against the current one
# Accuracies are ratios of counts; a difference that is equal on paper may be off by one ulp in floats.
_TOLERANCE = 1e-12

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


@dataclass(frozen=True)
class GateConfig:
    """What the gate asks of a candidate (filled from `imgclf train`'s flags)."""

    publish: str = "gated"  # gated | always (always publishes a candidate that fails, and says so)
    min_accuracy: float | None = None  # test accuracy the candidate must reach, in [0, 1]; None = no such check
    max_regression: float = DEFAULT_MAX_REGRESSION  # test accuracy it may lose against the current version, [0, 1]

    def validate(self) -> None:
        """Raise UsageError (a ValueError) naming the flag whose value is out of range."""
        if self.publish not in PUBLISH_MODES:
            raise UsageError(f"--publish must be one of {', '.join(PUBLISH_MODES)}; received {self.publish!r}")
        for flag, value in (("--min-accuracy", self.min_accuracy), ("--max-regression", self.max_regression)):
            if value is None and flag == "--min-accuracy":
                continue
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise UsageError(f"{flag} must be a number between 0 and 1; received {value!r}")


@dataclass(frozen=True)
class Check:
    """One check's outcome."""

    name: str  # what was checked (a row of the table)
    status: str  # pass | fail | skipped
    detail: str  # the numbers, in words


@dataclass(frozen=True)
class CurrentVersion:
    """The model's current default version, as far as it could be compared with the candidate."""

    version: int | None = None  # None: the model has no complete version yet
    predicted: np.ndarray | None = None  # its top-1 class ids on the candidate's test split; None = not evaluated
    skipped: str | None = None  # why it was not evaluated (other labels, other featurizer, unreadable)


@dataclass
class GateReport:
    """The gate's verdict on one candidate and the numbers behind it (JSON-ready with :meth:`to_dict`)."""

    publish: str  # gated | always
    num_examples: int  # size of the test split
    correct: int  # the candidate's correct answers on it
    baseline_label: str | None  # the test split's most common class (None: empty split)
    baseline_rate: float  # its share of the split: the accuracy of always answering it
    p_value: float  # one-sided exact binomial P(X >= correct), X ~ Binomial(num_examples, baseline_rate)
    min_accuracy: float | None
    max_regression: float
    current_version: int | None  # the model's current default version (None: this is its first)
    current_correct: int | None  # its correct answers on the same split (None: not compared)
    current_skipped: str | None  # why it was not compared
    checks: list[Check] = field(default_factory=list)
    significance: float = SIGNIFICANCE

    @property
    def accuracy(self) -> float:
        """Return the candidate's test accuracy (0 on an empty split)."""
        return _ratio(self.correct, self.num_examples)

    @property
    def current_accuracy(self) -> float | None:
        """Return the current version's accuracy on the same split, or None when it was not compared."""
        return None if self.current_correct is None else _ratio(self.current_correct, self.num_examples)

    @property
    def passed(self) -> bool:
        """Return whether no check failed (a skipped check does not fail the candidate)."""
        return all(check.status != FAIL for check in self.checks)

    @property
    def published(self) -> bool:
        """Return whether the candidate is published: it passed, or ``--publish always`` overrides the gate."""
        return self.passed or self.publish == "always"

    def reason(self) -> str:
        """Return the verdict in one line."""
        failed = "; ".join(check.detail for check in self.checks if check.status == FAIL)
        if self.passed:
            return (f"candidate passed the publish gate: test accuracy {self.accuracy:.4f} "
                    f"({self.correct} of {self.num_examples}), p = {self.p_value:.3g} against the majority class")
        if self.publish == "always":
            return f"candidate failed the publish gate, published anyway (--publish always): {failed}"
        return f"candidate rejected by the publish gate: {failed}"

    def to_dict(self) -> dict:
        """Return the report as JSON-ready data (for the model card and gate.json)."""
        return {
            "publish": self.publish,
            "passed": self.passed,
            "published": self.published,
            "reason": self.reason(),
            "test_examples": self.num_examples,
            "candidate": {"accuracy": self.accuracy, "correct": self.correct},
            "baseline": {"kind": "majority class of the test split", "label": self.baseline_label,
                         "rate": self.baseline_rate},
            "binomial_test": {"p_value": self.p_value, "significance": self.significance,
                              "alternative": "greater"},
            "current_version": {"version": self.current_version, "accuracy": self.current_accuracy,
                                "correct": self.current_correct, "skipped": self.current_skipped},
            "min_accuracy": self.min_accuracy,
            "max_regression": self.max_regression,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
        }

    def format_table(self) -> str:
        """Return the comparison table: candidate, majority class and current version, then each check."""
        n = self.num_examples
        rows = [("candidate", f"{self.accuracy:.4f}", f"{self.correct}/{n}")]
        baseline_correct = round(self.baseline_rate * n)
        label = f"  (always {self.baseline_label!r})" if self.baseline_label is not None else ""
        rows.append(("majority class", f"{self.baseline_rate:.4f}", f"{baseline_correct}/{n}{label}"))
        if self.current_correct is not None:
            rows.append((f"current (version {self.current_version})", f"{self.current_accuracy:.4f}",
                         f"{self.current_correct}/{n}"))
        elif self.current_version is not None:
            rows.append((f"current (version {self.current_version})", "-", f"not compared: {self.current_skipped}"))
        else:
            rows.append(("current", "-", "none (first version)"))
        width = max(len(r[0]) for r in rows + [(c.name, "", "") for c in self.checks] + [("check", "", "")])
        lines = [f"publish gate on the test split ({n} examples)",
                 f"{'':<{width}}  {'accuracy':>8}  correct"]
        lines += [f"{name:<{width}}  {acc:>8}  {count}" for name, acc, count in rows]
        lines += ["", f"{'check':<{width}}  {'result':>8}  detail"]
        lines += [f"{c.name:<{width}}  {c.status.upper():>8}  {c.detail}" for c in self.checks]
        return "\n".join(lines)


def binomial_tail(k: int, n: int, p: float) -> float:
    """Return P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of ``k`` successes in ``n`` trials.

    Summed in log space (exact coefficients from :func:`math.comb`), so large splits neither
    overflow nor underflow to a wrong zero.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer; received {n!r}")
    if not _is_real(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1]; received {p!r}")
    if k <= 0:
        return 1.0
    if k > n or p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.log(math.comb(n, i)) + i * log_p + (n - i) * log_q for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def majority_class(labels: np.ndarray, num_classes: int) -> tuple[int | None, float]:
    """Return (the most common class id, its share) of ``labels``; (None, 0.0) when there are none."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return None, 0.0
    counts = np.bincount(labels, minlength=num_classes)
    best = int(np.argmax(counts))  # ties: the lowest id, so the report is the same on every run
    return best, float(counts[best]) / float(labels.size)


def check_beats_majority(correct: int, n: int, rate: float, significance: float = SIGNIFICANCE) -> tuple[Check, float]:
    """Return the majority-class check and its p-value: passes when p < ``significance``."""
    name = "beats majority class"
    if n == 0:
        return Check(name, FAIL, "the test split is empty: nothing shows the candidate beats chance"), 1.0
    p_value = binomial_tail(correct, n, rate)
    verdict = PASS if p_value < significance else FAIL
    relation = "<" if verdict == PASS else ">="
    return Check(name, verdict, f"{correct} of {n} correct against the majority-class rate {rate:.4f}: "
                                f"one-sided binomial p = {p_value:.3g} {relation} {significance:g}"), p_value


def check_min_accuracy(accuracy: float, min_accuracy: float | None) -> Check:
    """Return the --min-accuracy check: passes when ``accuracy`` reaches it; skipped without one."""
    name = "min accuracy"
    if min_accuracy is None:
        return Check(name, SKIPPED, "no --min-accuracy given")
    if accuracy >= min_accuracy - _TOLERANCE:
        return Check(name, PASS, f"test accuracy {accuracy:.4f} >= --min-accuracy {min_accuracy:g}")
    return Check(name, FAIL, f"test accuracy {accuracy:.4f} is below --min-accuracy {min_accuracy:g}")


def check_regression(accuracy: float, current: CurrentVersion, current_accuracy: float | None,
                     max_regression: float) -> Check:
    """Return the --max-regression check against the current version; skipped when there is none to compare."""
    name = "max regression"
    if current.version is None:
        return Check(name, SKIPPED, "no current version to compare with (this is the first)")
    if current_accuracy is None:
        return Check(name, SKIPPED, f"version {current.version} not compared: {current.skipped or 'not evaluated'}")
    change = accuracy - current_accuracy
    verdict = PASS if -change <= max_regression + _TOLERANCE else FAIL
    words = "within" if verdict == PASS else "loses more than"
    return Check(name, verdict, f"test accuracy {accuracy:.4f} against {current_accuracy:.4f} of version "
                                f"{current.version} (change {change:+.4f}): {words} --max-regression "
                                f"{max_regression:g}")


def judge(config: GateConfig, labels, predicted, label_names: list[str],
          current: CurrentVersion = CurrentVersion()) -> GateReport:
    """Return the gate's report on a candidate whose top-1 answers on the test split are ``predicted``.

    Args:
        labels: the test split's true class ids [N].
        predicted: the candidate's top-1 class ids [N].
        label_names: the class names, in id order.
        current: the current default version and its answers on the same split.
    """
    config.validate()
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted must hold one class id per test label ({labels.size}); "
                         f"received {predicted.size}")
    n = int(labels.size)
    correct = int((predicted == labels).sum())
    best, rate = majority_class(labels, len(label_names))
    beats, p_value = check_beats_majority(correct, n, rate)
    current_correct = None
    if current.version is not None and current.predicted is not None:
        current_predicted = np.asarray(current.predicted, dtype=np.int64).reshape(-1)
        if current_predicted.shape != labels.shape:
            raise ValueError(f"the current version's answers must be one per test label ({labels.size}); "
                             f"received {current_predicted.size}")
        current_correct = int((current_predicted == labels).sum())
    accuracy = _ratio(correct, n)
    current_accuracy = None if current_correct is None else _ratio(current_correct, n)
    checks = [beats, check_min_accuracy(accuracy, config.min_accuracy),
              check_regression(accuracy, current, current_accuracy, config.max_regression)]
    return GateReport(publish=config.publish, num_examples=n, correct=correct,
                      baseline_label=None if best is None else label_names[best], baseline_rate=rate,
                      p_value=p_value, min_accuracy=config.min_accuracy, max_regression=config.max_regression,
                      current_version=current.version, current_correct=current_correct,
                      current_skipped=None if current_correct is not None else current.skipped, checks=checks)


def _ratio(part: int, whole: int) -> float:
    return float(part) / float(whole) if whole else 0.0


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
