"""Typed settings of the head and its training, free of TensorFlow so the CLI can show defaults fast."""

from __future__ import annotations

import math
from dataclasses import dataclass

from imgclf.core.errors import UsageError


@dataclass
class HeadConfig:
    """The head's shape and regularisation."""

    hidden_units: int = 0  # width of one ReLU hidden layer; 0 = plain softmax classifier
    dropout: float = 0.0  # dropout rate on the classifier's input (bottleneck or hidden layer); 0 = none
    l2: float = 1e-4  # weight decay coefficient on kernels: loss += l2 * sum(kernel ** 2)
    # Standardise each feature with the training set's mean and std (a fixed first layer, exported
    # with the head). Bottlenecks of different graphs differ wildly in scale; this keeps SGD stable.
    standardize: bool = True

    def validate(self) -> None:
        """Raise ValueError when a field is out of range, saying what was received."""
        if isinstance(self.hidden_units, bool) or not isinstance(self.hidden_units, int) \
                or self.hidden_units < 0:
            raise UsageError(f"hidden_units must be an integer >= 0 (0 = no hidden layer); "
                             f"received {self.hidden_units!r}")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be a number in [0, 1); received {self.dropout!r}")
        if not _is_real(self.l2) or not math.isfinite(self.l2) or self.l2 < 0:
            raise UsageError(f"l2 must be a finite number >= 0; received {self.l2!r}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


OPTIMIZERS = ("sgd", "adam")
CLASS_BALANCE = ("weights", "sampling", "none")


@dataclass
class TrainConfig:
    """How to fit the head; the defaults suit a softmax head on a few thousand bottlenecks."""

    learning_rate: float = 0.01  # initial rate of the exponential decay (the TF1 retrain default)
    decay_steps: int = 1000  # optimizer steps per decay period
    decay_rate: float = 0.9  # the rate is multiplied by this once per period
    staircase: bool = True  # decay in whole periods: rate * decay_rate ** floor(step / decay_steps)
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    momentum: float = 0.9  # SGD momentum; ignored by adam
    batch_size: int = 100  # examples per mini-batch (the TF1 retrain default)
    max_epochs: int = 200  # upper bound; early stopping usually ends far sooner
    patience: int = 10  # stop after this many epochs without a lower validation loss
    min_delta: float = 1e-4  # a validation loss must drop by more than this to count as lower
    ema_decay: float | None = None  # e.g. 0.99: evaluate and return a moving average of the weights
    class_balance: str = "weights"  # "weights" (loss weighted n/(k*count)), "sampling" (balanced
    #                                 mini-batches, drawn with replacement) or "none"
    seed: int = 0  # seeds weights, dropout and batch order: same seed, same data ⇒ same weights

    def validate(self) -> None:
        """Raise ValueError when a field is out of range, saying what was received."""
        for name in ("decay_steps", "batch_size", "max_epochs", "patience"):
            value = getattr(self, name)
            low = 0 if name == "patience" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be an integer >= {low}; received {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"seed must be an integer >= 0; received {self.seed!r}")
        if not _positive(self.learning_rate):
            raise UsageError(f"learning_rate must be a number > 0; received {self.learning_rate!r}")
        if not _real(self.decay_rate) or not 0 < self.decay_rate <= 1:
            raise UsageError(f"decay_rate must be in (0, 1]; received {self.decay_rate!r}")
        if not _real(self.momentum) or not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must be in [0, 1); received {self.momentum!r}")
        if not _real(self.min_delta) or not self.min_delta >= 0:
            raise UsageError(f"min_delta must be a number >= 0; received {self.min_delta!r}")
        if self.ema_decay is not None and (not _real(self.ema_decay) or not 0 < self.ema_decay < 1):
            raise UsageError(f"ema_decay must be None or in (0, 1); received {self.ema_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {OPTIMIZERS}; received {self.optimizer!r}")
        if self.class_balance not in CLASS_BALANCE:
            raise UsageError(f"class_balance must be one of {CLASS_BALANCE}; "
                             f"received {self.class_balance!r}")


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _real(value) and value > 0
