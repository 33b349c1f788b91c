"""Pictures of digits become MNIST-style inputs: white on black, 20-pixel box, centred by mass."""

import numpy as np
import pytest
from PIL import Image

from imgclf.models.digit_image import SIZE, to_mnist


def _glyph() -> np.ndarray:
    """Return a '7'-like glyph, 1.0 ink on 0.0, 20×14, as MNIST would box it."""
    glyph = np.zeros((20, 14), np.float32)
    glyph[0:3, :] = 1.0  # the bar
    for row in range(3, 20):  # the stem, leaning left as it goes down
        col = int(round(12 - (row - 3) * 8 / 16))
        glyph[row, col:col + 3] = 1.0
    return glyph


def _picture(glyph: np.ndarray, scale: int, margin: tuple[int, int, int, int], ink: int, paper: int) -> np.ndarray:
    """Return an RGB picture of ``glyph`` scaled up, with margins (top, bottom, left, right), in ink on paper."""
    big = np.kron(glyph, np.ones((scale, scale), np.float32))
    top, bottom, left, right = margin
    canvas = np.zeros((big.shape[0] + top + bottom, big.shape[1] + left + right), np.float32)
    canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
    gray = paper + (ink - paper) * canvas
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _reference(glyph: np.ndarray) -> np.ndarray:
    """Place the glyph in a 28×28 frame, centred by its mass, computed independently of to_mnist."""
    frame = np.zeros((SIZE, SIZE), np.float32)
    ys, xs = np.indices(glyph.shape)
    cy, cx = (ys * glyph).sum() / glyph.sum(), (xs * glyph).sum() / glyph.sum()
    top, left = int(round(13.5 - cy)), int(round(13.5 - cx))
    frame[top:top + glyph.shape[0], left:left + glyph.shape[1]] = glyph
    return frame


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("ink, paper", [(0, 255), (255, 0), (40, 210), (230, 20)])
def test_a_big_picture_of_a_digit_becomes_the_mnist_digit(ink, paper):
    picture = _picture(_glyph(), scale=9, margin=(37, 11, 5, 60), ink=ink, paper=paper)
    x = to_mnist(picture)
    assert x.shape == (SIZE, SIZE) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert _correlation(x, _reference(_glyph())) > 0.9


def test_dark_on_light_and_light_on_dark_give_the_same_input():
    glyph = _glyph()
    dark_on_light = to_mnist(_picture(glyph, 5, (8, 8, 8, 8), ink=0, paper=255))
    light_on_dark = to_mnist(_picture(glyph, 5, (8, 8, 8, 8), ink=255, paper=0))
    np.testing.assert_allclose(dark_on_light, light_on_dark, atol=1e-6)


def test_the_digit_is_scaled_to_twenty_pixels_and_centred_by_mass():
    x = to_mnist(_picture(_glyph(), scale=3, margin=(0, 90, 70, 0), ink=0, paper=255))
    rows, cols = np.flatnonzero(x.max(axis=1) > 0.5), np.flatnonzero(x.max(axis=0) > 0.5)
    assert rows[-1] - rows[0] + 1 in (19, 20, 21)  # the larger side, give or take the blur of resampling
    assert cols[-1] - cols[0] + 1 in (13, 14, 15)  # the aspect ratio kept (the glyph is 20×14)
    ys, xs = np.indices(x.shape)
    assert abs((ys * x).sum() / x.sum() - 13.5) <= 1.0
    assert abs((xs * x).sum() / x.sum() - 13.5) <= 1.0


def test_a_blank_picture_gives_all_zeros():
    assert not to_mnist(np.full((40, 30, 3), 255, np.uint8)).any()
    assert not to_mnist(np.zeros((1, 1, 3), np.uint8)).any()


def test_a_tiny_picture_is_scaled_up():
    picture = np.asarray(Image.fromarray(_picture(_glyph(), 1, (2, 2, 2, 2), 0, 255)).resize((9, 12)))
    x = to_mnist(picture)
    assert x.max() == pytest.approx(1.0, abs=0.05)
    assert np.flatnonzero(x.max(axis=1) > 0.3).size >= 15
