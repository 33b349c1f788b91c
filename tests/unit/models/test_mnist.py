"""Tests for imgclf.models.mnist: reading, checking and splitting a Keras-layout mnist.npz."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from imgclf.models.mnist import default_mnist_path, load_mnist, read_mnist
from tests.support.mnist_data import make_digits, write_mnist_npz


@pytest.fixture(scope="module")
def arrays():
    x_train, y_train = make_digits(6, seed=3)
    x_test, y_test = make_digits(2, seed=4)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _write(tmp_path, arrays, **changes):
    data = {**arrays, **changes}
    path = tmp_path / "mnist.npz"
    np.savez(path, **{k: v for k, v in data.items() if v is not None})
    return path


def test_synthetic_file_has_keras_layout(tmp_path):
    path = write_mnist_npz(tmp_path / "mnist.npz", train_per_class=3, test_per_class=2)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert f["x_train"].dtype == np.uint8 and f["x_train"].shape == (30, 28, 28)
        assert f["y_test"].dtype == np.uint8 and sorted(set(f["y_test"].tolist())) == list(range(10))
        assert f["x_train"].max() == 255 and np.median(f["x_train"]) < 40  # white digits on black


def test_split_takes_the_last_images_for_validation_and_scales_pixels(tmp_path, arrays):
    path = _write(tmp_path, arrays)
    data = load_mnist(path, validation_size=20)
    assert data.sizes() == {"train": 40, "validation": 20, "test": 20}
    np.testing.assert_array_equal(data.validation.y, arrays["y_train"][40:])
    np.testing.assert_allclose(data.validation.x, arrays["x_train"][40:] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data.train.x, arrays["x_train"][:40] / 255.0, rtol=1e-6)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int32
    assert 0.0 <= data.test.x.min() and data.test.x.max() <= 1.0
    assert data.source["sha256"] and data.source["file"].endswith("mnist.npz")


def test_no_validation_set(tmp_path, arrays):
    data = load_mnist(_write(tmp_path, arrays), validation_size=0)
    assert data.validation is None and data.sizes()["train"] == 60


@pytest.mark.parametrize("size", [60, 61, -1, 2.5])
def test_validation_size_must_leave_training_images(tmp_path, arrays, size):
    with pytest.raises(ValueError, match="validation_size must be an integer in \\[0, 60\\)"):
        load_mnist(_write(tmp_path, arrays), validation_size=size)


BAD = [
    ({"y_test": None}, "lacks the array\\(s\\) y_test"),
    ({"x_train": np.zeros((60, 28, 27), np.uint8)}, "x_train .* must have shape \\[N, 28, 28\\].*\\[60, 28, 27\\]"),
    ({"x_test": np.zeros((20, 784), np.uint8)}, "x_test .* must have shape \\[N, 28, 28\\]"),
    ({"x_train": np.zeros((0, 28, 28), np.uint8), "y_train": np.zeros(0, np.uint8)}, "N >= 1"),
    ({"x_train": np.zeros((60, 28, 28), np.float32)}, "x_train .* must be uint8.*float32"),
    ({"y_train": np.full(60, 10, np.uint8)}, "y_train .* labels 0-9; received values from 10 to 10"),
    ({"y_test": np.full(20, -1, np.int64)}, "y_test .* labels 0-9; received values from -1"),
    ({"y_train": np.zeros(59, np.uint8)}, "y_train .* must have shape \\[60\\].*\\[59\\]"),
    ({"y_train": np.zeros(60, np.float32)}, "y_train .* integer labels.*float32"),
    ({"y_train": np.array([0] * 60, dtype=object)}, "y_train .* object array .*unpickling"),
]


@pytest.mark.parametrize("changes, message", BAD)
def test_bad_arrays_are_named(tmp_path, arrays, changes, message):
    with pytest.raises(ValueError, match=message):
        read_mnist(_write(tmp_path, arrays, **changes))


def test_pickle_and_other_files_are_refused_without_unpickling(tmp_path, arrays):
    pickled = tmp_path / "mnist.pkl"
    pickled.write_bytes(pickle.dumps(arrays))
    with pytest.raises(ValueError, match="unpickling, which is refused"):
        read_mnist(pickled)
    npy = tmp_path / "x.npy"
    np.save(npy, arrays["x_train"])
    with pytest.raises(ValueError, match="single .npy array"):
        read_mnist(npy)
    html = tmp_path / "page.npz"
    html.write_bytes(b"<!doctype html><html>captive portal</html>")
    with pytest.raises(ValueError, match="not an .npz archive"):
        read_mnist(html)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(_write(tmp_path, arrays).read_bytes()[:300])
    with pytest.raises(ValueError, match="npz archive"):
        read_mnist(broken)


def test_missing_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    assert default_mnist_path() == tmp_path / "home" / "data" / "mnist.npz"
    with pytest.raises(FileNotFoundError, match="imgclf models fetch-mnist"):
        load_mnist()
