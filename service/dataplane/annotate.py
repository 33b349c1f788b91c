"""Draw an image's top label and score on it, readable at any image size and in any script.

The label goes in a dark banner across the top, in a font sized to the image;
an image the model flags unfamiliar gets an amber notice across the bottom.
Tiny images are enlarged first and huge ones reduced, so the text stays legible
and the output stays small. Fonts are tried in order — ``IMGCLF_FONT`` (or the
``font_path`` given), then common system fonts with wide coverage (WenQuanYi
Zen Hei and Noto CJK for Chinese, Japanese and Korean, DejaVu Sans for Latin,
Greek and Cyrillic) — and the first that has every glyph of the label is used.
"""

from __future__ import annotations

import io
import logging
import os
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
)
MIN_SHORT_SIDE = 256  # smaller images are enlarged so the label is legible
MAX_LONG_SIDE = 2048  # larger images are reduced (the annotation is a preview)
LETTERBOX = (128, 128, 128)  # a strip too thin for a banner is centred on a canvas of this grey
NOTICE_FILL = (255, 193, 7, 235)  # amber, nearly opaque: the unfamiliar-input notice across the bottom
_MISSING = "\U0010fffd"  # a private-use code point no font draws: its mask is the "missing glyph" box


def font_paths(font_path: str | None = None) -> list[str]:
    """Return the font files to try, in order: the given one, ``IMGCLF_FONT``, then system fonts."""
    first = [p for p in (font_path, os.environ.get("IMGCLF_FONT")) if p]
    for path in first:
        if not os.path.isfile(path):
            raise ValueError(f"font file {path!r} does not exist")
    return first + [p for p in FONT_CANDIDATES if os.path.isfile(p)]


@lru_cache(maxsize=64)
def _font(path: str | None, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


def has_glyphs(font, text: str) -> bool:
    """Return whether ``font`` draws every visible character of ``text`` (not the missing-glyph box)."""
    missing = font.getmask(_MISSING)
    missing_key = (missing.size, bytes(missing))
    for char in set(text):
        if char.isspace():
            continue
        mask = font.getmask(char)
        if (mask.size, bytes(mask)) == missing_key:
            return False
    return True


def pick_font(text: str, size: int, font_path: str | None = None):
    """Return the first font (at ``size``) that has every glyph of ``text``, else the first one found."""
    candidates = font_paths(font_path)
    for path in candidates:
        font = _font(path, size)
        if has_glyphs(font, text):
            return font
    if candidates:
        log.warning("no font has every glyph of %r; some characters will show as boxes", text)
        return _font(candidates[0], size)
    return _font(None, size)


def _display_size(width: int, height: int) -> tuple[int, int]:
    scale = 1.0
    if min(width, height) < MIN_SHORT_SIDE:
        scale = MIN_SHORT_SIDE / min(width, height)
    if max(width, height) * scale > MAX_LONG_SIDE:
        scale = MAX_LONG_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def unfamiliar_notice(n_labels: int) -> str:
    """Return the notice drawn on an image flagged unfamiliar (and shown by the page)."""
    return f"unfamiliar input \u2014 none of the {n_labels} labels fits well"


def annotate(image: Image.Image | np.ndarray, label: str, score: float, font_path: str | None = None,
             unfamiliar_of: int | None = None) -> Image.Image:
    """Return an RGB copy of ``image`` with "label  score%" drawn in a banner across the top.

    ``unfamiliar_of``: the model's label count, for an image it flags unfamiliar; an amber banner across the
    bottom then says that none of its labels fits well.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    size = _display_size(*image.size)
    if size != image.size:
        image = image.resize(size, Image.LANCZOS if size[0] < image.size[0] else Image.BICUBIC)
    if min(image.size) < MIN_SHORT_SIDE:  # an extreme strip: it cannot be enlarged further, so letterbox it
        canvas = Image.new("RGB", (max(image.width, MIN_SHORT_SIDE), max(image.height, MIN_SHORT_SIDE)), LETTERBOX)
        canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2))
        image = canvas
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    _banner(draw, image.size, f"{label}  {score * 100:.1f}%", font_path, top=True,
            fill=(0, 0, 0, 170), ink=(255, 255, 255, 255))
    if unfamiliar_of is not None:
        _banner(draw, image.size, unfamiliar_notice(unfamiliar_of), font_path, top=False,
                fill=NOTICE_FILL, ink=(0, 0, 0, 255), scale=0.055)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def _banner(draw: ImageDraw.ImageDraw, size: tuple[int, int], text: str, font_path: str | None, *, top: bool,
            fill: tuple, ink: tuple, scale: float = 0.07) -> None:
    """Draw ``text`` in a full-width banner at the top or the bottom, in a font sized to the image."""
    width, height = size
    font_size = max(10, round(min(width, height) * scale))
    font = pick_font(text, font_size, font_path)
    # Shrink the font until the text fits the width (long labels on narrow images).
    while font_size > 8 and font.getlength(text) > 0.94 * width:
        font_size = max(8, int(font_size * 0.85))
        font = pick_font(text, font_size, font_path)
    left, text_top, right, bottom = font.getbbox(text)
    pad = max(2, font_size // 4)
    banner = bottom - min(text_top, 0) + 2 * pad
    y = 0 if top else height - banner
    draw.rectangle([0, y, width, y + banner], fill=fill)
    draw.text((pad, y + pad - min(text_top, 0)), text, font=font, fill=ink)


def annotate_to_jpeg(rgb: np.ndarray, label: str, score: float, font_path: str | None = None,
                     quality: int = 90, unfamiliar_of: int | None = None) -> bytes:
    """Return the annotated image as JPEG bytes (``unfamiliar_of``: as :func:`annotate`)."""
    buf = io.BytesIO()
    annotate(rgb, label, score, font_path, unfamiliar_of).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
