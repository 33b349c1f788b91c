"""The dense head on the bottleneck: a softmax classifier, optionally with one hidden layer.

The head is a plain Keras functional model, float32 ``[None, input_dim]`` →
probabilities ``[None, num_classes]``, built from a list of layer specs so that
its shape is data, not pasted code. The last layer is the softmax; its input is
the logits, which training uses for a numerically stable cross-entropy
(:func:`logits_model`). L2 weight decay lives on the kernels as Keras
regularizers, so ``model.losses`` carries the penalty into the training loss.
"""

from __future__ import annotations

import keras
import numpy as np

from imgclf.training.config import HeadConfig

LOGITS_LAYER = "logits"
PROBABILITIES_LAYER = "probabilities"


def layer_specs(config: HeadConfig, num_classes: int) -> list[dict]:
    """Return the head's layers as data: a list of ``{"kind", ...}`` specs, input to output."""
    specs: list[dict] = []
    if config.standardize:
        specs.append({"kind": "standardize", "name": "standardize"})
    if config.hidden_units:
        specs.append({"kind": "dense", "units": config.hidden_units, "activation": "relu",
                      "name": "hidden"})
    if config.dropout:
        # Dropout on whatever feeds the classifier, as TF Hub's image classifier does.
        specs.append({"kind": "dropout", "rate": config.dropout, "name": "dropout"})
    specs.append({"kind": "dense", "units": num_classes, "activation": None, "name": LOGITS_LAYER})
    specs.append({"kind": "softmax", "name": PROBABILITIES_LAYER})
    return specs


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Return per-feature mean and a floored std of training features [N, D] for the standardize layer."""
    features = np.asarray(features, dtype=np.float64)
    mean, std = features.mean(axis=0), features.std(axis=0)
    # A feature constant over the training set would be divided by ~0: floor its std.
    floor = max(1e-2 * float(std.mean()), 1e-6)
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)


def _make_layer(spec: dict, l2: float, seed: int, statistics=None) -> keras.layers.Layer:
    kind = spec["kind"]
    if kind == "standardize":
        mean, std = statistics
        return keras.layers.Normalization(mean=mean, variance=np.square(std), name=spec["name"])
    if kind == "dense":
        return keras.layers.Dense(
            spec["units"], activation=spec["activation"], name=spec["name"],
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)
    if kind == "dropout":
        return keras.layers.Dropout(spec["rate"], seed=seed, name=spec["name"])
    if kind == "softmax":
        return keras.layers.Softmax(name=spec["name"])
    raise ValueError(f"unknown layer kind {kind!r}")


def build_head(config: HeadConfig, input_dim: int, num_classes: int, seed: int = 0,
               statistics: tuple[np.ndarray, np.ndarray] | None = None) -> keras.Model:
    """Build the head: float32 ``[None, input_dim]`` → probabilities ``[None, num_classes]``.

    Args:
        config: the head's shape and regularisation (validated here).
        input_dim: length of a feature vector (2048 for the Inception-v3 bottleneck).
        num_classes: number of labels, at least 2.
        seed: seeds every initializer and dropout mask, so equal seeds give equal models.
        statistics: (mean, std) of the training features, from :func:`feature_statistics`;
            when None the standardize layer (if configured) is the identity.
    """
    config.validate()
    for name, value, low in (("input_dim", input_dim, 1), ("num_classes", num_classes, 2),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; received {value!r}")
    if statistics is None:
        statistics = (np.zeros(input_dim, np.float32), np.ones(input_dim, np.float32))
    inputs = keras.Input(shape=(input_dim,), dtype="float32", name="bottleneck")
    x = inputs
    for i, spec in enumerate(layer_specs(config, num_classes)):
        x = _make_layer(spec, config.l2, seed + i, statistics)(x)
    return keras.Model(inputs, x, name="head")


def logits_model(head: keras.Model) -> keras.Model:
    """Return a model sharing ``head``'s layers that stops before the softmax (its logits)."""
    last = head.layers[-1]
    if not isinstance(last, keras.layers.Softmax):
        raise ValueError(f"the head's last layer must be a Softmax; received {type(last).__name__}")
    return keras.Model(head.input, last.input, name=f"{head.name}_logits")
