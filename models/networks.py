"""Build the secondary models' Keras networks from their configs (:mod:`imgclf.models.config`).

Every network ends in raw outputs: the regression value (normalised y) or the
ten digit logits. Softmax and de-normalisation belong to the loss and to the
exported serving function. The digit networks take ``[N, 28, 28]`` images, so
both are called (and served) the same way.
"""

from __future__ import annotations

import keras

from imgclf.models.config import LeNetNet, MlpNet, QuadraticNet

IMAGE_SIZE = 28  # MNIST images are 28×28, one channel
NUM_CLASSES = 10


def build_network(net: QuadraticNet | MlpNet | LeNetNet, seed: int = 0) -> keras.Model:
    """Return a fresh Keras model for ``net``, its weights drawn from ``seed``.

    Raises:
        TypeError: ``net`` is not one of the network configs.
    """
    if isinstance(net, QuadraticNet):
        return quadratic_mlp(net, seed)
    if isinstance(net, MlpNet):
        return mnist_mlp(net, seed)
    if isinstance(net, LeNetNet):
        return lenet5(net, seed)
    raise TypeError(f"no network for config {type(net).__name__}")


def _dense(units: int, activation, seed: int, index: int, l2: float = 0.0, name: str | None = None):
    return keras.layers.Dense(
        units, activation=activation, name=name,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + index),
        kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)


def quadratic_mlp(net: QuadraticNet, seed: int = 0) -> keras.Model:
    """Return the curve-fitting MLP: normalised x [N, 1] → normalised y [N, 1]."""
    x = keras.Input((1,), name="x")
    # The curriculum's layout feeds the same x to several input units.
    h = keras.layers.Concatenate(name="copies")([x] * net.input_copies) if net.input_copies > 1 else x
    for i, width in enumerate(net.hidden):
        h = _dense(width, net.activation, seed, i, name=f"hidden{i + 1}")(h)
    y = _dense(1, None, seed, len(net.hidden), name="y")(h)
    return keras.Model(x, y, name="quadratic")


def mnist_mlp(net: MlpNet, seed: int = 0) -> keras.Model:
    """Return the MNIST MLP: images [N, 28, 28] in [0, 1] → logits [N, 10]."""
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE), name="images")
    h = keras.layers.Flatten(name="flatten")(images)
    for i, width in enumerate(net.hidden):
        h = _dense(width, net.activation, seed, i, net.l2, name=f"hidden{i + 1}")(h)
    if net.dropout:
        h = keras.layers.Dropout(net.dropout, seed=seed, name="dropout")(h)
    logits = _dense(NUM_CLASSES, None, seed, len(net.hidden), net.l2, name="logits")(h)
    return keras.Model(images, logits, name="mnist_mlp")


def lenet5(net: LeNetNet, seed: int = 0) -> keras.Model:
    """Return LeNet-5: images [N, 28, 28] in [0, 1] → logits [N, 10]."""
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE), name="images")
    h = keras.layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1), name="channel")(images)
    for i, filters in enumerate(net.conv_filters):
        h = conv_block(h, filters, net, seed + i, name=f"block{i + 1}")
    h = keras.layers.Flatten(name="flatten")(h)
    offset = len(net.conv_filters)
    for i, width in enumerate(net.dense):
        h = _dense(width, net.activation, seed, offset + i, net.l2, name=f"dense{i + 1}")(h)
    if net.dropout:
        h = keras.layers.Dropout(net.dropout, seed=seed, name="dropout")(h)
    logits = _dense(NUM_CLASSES, None, seed, offset + len(net.dense), net.l2, name="logits")(h)
    return keras.Model(images, logits, name="lenet5")


def conv_block(h, filters: int, net: LeNetNet, seed: int, name: str):
    """Return ``h`` through one SAME convolution (with ``net``'s activation) and a max-pool."""
    h = keras.layers.Conv2D(filters, net.kernel_size, padding="same", activation=net.activation,
                            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                            name=f"{name}_conv")(h)
    return keras.layers.MaxPooling2D(net.pool_size, padding="same", name=f"{name}_pool")(h)
