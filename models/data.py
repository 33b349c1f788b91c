"""The secondary models' data: train/validation/test splits, and the quadratic curve's points.

The quadratic's data is generated: 2,000 evenly spaced training points and
1,500 evenly spaced test points over the same range (so they interleave), with
x and y min-max normalised to [0, 1] by constants taken from the training set.
The constants travel with the export, so callers send raw x and get raw y.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

X_RANGE = (-20.0, 20.0)
TRAIN_POINTS, TEST_POINTS = 2000, 1500


@dataclass
class Split:
    """Model-ready examples: ``x`` float32 inputs, ``y`` int32 labels [N] or float32 targets [N, 1]."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Data:
    """The splits one training run uses, and where they came from (for the model card)."""

    train: Split
    test: Split
    validation: Split | None = None  # None when there is no validation set
    source: dict = field(default_factory=dict)  # JSON-ready: file, sha256, or how the data was generated
    normalization: dict | None = None  # quadratic: x_min, x_max, y_min, y_max of the training data

    def sizes(self) -> dict:
        """Return ``{"train": n, "validation": n, "test": n}``."""
        return {"train": len(self.train), "validation": len(self.validation) if self.validation else 0,
                "test": len(self.test)}


def quadratic(x: np.ndarray) -> np.ndarray:
    """Return y = 0.2x² − x + 1 (the curve the quadratic model learns)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.2 * x * x - x + 1.0


@dataclass(frozen=True)
class Normalization:
    """Min-max constants mapping raw x and y to [0, 1] (over the training data)."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def x(self, raw) -> np.ndarray:
        """Return raw x scaled to [0, 1]."""
        return ((np.asarray(raw, np.float64) - self.x_min) / (self.x_max - self.x_min)).astype(np.float32)

    def y(self, raw) -> np.ndarray:
        """Return raw y scaled to [0, 1]."""
        return ((np.asarray(raw, np.float64) - self.y_min) / (self.y_max - self.y_min)).astype(np.float32)

    def y_raw(self, normalized) -> np.ndarray:
        """Return normalised y mapped back to raw units."""
        return (np.asarray(normalized, np.float64) * (self.y_max - self.y_min) + self.y_min).astype(np.float32)

    def to_dict(self) -> dict:
        """Return the constants as JSON-ready floats."""
        return {"x_min": self.x_min, "x_max": self.x_max, "y_min": self.y_min, "y_max": self.y_max}


def quadratic_data(train_points: int = TRAIN_POINTS, test_points: int = TEST_POINTS) -> Data:
    """Return the quadratic's normalised splits (no validation set) with their constants."""
    x_train = np.linspace(*X_RANGE, train_points)
    x_test = np.linspace(*X_RANGE, test_points)
    y_train = quadratic(x_train)
    norm = Normalization(float(x_train.min()), float(x_train.max()), float(y_train.min()), float(y_train.max()))
    return Data(
        train=Split(norm.x(x_train)[:, None], norm.y(y_train)[:, None]),
        test=Split(norm.x(x_test)[:, None], norm.y(quadratic(x_test))[:, None]),
        source={"generated": "y = 0.2x^2 - x + 1", "x_range": list(X_RANGE),
                "train": f"np.linspace({X_RANGE[0]:g}, {X_RANGE[1]:g}, {train_points})",
                "test": f"np.linspace({X_RANGE[0]:g}, {X_RANGE[1]:g}, {test_points})"},
        normalization=norm.to_dict(),
    )
