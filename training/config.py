"""Typed settings of the head and of the one training loop, free of TensorFlow so the CLI can show defaults fast.

:class:`TrainConfig` is the loop's one settings dataclass, for the classifier
head and the secondary models alike. Its defaults are the head's; a secondary
model's spec (:data:`imgclf.models.config.SPECS`) lists what differs for it,
and :func:`train_config` applies those overrides and then the caller's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from imgclf.core.errors import UsageError
from imgclf.models.config import spec_for


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
        """Raise UsageError when a field is out of range, saying what was received."""
        if isinstance(self.hidden_units, bool) or not isinstance(self.hidden_units, int) \
                or self.hidden_units < 0:
            raise UsageError(f"hidden_units must be an integer >= 0 (0 = no hidden layer); "
                             f"received {self.hidden_units!r}")
        if not _real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be a number in [0, 1); received {self.dropout!r}")
        if not _real(self.l2) or self.l2 < 0:
            raise UsageError(f"l2 must be a finite number >= 0; received {self.l2!r}")


OPTIMIZERS = ("sgd", "adam")
CLASS_BALANCE = ("weights", "sampling", "none")
# How the head's probabilities are calibrated after training: temperature scaling (Guo et al. 2017) fitted by
# NLL on the validation split, or none.
CALIBRATIONS = ("temperature", "none")


@dataclass
class TrainConfig:
    """How the loop fits a model; the defaults suit a softmax head on a few thousand bottlenecks."""

    learning_rate: float = 0.01  # initial rate of the exponential decay (the TF1 retrain default)
    decay_rate: float = 0.9  # the rate is multiplied by this once per decay period (1 = constant)
    decay_steps: int = 1000  # decay period in optimizer steps (used when decay_epochs is None)
    decay_epochs: float | None = None  # decay period in epochs instead of steps (the secondary models)
    staircase: bool = True  # decay in whole periods: rate * decay_rate ** floor(step / period)
    optimizer: str = "sgd"  # "sgd" (with momentum, if any) or "adam"
    momentum: float = 0.9  # SGD momentum (0 = plain gradient descent); ignored by adam
    batch_size: int = 100  # global mini-batch, split evenly across replicas (the TF1 retrain default)
    epochs: int = 200  # passes over the training set (at most, when early stopping is on)
    drop_remainder: bool = False  # drop each epoch's last, partial batch (so every step splits evenly)
    patience: int | None = 10  # stop after this many epochs without a lower validation loss and keep
    #                            the best epoch's weights; None = no early stopping, keep the last
    min_delta: float = 1e-4  # a validation loss must drop by more than this to count as lower
    ema_decay: float | None = None  # e.g. 0.99: evaluate and return a moving average of the weights
    class_balance: str = "weights"  # "weights" (loss weighted n/(k*count)), "sampling" (balanced
    #                                 mini-batches, drawn with replacement) or "none"
    seed: int = 0  # seeds weights, dropout and batch order: same seed, same data ⇒ same weights
    validation_size: int | None = None  # digits: the last N of x_train validate (None = the loader's
    #                                     default, 0 = none)
    checkpoint_epochs: int = 1  # save a checkpoint every this many epochs, and after the last
    calibration: str = "temperature"  # the head's calibration after training (CALIBRATIONS): "temperature"
    #                                   (fitted on the validation split) or "none" (the secondary models' spec)

    def validate(self) -> None:
        """Raise UsageError when a field is out of range, saying what was received."""
        for name, low in (("decay_steps", 1), ("batch_size", 1), ("epochs", 1), ("seed", 0),
                          ("checkpoint_epochs", 1)):
            _check_int(name, getattr(self, name), low)
        for name in ("patience", "validation_size"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0)
        if not _real(self.learning_rate) or self.learning_rate <= 0:
            raise UsageError(f"learning_rate must be a number > 0; received {self.learning_rate!r}")
        if not _real(self.decay_rate) or not 0 < self.decay_rate <= 1:
            raise UsageError(f"decay_rate must be in (0, 1]; received {self.decay_rate!r}")
        if self.decay_epochs is not None and (not _real(self.decay_epochs) or self.decay_epochs <= 0):
            raise UsageError(f"decay_epochs must be a number > 0; received {self.decay_epochs!r}")
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
        if self.calibration not in CALIBRATIONS:
            raise UsageError(f"calibration must be one of {CALIBRATIONS}; received {self.calibration!r}")


def train_config(model: str, **overrides) -> TrainConfig:
    """Return secondary model ``model``'s TrainConfig: its spec's defaults, then ``overrides`` (None = default).

    A learning rate left unset follows the optimizer: the model's SGD default, or its Adam default.
    """
    spec = spec_for(model)
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise UsageError(f"unknown training settings {unknown}")
    if changes.get("optimizer") == "adam" and "learning_rate" not in changes:
        changes["learning_rate"] = spec.adam_learning_rate
    config = TrainConfig(**{**spec.train, **changes})
    config.validate()
    return config


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}; received {value!r}")


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
