"""Turn a picture of a handwritten digit into an MNIST-style input.

MNIST digits are white on black, 28×28, the digit scaled so its larger side is
20 pixels and placed so its centre of mass is at the centre of the frame. A
photo or a drawing (any size, any mode, usually dark ink on light paper) goes
through the same steps: grayscale, inverted when the background is light,
background level removed, cropped to the ink, scaled to 20 pixels, centred by
mass. The result is float32 [28, 28] in [0, 1].
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 28  # MNIST frame
DIGIT_BOX = 20  # the larger side of the digit inside the frame
INK_FRACTION = 0.2  # pixels brighter than this share of the brightest one belong to the digit's box


def gray_levels(rgb: np.ndarray) -> np.ndarray:
    """Return ITU-R 601 luma of uint8 RGB [H, W, 3] as float32 [H, W] in 0..255."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def background_level(gray: np.ndarray) -> float:
    """Return the median of the image's outer frame (one pixel wide), taken as the background."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return float(np.median(gray))
    frame = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(np.median(frame))


def to_mnist(rgb: np.ndarray) -> np.ndarray:
    """Return the MNIST-style input float32 [28, 28] in [0, 1] for a decoded picture uint8 RGB [H, W, 3].

    A blank picture (no ink) gives all zeros.
    """
    gray = gray_levels(rgb)
    if background_level(gray) > 127.5:  # light background: dark ink, unlike MNIST
        gray = 255.0 - gray
    ink = np.clip(gray - background_level(gray), 0.0, None)
    peak = float(ink.max()) if ink.size else 0.0
    if peak <= 0.0:
        return np.zeros((SIZE, SIZE), np.float32)
    ink /= peak
    rows = np.flatnonzero((ink > INK_FRACTION).any(axis=1))
    cols = np.flatnonzero((ink > INK_FRACTION).any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (width, height)
    # Pillow's bilinear filter widens with the reduction, so shrinking a big photo averages, not aliases.
    digit = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(new_size, Image.BILINEAR))
    digit = np.clip(digit, 0.0, 1.0)
    frame = np.zeros((SIZE, SIZE), np.float32)
    top, left = (SIZE - digit.shape[0]) // 2, (SIZE - digit.shape[1]) // 2
    frame[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return _centre_by_mass(frame, digit.shape)


def _centre_by_mass(frame: np.ndarray, digit_shape: tuple[int, int]) -> np.ndarray:
    """Shift ``frame`` by whole pixels so its centre of mass is at the centre, keeping the digit inside."""
    total = float(frame.sum())
    if total <= 0.0:
        return frame
    ys, xs = np.indices(frame.shape)
    cy, cx = float((ys * frame).sum() / total), float((xs * frame).sum() / total)
    centre = (SIZE - 1) / 2.0
    slack_y, slack_x = (SIZE - digit_shape[0]) // 2, (SIZE - digit_shape[1]) // 2
    dy = int(np.clip(round(centre - cy), -slack_y, slack_y))
    dx = int(np.clip(round(centre - cx), -slack_x, slack_x))
    return np.roll(frame, (dy, dx), axis=(0, 1))
