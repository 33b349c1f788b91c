"""A small real digits set in MNIST's ``mnist.npz`` layout, built from scikit-learn's bundled digits.

``sklearn.datasets.load_digits`` ships 1,797 handwritten 8×8 digits (no
download). Each is scaled to 0–255, upscaled to a 20×20 box and centred in a
28×28 black canvas, as MNIST centres its digits; the shuffled set is cut into
``train_size`` training images and the rest for testing. The file is written
with the same writer as :mod:`tests.support.mnist_data`, so the models' loader
reads it like the real MNIST.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.mnist_data import save_mnist_npz

BOX = 20  # MNIST fits each digit into a 20×20 box centred in 28×28
SIZE = 28
TRAIN_SIZE = 1300


def mnist_like_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return every bundled digit as uint8 [1797, 28, 28] (white on black) and its uint8 label."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    offset = (SIZE - BOX) // 2
    images = np.zeros((len(bunch.images), SIZE, SIZE), np.uint8)
    for i, small in enumerate(bunch.images):  # values 0-16
        pixels = Image.fromarray((small * (255.0 / 16.0)).astype(np.float32), mode="F")
        box = np.asarray(pixels.resize((BOX, BOX), Image.BICUBIC))
        images[i, offset:offset + BOX, offset:offset + BOX] = np.clip(np.rint(box), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.uint8)


def write_small_digits_npz(path: Path, train_size: int = TRAIN_SIZE, seed: int = 0) -> Path:
    """Write the bundled digits as an ``mnist.npz`` (``train_size`` train, the rest test); return ``path``."""
    x, y = mnist_like_digits()
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:train_size], order[train_size:]
    return save_mnist_npz(path, x[train], y[train], x[test], y[test])
