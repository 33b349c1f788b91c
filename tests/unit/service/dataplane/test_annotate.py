"""Annotated images: the label is drawn, legible at any size, in any script given a font."""

import io

import numpy as np
import pytest
from PIL import Image

from imgclf.service.dataplane.annotate import (
    NOTICE_FILL,
    _font,
    annotate,
    annotate_to_jpeg,
    font_paths,
    has_glyphs,
    pick_font,
    unfamiliar_notice,
)

CJK_FONTS = [p for p in font_paths() if "wqy" in p or "CJK" in p]


@pytest.mark.parametrize("size", [(1, 1), (32, 24), (640, 480), (10000, 10), (10, 3000), (4000, 3000)])
def test_banner_is_drawn_and_output_size_is_sane(size):
    gray = np.full((size[1], size[0], 3), 128, np.uint8)
    out = annotate(gray, "golden retriever", 0.973)
    width, height = out.size
    assert min(width, height) >= 256 and max(width, height) <= 2048
    pixels = np.asarray(out).astype(int)
    banner, body = pixels[: max(3, height // 20)], pixels[height // 2:]
    assert (banner > 200).any(), "white text in the banner"
    assert np.abs(body - 128).max() <= 2, "the rest of the image is untouched"


@pytest.mark.parametrize("size", [(640, 480), (300, 1200), (5000, 40)])
def test_an_unfamiliar_image_gets_an_amber_notice_across_the_bottom(size):
    gray = np.full((size[1], size[0], 3), 128, np.uint8)
    flagged = np.asarray(annotate(gray, "stripes", 0.91, unfamiliar_of=4)).astype(int)
    plain = np.asarray(annotate(gray, "stripes", 0.91)).astype(int)
    assert flagged.shape == plain.shape
    bottom = flagged[-2:]  # the banner's padding: amber, under the text
    assert np.abs(np.median(bottom.reshape(-1, 3), axis=0) - NOTICE_FILL[:3]).max() <= 12
    assert (flagged[-flagged.shape[0] // 8:] < 40).all(axis=2).any(), "dark text in the notice"
    assert np.abs(plain[-2:] - 128).max() <= 2, "no notice on a familiar image"
    middle = slice(flagged.shape[0] // 3, 2 * flagged.shape[0] // 3)
    assert np.array_equal(flagged[middle], plain[middle])  # the rest is the same picture
    assert unfamiliar_notice(4) == "unfamiliar input \u2014 none of the 4 labels fits well"


def test_tiny_images_are_enlarged_so_text_is_legible():
    out = annotate(np.zeros((8, 8, 3), np.uint8), "cat", 0.5)
    assert min(out.size) >= 256


def test_long_labels_shrink_to_fit():
    out = annotate(np.zeros((300, 300, 3), np.uint8), "a very long label " * 8, 0.1)
    assert out.size == (300, 300)  # no crash, nothing outside the image


def test_jpeg_output_decodes():
    data = annotate_to_jpeg(np.zeros((50, 80, 3), np.uint8), "dog", 0.9)
    assert Image.open(io.BytesIO(data)).format == "JPEG"


def test_missing_font_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        annotate(np.zeros((50, 50, 3), np.uint8), "x", 0.5, font_path=str(tmp_path / "nope.ttf"))


def test_glyph_check_tells_tofu_from_real_glyphs():
    latin = [p for p in font_paths() if "DejaVuSans.ttf" in p]
    if not latin:
        pytest.skip("DejaVu Sans is not installed (apt-get install fonts-dejavu-core)")
    font = _font(latin[0], 20)
    assert has_glyphs(font, "Ärger ωμέγα")
    assert not has_glyphs(font, "金毛寻回犬")


@pytest.mark.skipif(not CJK_FONTS, reason="no CJK font installed (apt-get install fonts-wqy-zenhei)")
def test_cjk_labels_are_drawn_with_a_font_that_has_them():
    font = pick_font("金毛寻回犬 97%", 24)
    assert has_glyphs(font, "金毛寻回犬")
    # Two different characters draw differently (no identical missing-glyph boxes).
    assert bytes(font.getmask("金")) != bytes(font.getmask("犬"))
    out = annotate(np.zeros((300, 400, 3), np.uint8), "金毛寻回犬", 0.97)
    assert (np.asarray(out)[:40] > 200).any()
