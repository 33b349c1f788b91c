"""An exported image classifier, loaded: it describes itself, predicts as featurizer + head, refuses bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from imgclf.core.errors import ImageTooLarge, InvalidImage, ModelNotFound, UnsupportedImageType
from imgclf.core.repository import resolve
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
from imgclf.training.classifier import load_model
from imgclf.training.export import export_model
from tests.support import images
from tests.unit.core.test_repository import fake_version
from tests.unit.training.test_export import make_head

LABELS = ["cat", "dog", "cow"]


@pytest.fixture(scope="module")
def exported(legacy_graph_path, tmp_path_factory):
    """A real export of the legacy graph and the in-process reference it must agree with."""
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    data = [images.jpeg(31), images.encode(images.photo_like(32, (320, 240)), "PNG"),
            images.jpeg(33, (200, 300), quality=75)]
    try:
        vectors = featurizer.run(np.stack([featurizer.preprocess(blob) for blob in data]))
        head = make_head(featurizer.dim, len(LABELS), seed=2, vectors=vectors)
        repo = tmp_path_factory.mktemp("repo")
        version_dir = export_model(repo, "animals", head, featurizer, LABELS, {"metrics": {"accuracy": 0.5}})
    finally:
        featurizer.close()
    return {"repo": repo, "dir": version_dir, "data": data, "vectors": vectors,
            "expected": np.asarray(head(vectors))}


@pytest.fixture(scope="module")
def model(exported):
    return load_model(resolve(exported["repo"] / "animals"))


def test_loaded_model_describes_itself(model, exported):
    assert (model.name, model.version, model.labels, model.path) == ("animals", 1, LABELS, exported["dir"])
    assert model.card["metrics"] == {"accuracy": 0.5}
    assert model.bottleneck_dim == 2048


def test_predict_bytes_matches_featurizer_plus_head(model, exported):
    got = model.predict_bytes(exported["data"])
    assert got.shape == (3, len(LABELS)) and got.dtype == np.float32
    np.testing.assert_allclose(got, exported["expected"], atol=1e-4, rtol=0)


def test_predict_rgb_matches_featurizer_plus_head(model, exported):
    got = model.predict_rgb([model.decode(blob) for blob in exported["data"]])
    np.testing.assert_allclose(got, exported["expected"], atol=1e-4, rtol=0)


def test_predict_rgb_turns_exif_rotated_photos_upright_like_training(model, exported, legacy_graph_path):
    from PIL import Image

    upright = images.photo_like(40, (300, 200))
    stored = np.asarray(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90))  # as a camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = images.encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    try:  # the reference: the featurizer, which applies EXIF orientation the same way training did
        vector = featurizer.run(featurizer.preprocess(rotated)[None])
    finally:
        featurizer.close()
    expected = model.predict_bottlenecks(vector)
    rgb = model.decode(rotated)
    assert rgb.shape[:2] == (200, 300)  # upright
    np.testing.assert_allclose(model.predict_rgb([rgb]), expected, atol=1e-4, rtol=0)


def test_predict_bottlenecks_matches_head(model, exported):
    np.testing.assert_allclose(model.predict_bottlenecks(exported["vectors"]), exported["expected"],
                               atol=1e-4, rtol=0)


def test_predict_nothing(model):
    assert model.predict_bytes([]).shape == (0, len(LABELS))


@pytest.mark.parametrize("bad, error, message", [
    (b"", InvalidImage, r"image 1: empty image"),
    (b"not an image at all", InvalidImage, r"image 1: not an image"),
    (images.jpeg(34)[:3000], InvalidImage, r"image 1: cannot decode it: .*Invalid JPEG data"),
    (images.encode(images.photo_like(35, (40, 30)), "TIFF"), UnsupportedImageType, r"image 1: unsupported image type"),
])
def test_bad_images_get_clear_errors(model, exported, bad, error, message):
    with pytest.raises(error, match=message):
        model.predict_bytes([exported["data"][0], bad])


def test_too_many_pixels_are_refused_before_decoding(exported):
    small = load_model(exported["dir"], max_pixels=1000)
    with pytest.raises(ImageTooLarge, match="image 0: image is 500×375"):
        small.predict_bytes([exported["data"][0]])


@pytest.mark.parametrize("shape", [(2,), (2, 10), (1, 2, 2048)])
def test_bottleneck_shape_is_checked(model, shape):
    with pytest.raises(ValueError, match=r"must be \[N, 2048\]; received shape"):
        model.predict_bottlenecks(np.zeros(shape, np.float32))


def test_load_model_refuses_an_incomplete_directory(tmp_path):
    fake_version(tmp_path / "m", "1", files=("saved_model.pb",))
    with pytest.raises(ModelNotFound, match="missing model_card.json"):
        load_model(tmp_path / "m" / "1")


def test_load_model_refuses_labels_that_disagree_with_the_card(exported, tmp_path):
    copy = shutil.copytree(exported["dir"], tmp_path / "animals" / "1")
    (copy / "labels.txt").write_text("cat\ndog\nhorse\n")
    with pytest.raises(ValueError, match="disagrees"):
        load_model(copy)
    card = json.loads((copy / "model_card.json").read_text())
    (copy / "labels.txt").write_text("".join(f"{label}\n" for label in card["labels"]))
    assert load_model(copy).labels == LABELS


@pytest.mark.parametrize("card", [b'{"labels": ["a", "b"', b"{}", b"[]", b"\xff\xfe not UTF-8"])
def test_a_corrupt_model_card_or_one_without_labels_is_model_not_found(tmp_path, card):
    version = fake_version(tmp_path / "flowers", "1")
    (version / "model_card.json").write_bytes(card)
    with pytest.raises(ModelNotFound, match=r"model_card\.json' is not a readable model card"):
        load_model(version)


def test_a_model_trained_with_fast_decoding_is_served_with_it(legacy_graph_path, tmp_path):
    from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT

    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, DEFAULT_CONTRACT.with_overrides(decode="fast"),
                                             precision="fp32"))
    photo = images.jpeg(34, (2500, 2400), quality=92)  # DCT-scaled by 4 in fast mode
    try:
        inputs = np.stack([featurizer.preprocess(photo)])
        vectors = featurizer.run(inputs)
        head = make_head(featurizer.dim, len(LABELS), seed=3, vectors=vectors)
        version_dir = export_model(tmp_path, "phones", head, featurizer, LABELS, {})
        expected = np.asarray(head(vectors))
    finally:
        featurizer.close()
    model = load_model(version_dir)
    assert model.decode_mode == "fast" and model.card["featurizer"]["decode"] == "fast"
    rgb, x = model.preprocess(photo)
    assert rgb.shape == (600, 625, 3) and model.decode(photo).shape == (600, 625, 3)
    np.testing.assert_array_equal(x, inputs[0])  # the very input training featurized
    np.testing.assert_allclose(model.predict_inputs(x[None]), expected, atol=1e-5)
    np.testing.assert_allclose(model.predict_rgb([model.decode(photo)]), expected, atol=1e-5)
    np.testing.assert_allclose(model.predict_bytes([photo]), expected, atol=1e-5)  # the SavedModel scales too


def test_cards_from_before_decode_modes_decode_exactly(model, monkeypatch):
    monkeypatch.delitem(model.card["featurizer"]["contract"], "decode")
    assert model.decode_mode == "exact"
    assert model.decode(images.jpeg(35, (1300, 1250))).shape == (1250, 1300, 3)
