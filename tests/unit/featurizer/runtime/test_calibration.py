"""The int8 calibration set: reproducible choice, identity by content, bad images skipped."""

import numpy as np
import pytest

from imgclf.core.errors import InvalidImage, UsageError
from imgclf.featurizer.images.demo import write_demo_images
from imgclf.featurizer.runtime.calibration import Calibration, calibration_from_dir, choose


def _preprocess(data: bytes) -> np.ndarray:
    if data.startswith(b"bad"):
        raise InvalidImage("not an image")
    return np.full((2, 2, 3), len(data), np.float32)


def test_choice_does_not_depend_on_listing_order():
    names = [f"c{i % 3}/img{i}.jpg" for i in range(30)]
    chosen = {names[i] for i in choose(names, 7)}
    shuffled = list(reversed(names))
    assert {shuffled[i] for i in choose(shuffled, 7)} == chosen and len(chosen) == 7
    assert len(choose(names, 100)) == 30  # fewer images than asked: all of them


def test_identity_is_the_images_content_not_their_names():
    a = Calibration(["x", "y"], [b"one", b"two"], _preprocess, "p1", 2)
    b = Calibration(["renamed", "other"], [b"two", b"one"], _preprocess, "p1", 2)
    assert a.sha256 == b.sha256
    assert Calibration(["x", "y"], [b"one", b"TWO"], _preprocess, "p1", 2).sha256 != a.sha256
    assert Calibration(["x", "y"], [b"one", b"two"], _preprocess, "p2", 2).sha256 != a.sha256  # preprocessing


def test_undecodable_images_are_skipped_and_reported():
    calibration = Calibration(["good", "bad"], [b"good", b"bad!"], _preprocess, "p", 2)
    inputs = calibration.inputs()
    assert len(inputs) == 1 and calibration.skipped == [("bad", "not an image")]
    with pytest.raises(UsageError, match="none of the 1 chosen images decodes"):
        Calibration(["bad"], [b"bad"], _preprocess, "p", 1).inputs()


def test_from_a_folder(tmp_path):
    root = write_demo_images(tmp_path / "images", per_class=5)
    calibration = calibration_from_dir(root, 8, _preprocess, "p")
    assert len(calibration.images) == 8 and calibration.describe()["requested"] == 8
    again = calibration_from_dir(root, 8, _preprocess, "p")
    assert again.names == calibration.names and again.sha256 == calibration.sha256
    assert len({name.split("/")[0] for name in calibration.names}) > 1  # spread over classes
    with pytest.raises(UsageError, match="--calibration-images must be at least 1"):
        calibration_from_dir(root, 0, _preprocess, "p")
