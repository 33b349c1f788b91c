"""Draw digit photos offline: a seeded, photo-sized RGB picture of one digit, for benchmarks and demos.

MNIST's digits are 28×28 grey squares; the featurizer's users send photos. A
digit photo here is a light, tinted digit in Pillow's bundled font on a dark,
unevenly lit background (a linear gradient in a random direction), rotated a
little, off centre, with sensor-like noise, at 96–160 px a side. Every random
choice comes from the caller's generator, so a seed gives the same picture on
every machine.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DIGIT_SIZES = (96, 160)  # smallest and largest side in pixels (square pictures)


def render_digit_photo(digit: int, rng: np.random.Generator, size: int | None = None) -> Image.Image:
    """Draw one randomly varied RGB photo of ``digit`` (0–9), ``size`` px square (random in DIGIT_SIZES if None)."""
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an integer from 0 to 9; received {digit!r}")
    if size is None:
        size = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16; received {size!r}")
    size = int(size)
    # Background: a dark tint lit from one side (a linear ramp of brightness).
    dark = rng.uniform(10, 70, 3)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    ramp = (x * np.cos(angle) + y * np.sin(angle))[:, :, None]
    background = dark * (0.6 + 0.8 * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6))
    # The digit: a light tint, drawn white on a mask and then coloured, so the stroke blends with the light.
    mask = Image.new("L", (size, size))
    font = ImageFont.load_default(size=int(size * rng.uniform(0.55, 0.8)))
    centre = (size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size)
    ImageDraw.Draw(mask).text(centre, str(int(digit)), fill=255, font=font, anchor="mm",
                              stroke_width=int(rng.integers(0, max(2, size // 40))), stroke_fill=255)
    mask = mask.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    alpha = np.asarray(mask, dtype=np.float64)[:, :, None] / 255.0
    ink = rng.uniform(180, 255, 3)
    picture = background * (1 - alpha) + ink * alpha + rng.normal(0, rng.uniform(4, 12), (size, size, 3))
    return Image.fromarray(np.clip(np.rint(picture), 0, 255).astype(np.uint8))


__all__ = ["DIGIT_SIZES", "render_digit_photo"]
