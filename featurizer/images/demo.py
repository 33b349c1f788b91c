"""Generate the built-in demo image set offline: a few classes whose pictures differ visibly.

Every picture is drawn from a seeded random generator, so the set is the same
on every machine: ``sunsets`` (a warm sky gradient and a low sun), ``stripes``
(bold diagonal bands), ``checkers`` (a two-colour checkerboard) and
``bubbles`` (scattered circles on a cool background). Positions, colours,
sizes and angles vary inside each class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

DEMO_CLASSES = ("bubbles", "checkers", "stripes", "sunsets")
DEMO_SIZE = (320, 240)


def _sunset(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    top = np.array([rng.uniform(200, 255), rng.uniform(60, 140), rng.uniform(20, 80)])
    bottom = np.array([rng.uniform(60, 120), rng.uniform(10, 50), rng.uniform(60, 120)])
    t = np.linspace(0, 1, height)[:, None, None]
    sky = (top * (1 - t) + bottom * t) * np.ones((1, width, 1))
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.08, 0.18) * width
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.45, 0.75) * height
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, int(rng.uniform(200, 240)), 120))
    horizon = int(rng.uniform(0.7, 0.85) * height)
    draw.rectangle([0, horizon, width, height], fill=(int(rng.uniform(10, 40)),) * 3)
    return image


def _stripes(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    period = rng.uniform(18, 40)
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:height, 0:width]
    phase = (x * np.cos(angle) + y * np.sin(angle)) / period
    band = (np.floor(phase) % 2).astype(bool)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return Image.fromarray(np.where(band[:, :, None], a, b).astype(np.uint8))


def _checkers(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    cell = int(rng.integers(16, 48))
    ox, oy = rng.integers(0, cell, 2)
    y, x = np.mgrid[0:height, 0:width]
    board = (((x + ox) // cell + (y + oy) // cell) % 2).astype(bool)
    a = rng.integers(0, 90, 3)
    b = rng.integers(170, 256, 3)
    return Image.fromarray(np.where(board[:, :, None], a, b).astype(np.uint8))


def _bubbles(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    background = (int(rng.uniform(0, 60)), int(rng.uniform(80, 160)), int(rng.uniform(150, 230)))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        r = rng.uniform(8, 40)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        color = tuple(int(v) for v in rng.integers(120, 256, 3))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color, outline=(255, 255, 255), width=2)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


_PAINTERS = {"bubbles": _bubbles, "checkers": _checkers, "stripes": _stripes, "sunsets": _sunset}


def make_demo_image(label: str, rng: np.random.Generator, size=DEMO_SIZE) -> Image.Image:
    """Draw one picture of class ``label``."""
    return _PAINTERS[label](rng, size)


def write_demo_images(out_dir: str | Path, per_class: int = 24, seed: int = 0, quality: int = 90) -> Path:
    """Write ``per_class`` JPEGs of every demo class under ``out_dir/<class>/``; return ``out_dir``.

    Existing files are left alone, so a second call is cheap.
    """
    out_dir = Path(out_dir)
    for index, label in enumerate(DEMO_CLASSES):
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, index])
        for i in range(per_class):
            image = make_demo_image(label, rng)  # drawn even when the file exists, to keep the stream stable
            path = folder / f"{label}_{i:03d}.jpg"
            if not path.exists():
                tmp = path.with_name(f".{path.name}.tmp")
                image.save(tmp, "JPEG", quality=quality)
                tmp.replace(path)
    log.info("demo images: %d classes × %d under %s", len(DEMO_CLASSES), per_class, out_dir)
    return out_dir
