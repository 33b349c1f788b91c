"""The stable hash split."""

import re
import shutil

import pytest

from imgclf.featurizer.images.folders import scan_image_dir
from imgclf.training.split import SplitConfig, check_splittable, hash_fraction, hash_key, split_entries


def _folder(root, counts, names=None):
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = (names or "{label}_{i:03d}.jpg").format(label=label, i=i)
            (root / label / name).write_bytes(b"x")
    return root


def _as_paths(split):
    return {name: [e.rel_path for e in entries] for name, entries in split.items()}


def test_hash_key_strips_nohash_and_keeps_the_folder():
    assert hash_key("dogs/rex_nohash_3.jpg") == "dogs/rex"
    assert hash_key("dogs/rex.jpg") == "dogs/rex"
    assert hash_key("a/b/c_nohash_x_y.png") == "a/b/c"
    assert 0.0 <= hash_fraction("dogs/rex") < 1.0


def test_split_follows_hash_percentages_and_is_stable_when_moved_or_grown(tmp_path):
    root = _folder(tmp_path / "one", {"cats": 300, "dogs": 300})
    first = _as_paths(split_entries(scan_image_dir(root)))
    sizes = {name: len(paths) for name, paths in first.items()}
    assert abs(sizes["train"] - 480) < 45 and abs(sizes["validation"] - 60) < 25 and abs(sizes["test"] - 60) < 25
    # Reference computed independently: the bucket of each path from its own hash.
    for name, paths in first.items():
        for path in paths:
            f = hash_fraction(hash_key(path))
            assert name == ("train" if f < 0.8 else "validation" if f < 0.9 else "test")
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    _folder(moved, {"cats": 320})  # 20 more cats
    second = _as_paths(split_entries(scan_image_dir(moved)))
    for name in first:
        assert set(first[name]) <= set(second[name])


def test_nohash_files_share_a_set(tmp_path):
    root = tmp_path / "p"
    _folder(root, {"a": 40, "b": 40}, names="{label}_{i:03d}_nohash_0.jpg")
    _folder(root, {"a": 40, "b": 40}, names="{label}_{i:03d}_nohash_1.jpg")
    split = _as_paths(split_entries(scan_image_dir(root)))
    where = {path: name for name, paths in split.items() for path in paths}
    for path, name in where.items():
        twin = path.replace("_nohash_0", "_nohash_1") if "_nohash_0" in path else path.replace("_nohash_1", "_nohash_0")
        assert where[twin] == name


@pytest.mark.parametrize("count", [3, 4, 5, 7])
def test_small_classes_still_get_validation_and_test(tmp_path, count):
    split = split_entries(scan_image_dir(_folder(tmp_path / "p", {"a": count, "b": count})))
    for label in (0, 1):
        for name in ("train", "validation", "test"):
            assert any(e.label == label for e in split[name]), (name, label)
    assert sum(len(v) for v in split.values()) == 2 * count


@pytest.mark.parametrize("counts, message", [
    ({"a": 10}, "at least 2 classes"),
    ({"a": 10, "b": 2}, "too few in: b (2)"),
])
def test_unsplittable_folders_fail_before_any_work(tmp_path, counts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_splittable(scan_image_dir(_folder(tmp_path / "p", counts)))


def test_nohash_groups_count_once(tmp_path):
    root = _folder(tmp_path / "p", {"a": 5, "b": 5}, names="same_nohash_{i}.jpg")
    with pytest.raises(ValueError, match="too few in: a \\(1\\), b \\(1\\)"):
        split_entries(scan_image_dir(root))


@pytest.mark.parametrize("config", [SplitConfig(80, 20, 0), SplitConfig(50, 10, 10), SplitConfig(-5, 55, 50)])
def test_bad_percentages_are_refused(config):
    with pytest.raises(ValueError, match="sum to 100"):
        config.validate()
