"""A small synthetic MNIST in Keras' ``mnist.npz`` layout, for tests that cannot download the real one.

Digits 0–9 are rendered with Pillow's bundled font at random sizes, stroke
widths, rotations and offsets, then blurred by noise: white digits on black,
uint8 [N, 28, 28], labels uint8 — the layout of the real file, with
variation enough that a model has to learn the shapes (a test can then demand
accuracy far above chance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def render_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """Return one randomly varied white-on-black 28×28 uint8 image of ``digit``."""
    font = ImageFont.load_default(size=int(rng.integers(17, 25)))
    canvas = Image.new("L", (40, 40))
    ImageDraw.Draw(canvas).text((20 + rng.uniform(-2, 2), 20 + rng.uniform(-2, 2)), str(digit), fill=255,
                                font=font, anchor="mm", stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    image = np.asarray(canvas.crop((6, 6, 34, 34)), dtype=np.float32)
    image += rng.normal(0, 20, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_digits(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``per_class`` images of each digit, shuffled: x uint8 [10·per_class, 28, 28], y uint8."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    rng.shuffle(labels)
    return np.stack([render_digit(int(d), rng) for d in labels]), labels


def write_mnist_npz(path: Path, train_per_class: int = 100, test_per_class: int = 30, seed: int = 0) -> Path:
    """Write a synthetic ``mnist.npz`` (x_train, y_train, x_test, y_test) to ``path``; return it."""
    x_train, y_train = make_digits(train_per_class, seed)
    x_test, y_test = make_digits(test_per_class, seed + 1)
    return save_mnist_npz(path, x_train, y_train, x_test, y_test)


def save_mnist_npz(path: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray) -> Path:
    """Write the four arrays in Keras' ``mnist.npz`` layout to ``path``; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path
