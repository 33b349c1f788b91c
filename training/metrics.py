"""Classification metrics for the model card: accuracy, per-class P/R/F1, confusion matrix.

Also renders the confusion matrix as an RGB heatmap (Pillow + numpy) for TensorBoard.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from imgclf.core import settings

NAME_WIDTH = 20  # label names longer than this are cut in the table
# Fonts with wide coverage for non-ASCII label names (CJK first); IMGCLF_FONT goes before them.
WIDE_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
COLUMN_NAME_WIDTH = 10  # ... and this in the confusion matrix's column headers


@dataclass
class Metrics:
    """How well predictions match the truth, per class and overall."""

    accuracy: float
    per_class: list[dict]  # {label, precision, recall, f1, support}, in label order
    confusion: list[list[int]]  # rows = true label, columns = predicted label
    macro: dict  # unweighted mean of precision, recall and f1 over all classes
    weighted: dict  # the same, weighted by support
    label_names: list[str] = field(default_factory=list)
    num_examples: int = 0

    def to_dict(self) -> dict:
        """Return the metrics as JSON-ready data (plain floats, ints, strings and lists)."""
        return {
            "accuracy": self.accuracy,
            "num_examples": self.num_examples,
            "label_names": list(self.label_names),
            "per_class": [dict(row) for row in self.per_class],
            "macro": dict(self.macro),
            "weighted": dict(self.weighted),
            "confusion": [list(row) for row in self.confusion],
        }

    def format_table(self) -> str:
        """Return a readable, aligned table: per-class P/R/F1, averages and the confusion matrix."""
        names = [_truncate(n, NAME_WIDTH) for n in self.label_names]
        width = max([_width(n) for n in names] + [len("weighted avg")])
        lines = [f"accuracy {self.accuracy:.4f} on {self.num_examples} examples", ""]
        lines.append(f"{_left('label', width)}  {'precision':>9}  {'recall':>9}  {'f1':>9}  "
                     f"{'support':>7}")
        for name, row in zip(names, self.per_class):
            lines.append(f"{_left(name, width)}  {row['precision']:>9.4f}  {row['recall']:>9.4f}  "
                         f"{row['f1']:>9.4f}  {row['support']:>7d}")
        lines.append("")
        for title, avg in (("macro avg", self.macro), ("weighted avg", self.weighted)):
            lines.append(f"{_left(title, width)}  {avg['precision']:>9.4f}  {avg['recall']:>9.4f}  "
                         f"{avg['f1']:>9.4f}  {self.num_examples:>7d}")
        lines += ["", "confusion matrix (rows = true, columns = predicted)"]
        columns = [_truncate(n, COLUMN_NAME_WIDTH) for n in self.label_names]
        biggest = max((v for row in self.confusion for v in row), default=0)
        cell = max([_width(c) for c in columns] + [len(str(biggest))])
        lines.append(" " * width + "".join(f"  {_right(c, cell)}" for c in columns))
        for name, row in zip(names, self.confusion):
            lines.append(_left(name, width) + "".join(f"  {v:>{cell}d}" for v in row))
        return "\n".join(lines)


def _width(text: str) -> int:
    """Return how many terminal columns ``text`` takes (wide East Asian characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _left(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _right(text: str, width: int) -> str:
    return " " * (width - _width(text)) + text


def _truncate(name: str, width: int) -> str:
    """Cut ``name`` to at most ``width`` columns, marking the cut with an ellipsis."""
    if _width(name) <= width:
        return name
    while _width(name) > width - 1:
        name = name[:-1]
    return name + "…"


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Divide elementwise, 0.0 where the denominator is 0 (no predictions, no examples)."""
    out = np.zeros(np.shape(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the ``[num_classes, num_classes]`` count matrix, rows = true, columns = predicted."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def evaluate(probabilities, y_true, label_names: list[str]) -> Metrics:
    """Score predicted probabilities (argmax = prediction) against true integer labels.

    Args:
        probabilities: ``[N, K]`` scores, one column per label (probabilities or logits).
            N may be 0 (an empty test split): every number is then 0.0.
        y_true: ``[N]`` integer labels in ``[0, K)``.
        label_names: the K label names, in column order.
    """
    probabilities = np.asarray(probabilities)
    y_true = np.asarray(y_true)
    label_names = [str(n) for n in label_names]
    k = len(label_names)
    if probabilities.ndim != 2 or probabilities.shape[1] != k:
        raise ValueError(f"probabilities must be [N, {k}] (one column per label name); "
                         f"received shape {probabilities.shape}")
    if y_true.ndim != 1 or y_true.shape[0] != probabilities.shape[0]:
        raise ValueError(f"y_true must be [{probabilities.shape[0]}] (one label per row of "
                         f"probabilities); received shape {y_true.shape}")
    if not np.issubdtype(y_true.dtype, np.integer) and y_true.size:
        raise ValueError(f"y_true must hold integers; received dtype {y_true.dtype}")
    y_true = y_true.astype(np.int64)
    if y_true.size and (y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"labels must be in [0, {k}); received values from {y_true.min()} "
                         f"to {y_true.max()}")

    y_pred = np.argmax(probabilities, axis=1)
    matrix = confusion_matrix(y_true, y_pred, k)
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _divide(true_positive, matrix.sum(axis=0))
    recall = _divide(true_positive, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    per_class = [
        {"label": name, "precision": float(p), "recall": float(r), "f1": float(f),
         "support": int(s)}
        for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
    ]
    weights = _divide(support, np.full(k, support.sum()))
    return Metrics(
        accuracy=float(_divide(true_positive.sum(), np.array(y_true.shape[0]))),
        per_class=per_class,
        confusion=matrix.tolist(),
        macro={"precision": float(precision.mean()), "recall": float(recall.mean()),
               "f1": float(f1.mean())},
        weighted={"precision": float(weights @ precision), "recall": float(weights @ recall),
                  "f1": float(weights @ f1)},
        label_names=label_names,
        num_examples=int(y_true.shape[0]),
    )


def _font(names: list[str], size: int):
    """Return Pillow's own font for ASCII names, else the first wide-coverage font installed."""
    from PIL import ImageFont

    if not all(name.isascii() for name in names):
        for path in (settings.env_str(settings.ENV_FONT) or None, *WIDE_FONTS):
            if path and os.path.isfile(path):
                return ImageFont.truetype(path, size=size)
    return ImageFont.load_default(size=size)


def confusion_image(confusion, label_names: list[str], cell: int | None = None) -> np.ndarray:
    """Render a confusion matrix as a heatmap with counts and label names: uint8 ``[H, W, 3]``.

    Each cell's colour is its share of the true row (so recall shows on the diagonal);
    the count is written in it. True labels run down the left, predicted ones across the
    top (rotated).
    """
    from PIL import Image, ImageDraw

    matrix = np.asarray(confusion, dtype=np.int64)
    k = len(label_names)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion must be [{k}, {k}] for {k} label names; "
                         f"received shape {matrix.shape}")
    if cell is None:
        cell = int(np.clip(480 // max(k, 1), 28, 64))
    font = _font([str(n) for n in label_names], size=max(10, cell // 3))
    names = [_truncate(str(n), NAME_WIDTH) for n in label_names]
    caption = "rows = true, columns = predicted"
    name_px = max(int(font.getlength(n)) for n in names) + 10
    margin = 8
    left, top = name_px + margin, name_px + margin
    width = max(left + k * cell, int(font.getlength(caption))) + 2 * margin
    height = top + k * cell + cell // 2 + 2 * margin
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    low, high = np.array([247, 251, 255]), np.array([8, 48, 107])  # white → dark blue
    for i in range(k):
        for j in range(k):
            colour = tuple(int(v) for v in low + (high - low) * shares[i, j])
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour,
                           outline=(200, 200, 200))
            text = str(matrix[i, j])
            ink = "white" if shares[i, j] > 0.5 else "black"
            draw.text((x0 + cell / 2, y0 + cell / 2), text, fill=ink, font=font, anchor="mm")
        draw.text((left - 6, top + i * cell + cell / 2), names[i], fill="black", font=font,
                  anchor="rm")

    # Column names: draw horizontally on a strip, then rotate it to read bottom-up.
    strip = Image.new("RGB", (name_px, k * cell), "white")
    strip_draw = ImageDraw.Draw(strip)
    for j in range(k):
        strip_draw.text((4, j * cell + cell / 2), names[j], fill="black", font=font, anchor="lm")
    image.paste(strip.rotate(90, expand=True), (left, top - name_px - 2))
    draw.text((margin, height - margin), caption, fill=(90, 90, 90), font=font, anchor="ld")
    return np.asarray(image, dtype=np.uint8)
