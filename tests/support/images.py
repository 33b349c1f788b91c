"""Small images built by the tests: encoded bytes in every format the featurizer meets."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_like(seed: int, size=(500, 375)) -> np.ndarray:
    """Return a smooth, photo-like uint8 RGB array (low-frequency noise, upsampled)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    return np.asarray(coarse.resize(size, Image.BICUBIC))


def encode(array_or_image, fmt: str = "JPEG", **params) -> bytes:
    """Encode an array or Pillow image to bytes in ``fmt``."""
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(seed: int, size=(500, 375), quality: int = 90) -> bytes:
    """Return a photo-like JPEG."""
    return encode(photo_like(seed, size), "JPEG", quality=quality)
