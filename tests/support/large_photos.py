"""Large photo-like JPEGs with class-dependent fine structure, for the decode-mode quality test.

Class ``label`` is a band of stripe periods (none, fine, medium, coarse; in pixels of the full-size
photo) at a random orientation, phase and contrast over a random smooth colour field, with
sensor-like noise: the class is in detail that survives a 299×299 squash, and the noise and the
finest stripes are what exact and DCT-scaled decoding treat differently.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PERIODS = (None, (20.0, 30.0), (45.0, 70.0), (110.0, 160.0))  # per class: no stripes, or a period range
_TILE = 512
_NOISE = np.random.default_rng(12345).normal(0, 5, (_TILE, _TILE)).astype(np.float32)


def stripes_jpeg(seed: int, label: int, size=(1600, 1200), quality: int = 88) -> bytes:
    """Return a ``size`` (width, height) JPEG of class ``label`` (index into PERIODS)."""
    rng = np.random.default_rng(seed)
    width, height = size
    angle = rng.uniform(0, np.pi)
    periods = PERIODS[label]
    k = 2 * np.pi / rng.uniform(*periods) if periods else 0.0
    contrast = rng.uniform(6, 30) if periods else 0.0
    ax = (np.arange(width, dtype=np.float32) * np.float32(k * np.cos(angle)))[None, :]
    phase = np.float32(rng.uniform(0, 2 * np.pi))
    by = (np.arange(height, dtype=np.float32) * np.float32(k * np.sin(angle)) + phase)[:, None]
    wave = np.sin(ax) * np.cos(by) + np.cos(ax) * np.sin(by)  # sin(ax + by), from two outer products
    oy, ox = rng.integers(0, _TILE, 2)
    noise = np.tile(_NOISE, (-(-height // _TILE) + 1, -(-width // _TILE) + 1))[oy:oy + height, ox:ox + width]
    field = Image.fromarray(rng.integers(40, 216, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)
    pixels = np.asarray(field, np.float32) + (contrast * wave + noise)[..., None]
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
