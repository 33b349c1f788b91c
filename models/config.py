"""Typed settings of the secondary models and their training, free of TensorFlow.

Each model is described by data: a network config (layer widths, activation,
regularisation) and its default :class:`TrainConfig`. The networks are built
from these in :mod:`imgclf.models.networks`; the CLI shows the defaults in ``--help``
without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from imgclf.core.errors import UsageError
from imgclf.core.model_kind import ModelKind

MODEL_NAMES = ("quadratic", "mnist-mlp", "lenet5")
OPTIMIZERS = ("sgd", "adam")
STRATEGIES = ("default", "mirrored", "multiworker")
REGRESSION, DIGIT_CLASSIFIER = ModelKind.REGRESSION, ModelKind.DIGIT_CLASSIFIER  # model card "kind"s


@dataclass(frozen=True)
class QuadraticNet:
    """The curriculum's curve-fitting MLP: x copied to 3 inputs → 4 sigmoid → 4 sigmoid → 1 linear."""

    input_copies: int = 3  # the curriculum feeds the one input x to 3 identical input units
    hidden: tuple[int, ...] = (4, 4)  # hidden layer widths
    activation: str = "sigmoid"


@dataclass(frozen=True)
class MlpNet:
    """The MNIST MLP: 784 → 500 relu6 → 10 logits, L2 on the kernels."""

    hidden: tuple[int, ...] = (500,)
    activation: str = "relu6"
    dropout: float = 0.0  # dropout before the output layer; 0 = none
    l2: float = 5e-5  # loss += l2 * sum(kernel ** 2) (TF1's l2_regularizer(1e-4) halves the sum)


@dataclass(frozen=True)
class LeNetNet:
    """LeNet-5 as in the curriculum: two 5×5 SAME conv + 2×2 max-pool blocks, dense 512, 10 logits."""

    conv_filters: tuple[int, ...] = (32, 64)  # one conv + pool block per entry
    kernel_size: int = 5
    pool_size: int = 2
    dense: tuple[int, ...] = (512,)
    activation: str = "relu"
    dropout: float = 0.0  # dropout after the dense layer(s) while training; 0 = none
    l2: float = 5e-5  # on the dense kernels, as the curriculum regularised its fully connected layers


@dataclass(frozen=True)
class TrainConfig:
    """How one secondary model is fitted; each model has its own defaults (see :data:`DEFAULTS`)."""

    epochs: int = 10  # passes over the training set
    batch_size: int = 100  # global mini-batch: split evenly across replicas
    learning_rate: float = 0.1  # initial rate of the exponential decay
    decay_rate: float = 0.99  # the rate is multiplied by this once per decay_epochs (1 = constant)
    decay_epochs: float = 1.0  # decay period in epochs (the curriculum: num_examples / batch steps)
    optimizer: str = "sgd"  # "sgd" (plain gradient descent) or "adam"
    ema_decay: float | None = None  # e.g. 0.99: evaluate and export a moving average of the weights
    seed: int = 0  # seeds weights, dropout and batch order: same seed and data ⇒ same weights
    validation_size: int = 5000  # digits: the last N of x_train are the validation set (0 = none)
    checkpoint_epochs: int = 1  # save a checkpoint every this many epochs, and after the last

    def validate(self) -> None:
        """Raise ValueError when a field is out of range, saying what was received."""
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("validation_size", 0),
                          ("checkpoint_epochs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be an integer >= {low}; received {value!r}")
        if not _real(self.learning_rate) or self.learning_rate <= 0:
            raise UsageError(f"learning_rate must be a number > 0; received {self.learning_rate!r}")
        if not _real(self.decay_rate) or not 0 < self.decay_rate <= 1:
            raise UsageError(f"decay_rate must be in (0, 1]; received {self.decay_rate!r}")
        if not _real(self.decay_epochs) or self.decay_epochs <= 0:
            raise UsageError(f"decay_epochs must be a number > 0; received {self.decay_epochs!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {OPTIMIZERS}; received {self.optimizer!r}")
        if self.ema_decay is not None and (not _real(self.ema_decay) or not 0 < self.ema_decay < 1):
            raise UsageError(f"ema_decay must be in (0, 1) (or unset for no averaging); received {self.ema_decay!r}")


@dataclass(frozen=True)
class ModelSpec:
    """What a secondary model is: its kind, network and default training settings."""

    name: str  # "quadratic", "mnist-mlp" or "lenet5"; also the default repository name
    kind: str  # REGRESSION or DIGIT_CLASSIFIER (the model card's "kind")
    net: QuadraticNet | MlpNet | LeNetNet
    train: TrainConfig
    adam_learning_rate: float  # the default rate when --optimizer adam is chosen
    description: str = ""


SPECS = {
    "quadratic": ModelSpec(
        "quadratic", REGRESSION, QuadraticNet(),
        # Plain SGD on a sigmoid net is slow; small batches and a large constant rate fit the
        # curve to ~0.5 RMSE (y spans 0-101) in a few seconds on two cores.
        TrainConfig(epochs=500, batch_size=20, learning_rate=0.5, decay_rate=1.0, validation_size=0,
                    checkpoint_epochs=50),
        adam_learning_rate=0.01,
        description="fit y = 0.2x² − x + 1 on x in [-20, 20]"),
    "mnist-mlp": ModelSpec(
        "mnist-mlp", DIGIT_CLASSIFIER, MlpNet(),
        # The curriculum: base 0.8, × 0.99 per epoch, batch 100, plain SGD (it ran 30,000 steps ≈ 55 epochs).
        TrainConfig(epochs=30, batch_size=100, learning_rate=0.8, decay_rate=0.99),
        adam_learning_rate=0.001,
        description="784 → 500 relu6 → 10 softmax MLP on MNIST"),
    "lenet5": ModelSpec(
        "lenet5", DIGIT_CLASSIFIER, LeNetNet(),
        # Same schedule shape; 0.8 is too large for plain SGD on the conv net, so base 0.1.
        TrainConfig(epochs=15, batch_size=100, learning_rate=0.1, decay_rate=0.99),
        adam_learning_rate=0.001,
        description="LeNet-5 (conv 5×5×32, pool, conv 5×5×64, pool, dense 512, 10) on MNIST"),
}


def spec_for(model: str) -> ModelSpec:
    """Return the spec of ``model``, raising ValueError for an unknown name."""
    if model not in SPECS:
        raise UsageError(f"model must be one of {', '.join(MODEL_NAMES)}; received {model!r}")
    return SPECS[model]


def train_config(model: str, **overrides) -> TrainConfig:
    """Return ``model``'s default TrainConfig with ``overrides`` (None values keep the default).

    A learning rate left unset follows the optimizer: the model's SGD default, or its Adam default.
    """
    spec = spec_for(model)
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise UsageError(f"unknown training settings {unknown}")
    if changes.get("optimizer") == "adam" and "learning_rate" not in changes:
        changes["learning_rate"] = spec.adam_learning_rate
    config = dataclasses.replace(spec.train, **changes)
    config.validate()
    return config


def net_with(spec: ModelSpec, dropout: float | None = None):
    """Return ``spec``'s network config, with ``dropout`` set when given (digit models only)."""
    if dropout is None:
        return spec.net
    if not hasattr(spec.net, "dropout"):
        raise UsageError(f"--dropout applies to the digit models, not {spec.name!r}")
    if not _real(dropout) or not 0 <= dropout < 1:
        raise UsageError(f"dropout must be in [0, 1); received {dropout!r}")
    return dataclasses.replace(spec.net, dropout=float(dropout))


def config_dict(config) -> dict:
    """Return a config dataclass as JSON-ready data (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value):
    """Return ``value`` with tuples as lists, recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["DIGIT_CLASSIFIER", "MODEL_NAMES", "OPTIMIZERS", "REGRESSION", "SPECS", "STRATEGIES", "LeNetNet",
           "MlpNet", "ModelSpec", "QuadraticNet", "TrainConfig", "config_dict", "net_with", "spec_for",
           "train_config"]
