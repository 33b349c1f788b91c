"""The int8 calibration set: reproducible choice, identity by content, bad images skipped."""

import numpy as np
import pytest

from imgclf.core.errors import InvalidImage, UsageError
from imgclf.featurizer.images.demo import write_demo_images
from imgclf.featurizer.images.folders import scan_image_dir
from imgclf.featurizer.runtime.calibration import Calibration, choose, choose_calibration
from imgclf.featurizer.runtime.featurizer import PREPROCESSING, FeaturizerConfig, calibration_for


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
    a = Calibration(["x", "y"], [b"one", b"two"], "p1", 2)
    b = Calibration(["renamed", "other"], [b"two", b"one"], "p1", 2)
    assert a.sha256 == b.sha256
    assert Calibration(["x", "y"], [b"one", b"TWO"], "p1", 2).sha256 != a.sha256
    assert Calibration(["x", "y"], [b"one", b"two"], "p2", 2).sha256 != a.sha256  # preprocessing


def test_undecodable_images_are_skipped_and_reported():
    calibration = Calibration(["good", "bad"], [b"good", b"bad!"], "p", 2)
    inputs = calibration.inputs(_preprocess)
    assert len(inputs) == 1 and calibration.skipped == [("bad", "not an image")]
    with pytest.raises(UsageError, match="none of the 1 chosen images decodes"):
        Calibration(["bad"], [b"bad"], "p", 1).inputs(_preprocess)


def test_from_a_folder(tmp_path):
    root = write_demo_images(tmp_path / "images", per_class=5)
    calibration = choose_calibration(scan_image_dir(root), 8, "p")
    assert len(calibration.images) == 8 and calibration.describe()["requested"] == 8
    again = choose_calibration(scan_image_dir(root), 8, "p")
    assert again.names == calibration.names and again.sha256 == calibration.sha256
    assert len({name.split("/")[0] for name in calibration.names}) > 1  # spread over classes
    assert calibration.images == [(root / name).read_bytes() for name in calibration.names]
    with pytest.raises(UsageError, match="--calibration-images must be at least 1"):
        choose_calibration(scan_image_dir(root), 0, "p")


def test_only_int8_asks_for_a_calibration(tmp_path):
    directory = scan_image_dir(write_demo_images(tmp_path / "images", per_class=5))
    int8 = FeaturizerConfig(tmp_path / "g.pb", precision="int8", backend="openvino", calibration_images=6)
    calibration = calibration_for(int8, directory)
    assert calibration.preprocessing == PREPROCESSING and len(calibration.names) == 6
    auto = FeaturizerConfig(tmp_path / "g.pb", precision="int8", backend="auto", calibration_images=6)
    assert calibration_for(auto, directory.root).names == calibration.names  # a folder is scanned when int8 needs it
    for config in (FeaturizerConfig(tmp_path / "g.pb", precision="fp32", backend="openvino"),
                   FeaturizerConfig(tmp_path / "g.pb", precision="int8")):  # TensorFlow refuses int8 when it loads
        assert not config.needs_calibration and calibration_for(config, tmp_path / "missing") is None
