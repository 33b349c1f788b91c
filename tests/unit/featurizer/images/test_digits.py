"""Digit photos: seeded, RGB, photo-sized, and the digit is drawn where the ink is."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.featurizer.images.digits import DIGIT_SIZES, render_digit_photo


def test_same_seed_same_picture_and_sizes_in_range():
    first = [render_digit_photo(d, np.random.default_rng(3)) for d in range(10)]
    again = [render_digit_photo(d, np.random.default_rng(3)) for d in range(10)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    sizes = {render_digit_photo(1, np.random.default_rng(seed)).size for seed in range(20)}
    assert all(w == h and DIGIT_SIZES[0] <= w <= DIGIT_SIZES[1] for w, h in sizes) and len(sizes) > 1
    assert first[0].mode == "RGB"


def test_the_digit_is_light_ink_on_a_darker_background():
    picture = np.asarray(render_digit_photo(8, np.random.default_rng(0), size=128), dtype=float).mean(axis=2)
    # A "1" covers fewer pixels than an "8" drawn with the same random choices.
    one = np.asarray(render_digit_photo(1, np.random.default_rng(0), size=128), dtype=float).mean(axis=2)
    assert (picture > 150).sum() > (one > 150).sum() > 100
    assert np.median(picture) < 100


@pytest.mark.parametrize("digit, size, message", [
    (10, 96, "digit must be"), (-1, 96, "digit must be"), ("3", 96, "digit must be"),
    (3, 8, "size must be"), (3, 96.0, "size must be"),
])
def test_bad_arguments_are_refused(digit, size, message):
    with pytest.raises(ValueError, match=message):
        render_digit_photo(digit, np.random.default_rng(0), size)
