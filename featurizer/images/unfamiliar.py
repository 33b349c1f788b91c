"""Generated pictures that belong to no class: what an unfamiliar-input detector is measured against.

Three seeded sets, the same on every machine, drawn at a photo-like size and
encoded as JPEG (what users upload):

* ``noise``: pixel noise — uniform, Gaussian around a random grey, and
  coloured salt-and-pepper;
* ``flat``: one flat colour per picture (a blank wall, a lens cap);
* ``textures``: smooth clouds (upsampled low-resolution noise), concentric
  rings and random scribbles — chosen to differ from the demo set's classes
  (stripes, checkers, bubbles, sunsets), which are textures too.

Classes left out of training are the fourth kind of unfamiliar input; they
come from the user's own photos (see :mod:`imgclf.training.unfamiliar_report`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SETS = ("noise", "flat", "textures")
SIZE = (320, 240)


def _noise(rng: np.random.Generator, index: int) -> Image.Image:
    width, height = SIZE
    kind = index % 3
    if kind == 0:
        pixels = rng.integers(0, 256, (height, width, 3))
    elif kind == 1:
        pixels = rng.normal(rng.uniform(60, 200), rng.uniform(20, 60), (height, width, 3))
    else:
        pixels = np.full((height, width, 3), rng.uniform(0, 255, 3))
        dots = rng.random((height, width)) < rng.uniform(0.05, 0.3)
        pixels[dots] = rng.integers(0, 256, (int(dots.sum()), 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _flat(rng: np.random.Generator, index: int) -> Image.Image:
    return Image.new("RGB", SIZE, tuple(int(v) for v in rng.integers(0, 256, 3)))


def _textures(rng: np.random.Generator, index: int) -> Image.Image:
    width, height = SIZE
    kind = index % 3
    if kind == 0:  # clouds: coarse noise, upsampled smoothly
        coarse = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.uint8)
        return Image.fromarray(coarse).resize(SIZE, Image.BICUBIC).filter(ImageFilter.GaussianBlur(4))
    if kind == 1:  # rings around a random centre
        y, x = np.mgrid[0:height, 0:width]
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        phase = np.hypot(x - cx, y - cy) / rng.uniform(4, 20)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (0.5 + 0.5 * np.sin(phase))[..., None]
        return Image.fromarray((a * t + b * (1 - t)).astype(np.uint8))
    image = Image.new("RGB", SIZE, tuple(int(v) for v in rng.integers(150, 256, 3)))  # scribbles
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(20, 60))):
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(4)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 150, 3)), width=int(rng.integers(1, 6)))
    return image


_PAINTERS = {"noise": _noise, "flat": _flat, "textures": _textures}


def unfamiliar_pictures(kind: str, count: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """Return ``count`` JPEG-encoded pictures of set ``kind`` (one of :data:`SETS`), seeded."""
    if kind not in _PAINTERS:
        raise ValueError(f"unfamiliar set must be one of {', '.join(SETS)}; received {kind!r}")
    rng = np.random.default_rng([seed, SETS.index(kind)])
    pictures = []
    for index in range(count):
        out = io.BytesIO()
        _PAINTERS[kind](rng, index).save(out, "JPEG", quality=quality)
        pictures.append(out.getvalue())
    return pictures
