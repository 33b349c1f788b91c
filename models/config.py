"""Typed settings of the secondary models and their training, free of TensorFlow.

Each model is described by data: a network config (layer widths, activation,
regularisation) and the training settings in which it differs from the
training loop's defaults (``TrainConfig`` in training/config.py, which
applies them). The networks are built from these in :mod:`imgclf.models.networks`;
the CLI shows the defaults in ``--help`` without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from imgclf.core.errors import UsageError
from imgclf.core.model_kind import ModelKind

MODEL_NAMES = ("quadratic", "mnist-mlp", "lenet5")
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
class ModelSpec:
    """What a secondary model is: its kind, network and default training settings."""

    name: str  # "quadratic", "mnist-mlp" or "lenet5"; also the default repository name
    kind: str  # REGRESSION or DIGIT_CLASSIFIER (the model card's "kind")
    net: QuadraticNet | MlpNet | LeNetNet
    train: dict  # TrainConfig fields that differ from the loop's defaults (SECONDARY_TRAINING, then these)
    adam_learning_rate: float  # the default rate when --optimizer adam is chosen
    description: str = ""


# What every secondary model changes in the loop's defaults (which suit the classifier head): the
# decay period counts epochs and decays smoothly, SGD is the curriculum's plain gradient descent, each
# run trains all its epochs and keeps the last weights, every step splits evenly across replicas, and no
# calibration follows (temperature scaling is the image classifier head's).
SECONDARY_TRAINING = {"decay_epochs": 1.0, "staircase": False, "momentum": 0.0, "patience": None,
                      "class_balance": "none", "drop_remainder": True, "calibration": "none"}


def _training(**changes) -> dict:
    return {**SECONDARY_TRAINING, **changes}


SPECS = {
    "quadratic": ModelSpec(
        "quadratic", REGRESSION, QuadraticNet(),
        # Plain SGD on a sigmoid net is slow; small batches and a large constant rate fit the
        # curve to ~0.5 RMSE (y spans 0-101) in a few seconds on two cores.
        _training(epochs=500, batch_size=20, learning_rate=0.5, decay_rate=1.0, validation_size=0,
                  checkpoint_epochs=50),
        adam_learning_rate=0.01,
        description="fit y = 0.2x² − x + 1 on x in [-20, 20]"),
    "mnist-mlp": ModelSpec(
        "mnist-mlp", DIGIT_CLASSIFIER, MlpNet(),
        # The curriculum's schedule shape: × 0.99 per epoch, batch 100, plain SGD, 30 epochs. Its base rate
        # 0.8 needs MNIST's 550 steps an epoch to recover from its first updates: on 1,300 digits (13 steps
        # an epoch) it stalls near 68% test accuracy; 0.1 reaches 97% there.
        _training(epochs=30, batch_size=100, learning_rate=0.1, decay_rate=0.99),
        adam_learning_rate=0.001,
        description="784 → 500 relu6 → 10 softmax MLP on MNIST"),
    "lenet5": ModelSpec(
        "lenet5", DIGIT_CLASSIFIER, LeNetNet(),
        # Same schedule shape; 0.8 is too large for plain SGD on the conv net, so base 0.1.
        _training(epochs=15, batch_size=100, learning_rate=0.1, decay_rate=0.99),
        adam_learning_rate=0.001,
        description="LeNet-5 (conv 5×5×32, pool, conv 5×5×64, pool, dense 512, 10) on MNIST"),
}


def spec_for(model: str) -> ModelSpec:
    """Return the spec of ``model``, raising ValueError for an unknown name."""
    if model not in SPECS:
        raise UsageError(f"model must be one of {', '.join(MODEL_NAMES)}; received {model!r}")
    return SPECS[model]


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


__all__ = ["DIGIT_CLASSIFIER", "MODEL_NAMES", "REGRESSION", "SPECS", "STRATEGIES", "LeNetNet",
           "MlpNet", "ModelSpec", "QuadraticNet", "SECONDARY_TRAINING", "config_dict", "net_with",
           "spec_for"]
