"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): fit, measure, draw.

A trained head's softmax is often over- or under-confident. Temperature
scaling divides the logits by one scalar ``T`` before the softmax, chosen to
minimise the negative log-likelihood (NLL) on the validation split. It changes
no prediction (the argmax of ``z / T`` is the argmax of ``z``), only how sure
the probabilities say the model is.

The fit works on ``β = 1 / T``: the NLL ``mean(logsumexp(β z) − β z_y)`` is
convex in β with derivative ``mean(E_p[z] − z_y)`` (non-decreasing), so the
optimum is the root of that derivative, found by bisection in float64 within
``[1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE]``: deterministic, no optimiser
dependency. Calibration is judged by the NLL and the expected calibration
error (ECE: confidence bins of equal width; the support-weighted mean gap
between accuracy and mean confidence), before and after, on validation and
test. A reliability diagram draws both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

METHODS = ("temperature", "none")
ECE_BINS = 15  # Guo et al.'s bin count
MIN_VALIDATION = 20  # fewer validation images than this: no temperature is fitted (T = 1)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0  # the search range; a fit at a bound is reported
_BISECTIONS = 100


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return log-probabilities of ``logits / temperature`` [N, C], in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return the probabilities of ``logits / temperature`` [N, C], in float64."""
    return np.exp(log_softmax(logits, temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Return the mean negative log-likelihood of integer ``labels`` under ``softmax(logits / T)`` (nan if empty)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return math.nan
    return float(-log_softmax(logits, temperature)[np.arange(len(labels)), labels].mean())


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Return the expected calibration error of ``probabilities`` [N, C] (top-1 confidence, equal-width bins).

    A confidence ``c`` falls in bin ``ceil(c · bins) − 1`` (bins are right-closed, ``(0, 1/bins]`` first).
    """
    confidence, correct = _confidence(probabilities, labels)
    if not len(confidence):
        return math.nan
    members = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = members == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(confidence))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Return per bin: its range, count, accuracy and mean confidence (None where a bin is empty)."""
    confidence, correct = _confidence(probabilities, labels)
    members = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = members == b
        n = int(inside.sum())
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": n,
                     "accuracy": float(correct[inside].mean()) if n else None,
                     "confidence": float(confidence[inside].mean()) if n else None})
    return rows


def _confidence(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(f"probabilities must be [N, C] and labels [N]; received {probabilities.shape} "
                         f"and {labels.shape}")
    return probabilities.max(axis=1), (probabilities.argmax(axis=1) == labels).astype(np.float64)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Return the temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the NLL of ``labels``."""
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or labels.shape != z.shape[:1] or not len(labels):
        raise ValueError(f"logits must be [N, C] and labels [N] with N >= 1; received {z.shape} and {labels.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite to fit a temperature")
    true = z[np.arange(len(labels)), labels]

    def slope(beta: float) -> float:  # d NLL / d beta = mean(E_p[z] - z_y), non-decreasing in beta
        p = np.exp(log_softmax(z, 1.0 / beta))
        return float(((p * z).sum(axis=1) - true).mean())

    low, high = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    if slope(low) >= 0:  # the NLL grows from the smallest beta on: the largest temperature
        return MAX_TEMPERATURE
    if slope(high) <= 0:  # still falling at the largest beta (e.g. every answer right): the smallest
        return MIN_TEMPERATURE
    for _ in range(_BISECTIONS):
        middle = 0.5 * (low + high)
        if slope(middle) < 0:
            low = middle
        else:
            high = middle
    return float(1.0 / (0.5 * (low + high)))


@dataclass
class SplitFigures:
    """NLL and ECE of one split, before (T = 1) and after calibration."""

    examples: int
    nll_before: float | None
    nll_after: float | None
    ece_before: float | None
    ece_after: float | None

    @classmethod
    def of(cls, logits: np.ndarray, labels: np.ndarray, temperature: float) -> SplitFigures:
        labels = np.asarray(labels)
        if not len(labels):
            return cls(0, None, None, None, None)
        return cls(len(labels), nll(logits, labels), nll(logits, labels, temperature),
                   ece(softmax(logits), labels), ece(softmax(logits, temperature), labels))


@dataclass
class Calibration:
    """How a head's probabilities were calibrated, and how well, for the model card and the training output."""

    method: str  # "temperature" or "none"
    temperature: float  # 1.0 when nothing was fitted
    validation: SplitFigures
    test: SplitFigures
    note: str = ""  # why nothing was fitted, or that the fit reached a bound
    diagram: dict = field(default_factory=dict)  # which split the reliability diagram shows

    def to_dict(self) -> dict:
        """Return the card's ``calibration`` entry (JSON-ready)."""
        return {"method": self.method, "temperature": self.temperature, "note": self.note,
                "bins": ECE_BINS, "validation": vars(self.validation).copy(), "test": vars(self.test).copy(),
                **({"reliability_diagram": self.diagram} if self.diagram else {})}

    def format_table(self) -> str:
        """Return a short table: NLL and ECE before and after on validation and test."""
        return format_table(self.to_dict())


def format_table(entry: dict) -> str:
    """Return the card's calibration entry (:meth:`Calibration.to_dict`) as a short table."""
    lines = [f"calibration: {entry['method']}, temperature {entry['temperature']:.4g}"
             + (f" ({entry['note']})" if entry.get("note") else "")]
    lines.append(f"{'split':<11} {'images':>6}  {'NLL before':>10}  {'NLL after':>9}  "
                 f"{'ECE before':>10}  {'ECE after':>9}")
    for name in ("validation", "test"):
        figures = entry[name]
        cells = [_cell(figures["nll_before"], 10), _cell(figures["nll_after"], 9),
                 _cell(figures["ece_before"], 10), _cell(figures["ece_after"], 9)]
        lines.append(f"{name:<11} {figures['examples']:>6}  " + "  ".join(cells))
    return "\n".join(lines)


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def calibrate(method: str, val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
              test_labels: np.ndarray) -> Calibration:
    """Fit the temperature on the validation split (``method`` "temperature") and measure both splits.

    Never fails for a small split: with fewer than :data:`MIN_VALIDATION` validation images the
    temperature stays 1 and the note says so.
    """
    if method not in METHODS:
        raise ValueError(f"calibration must be one of {', '.join(METHODS)}; received {method!r}")
    note, temperature = "", 1.0
    if method == "none":
        note = "not calibrated (--calibration none): probabilities are the head's softmax"
    elif len(val_labels) < MIN_VALIDATION:
        method = "none"
        note = (f"the validation split has {len(val_labels)} images, fewer than the {MIN_VALIDATION} a "
                "temperature fit needs: exported uncalibrated (temperature 1); add images or a larger "
                "--validation-percentage to calibrate")
    else:
        temperature = fit_temperature(val_logits, val_labels)
        if temperature in (MIN_TEMPERATURE, MAX_TEMPERATURE):
            note = f"the fit reached the search bound {temperature:g} (the validation split may be too easy or small)"
    return Calibration(method, temperature, SplitFigures.of(val_logits, val_labels, temperature),
                       SplitFigures.of(test_logits, test_labels, temperature), note)


def reliability_diagram(before: np.ndarray, after: np.ndarray, labels: np.ndarray, title: str,
                        bins: int = ECE_BINS) -> np.ndarray:
    """Draw reliability diagrams of ``before`` and ``after`` probabilities side by side: uint8 RGB [H, W, 3].

    Each panel: per confidence bin, a bar at the bin's accuracy (blue), the gap to its mean confidence
    (red outline), the diagonal of perfect calibration, the bin counts and the panel's ECE.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=10)
    panel, margin, top = 300, 44, 46
    image = Image.new("RGB", (2 * panel + 3 * margin, panel + top + margin + 12), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 8), title, fill="black", font=font)
    for index, (name, probabilities) in enumerate((("before", before), ("after", after))):
        x0, y0 = margin + index * (panel + margin), top
        draw.rectangle([x0, y0, x0 + panel, y0 + panel], outline=(120, 120, 120))
        draw.line([x0, y0 + panel, x0 + panel, y0], fill=(160, 160, 160), width=1)
        for row in reliability(probabilities, labels, bins):
            if not row["count"]:
                continue
            left, right = x0 + row["low"] * panel + 1, x0 + row["high"] * panel - 1
            accuracy_y = y0 + panel * (1 - row["accuracy"])
            confidence_y = y0 + panel * (1 - row["confidence"])
            draw.rectangle([left, accuracy_y, right, y0 + panel], fill=(70, 110, 200))
            draw.rectangle([left, min(accuracy_y, confidence_y), right, max(accuracy_y, confidence_y)],
                           outline=(200, 50, 50))
            draw.text(((left + right) / 2, y0 + panel - 2), str(row["count"]), fill="white", font=small,
                      anchor="mb")
        caption = f"{name}: ECE {ece(probabilities, labels, bins):.3f}" if len(labels) else f"{name}: no images"
        draw.text((x0, y0 + panel + 6), caption, fill="black", font=font)
        draw.text((x0 - 4, y0), "1", fill=(90, 90, 90), font=small, anchor="rt")
        draw.text((x0 - 4, y0 + panel), "0", fill=(90, 90, 90), font=small, anchor="rb")
    draw.text((margin, image.height - 6), "x: confidence, y: accuracy (bars), red: gap to confidence",
              fill=(90, 90, 90), font=small, anchor="lb")
    return np.asarray(image, dtype=np.uint8)
