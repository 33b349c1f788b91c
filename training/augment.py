"""Distorted copies of training images: random crop and scale, left-right flip, brightness, contrast, saturation.

Each training image gets a fixed number of copies. A copy is named by the
distortion settings and its index, so its features are computed once and
cached under their own key (the old retraining script recomputed distortions on
every step and lost the cache's speed). The random numbers of a copy are
seeded from its cache key: the same image and settings give the same copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class AugmentConfig:
    """How many distorted copies of each training image, and how strong the distortions are."""

    copies: int = 0  # distorted copies per training image (0 = no augmentation)
    random_crop: float = 10.0  # percent of each side a crop may cut away
    random_scale: float = 10.0  # percent a copy may be zoomed in by
    flip_left_right: bool = True  # mirror half of the copies
    random_brightness: float = 10.0  # percent brightness may change by
    random_contrast: float = 10.0  # percent contrast may change by
    random_saturation: float = 10.0  # percent colour saturation may change by

    def validate(self) -> None:
        """Raise ValueError on a negative count or a percentage outside [0, 100)."""
        if not 0 <= self.copies <= 100:
            raise ValueError(f"augment copies must be between 0 and 100; received {self.copies}")
        for name in ("random_crop", "random_scale", "random_brightness", "random_contrast", "random_saturation"):
            value = getattr(self, name)
            if not 0 <= value < 100:
                raise ValueError(f"{name} must be a percentage in [0, 100); received {value}")

    def variants(self) -> list[str]:
        """Return the variant names of the copies (part of each copy's cache key)."""
        settings = hashlib.sha256(json.dumps(asdict(self) | {"copies": 0}, sort_keys=True).encode()).hexdigest()
        return [f"augment/v1/{settings[:16]}/{index}" for index in range(self.copies)]


def distort(rgb: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Return a randomly distorted copy of a uint8 RGB image [H, W, 3]."""
    height, width = rgb.shape[:2]
    # Crop and scale: zoom in by up to random_scale, then cut up to random_crop of each side away.
    zoom = 1.0 + rng.uniform(0.0, config.random_scale / 100.0)
    keep = 1.0 - rng.uniform(0.0, config.random_crop / 100.0)
    crop_w = max(1, int(round(width * keep / zoom)))
    crop_h = max(1, int(round(height * keep / zoom)))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = Image.fromarray(rgb[top:top + crop_h, left:left + crop_w])
    if config.flip_left_right and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = np.asarray(image, dtype=np.float32)
    brightness = 1.0 + rng.uniform(-1, 1) * config.random_brightness / 100.0
    contrast = 1.0 + rng.uniform(-1, 1) * config.random_contrast / 100.0
    saturation = 1.0 + rng.uniform(-1, 1) * config.random_saturation / 100.0
    out = out * brightness
    out = (out - out.mean()) * contrast + out.mean()
    gray = out @ np.array([0.299, 0.587, 0.114], np.float32)
    out = gray[:, :, None] + (out - gray[:, :, None]) * saturation
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
