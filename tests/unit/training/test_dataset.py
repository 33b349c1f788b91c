"""Building split feature arrays from a folder, with and without distorted copies."""

import numpy as np
import pytest

from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.training.augment import AugmentConfig, distort
from imgclf.training.dataset import build_dataset
from tests.support import images


@pytest.fixture(scope="module")
def featurizer(legacy_graph_path):
    f = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    yield f
    f.close()


def _folder(root, per_class=6):
    for label, offset in (("ants", 0), ("bees", 50), ("wasps", 100)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            (root / label / f"{label}{i}.jpg").write_bytes(images.jpeg(offset + i, (120, 90)))
    return root


def test_arrays_follow_the_split_and_the_cache(tmp_path, featurizer):
    root = _folder(tmp_path / "p")
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        data = build_dataset(root, featurizer, cache, progress=False)
        assert data.label_names == ["ants", "bees", "wasps"]
        assert sum(data.sizes().values()) == 18 and data.extract.computed == 18
        for arrays in data.splits.values():
            assert arrays.features.shape == (len(arrays.paths), 2048)
            for path, label, vector in zip(arrays.paths, arrays.labels, arrays.features):
                assert data.label_names[label] == path.split("/")[0]
                expected = featurizer.run(featurizer.preprocess((root / path).read_bytes())[None])[0]
                np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)
            assert set(arrays.labels.tolist()) == {0, 1, 2}  # every class in every set
        again = build_dataset(root, featurizer, cache, progress=False)
        assert again.extract.computed == 0 and again.extract.cached == 18


def test_distorted_copies_are_training_only_cached_and_reproducible(tmp_path, featurizer):
    root = _folder(tmp_path / "p")
    augment = AugmentConfig(copies=2)
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        data = build_dataset(root, featurizer, cache, augment=augment, progress=False)
        train = data.splits["train"]
        originals = [p for p in train.paths if "#aug" not in p]
        assert len(train.paths) == 3 * len(originals)
        assert not any("#aug" in p for name in ("validation", "test") for p in data.splits[name].paths)
        first = dict(zip(train.paths, train.features))
        assert not np.allclose(first[originals[0]], first[originals[0] + "#aug0"])
        again = build_dataset(root, featurizer, cache, augment=augment, progress=False)
        assert again.extract.computed == 0  # the copies were cached under their own keys
        other = build_dataset(root, featurizer, cache, augment=AugmentConfig(copies=2, random_crop=30),
                              progress=False)
        assert other.extract.computed == 2 * len(originals)  # other settings: other keys


def test_distort_is_seeded_and_keeps_a_valid_image():
    rgb = images.photo_like(3, (200, 100))
    config = AugmentConfig(copies=1, random_crop=20, random_scale=20)
    a = distort(rgb, np.random.default_rng(7), config)
    b = distort(rgb, np.random.default_rng(7), config)
    c = distort(rgb, np.random.default_rng(8), config)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert a.shape[0] <= 100 and a.shape[1] <= 200 and a.shape[0] >= 100 * 0.8 / 1.2 - 1
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_bad_files_are_skipped_and_too_small_classes_fail_early(tmp_path, featurizer):
    root = _folder(tmp_path / "p")
    (root / "ants" / "broken.jpg").write_text("nope")
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        data = build_dataset(root, featurizer, cache, progress=False)
        assert [path for path, _ in data.skipped] == ["ants/broken.jpg"]
        assert sum(data.sizes().values()) == 18
    (tmp_path / "q" / "solo").mkdir(parents=True)
    (tmp_path / "q" / "solo" / "a.jpg").write_bytes(images.jpeg(1, (60, 40)))
    (tmp_path / "q" / "duo").mkdir()
    for i in range(5):
        (tmp_path / "q" / "duo" / f"{i}.jpg").write_bytes(images.jpeg(i, (60, 40)))
    with FeatureCache(tmp_path / "d.sqlite") as cache:
        with pytest.raises(ValueError, match="too few in: solo"):
            build_dataset(tmp_path / "q", featurizer, cache, progress=False)
        assert cache.count() == 0  # refused before any featurizing


def test_bad_augment_settings_are_refused(tmp_path, featurizer):
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(ValueError, match="random_crop"):
            build_dataset(_folder(tmp_path / "p"), featurizer, cache, augment=AugmentConfig(1, random_crop=150))
