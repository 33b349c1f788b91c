"""Discovering labelled images in a folder."""

import os

import pytest

from imgclf.featurizer.images.folders import scan_image_dir


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_classes_sorted_extensions_case_insensitive_hidden_ignored(tmp_path):
    root = tmp_path / "photos"
    _touch(root / "tulips" / "a.JPG")
    _touch(root / "tulips" / "nested" / "b.jpeg")
    _touch(root / "daisy" / "c.PnG")
    _touch(root / "daisy" / "d.webp")
    _touch(root / "daisy" / "notes.txt")
    _touch(root / "daisy" / ".hidden.jpg")
    _touch(root / ".git" / "x.jpg")
    _touch(root / "loose.jpg")
    (root / "empty").mkdir()
    found = scan_image_dir(root)
    assert found.label_names == ["daisy", "tulips"]
    assert [(e.rel_path, e.label) for e in found.entries] == [
        ("daisy/c.PnG", 0), ("daisy/d.webp", 0), ("tulips/a.JPG", 1), ("tulips/nested/b.jpeg", 1)]
    assert found.skipped == []
    assert found.ignored == 4  # notes.txt, .hidden.jpg, .git, loose.jpg


def test_symlinks_leaving_the_folder_are_refused(tmp_path):
    outside = _touch(tmp_path / "secret" / "passwd.jpg")
    root = tmp_path / "photos"
    inside = _touch(root / "cats" / "real.jpg")
    os.symlink(outside, root / "cats" / "escape.jpg")
    os.symlink(inside, root / "cats" / "alias.jpg")
    os.symlink(tmp_path / "secret", root / "cats" / "linkdir")
    os.symlink(tmp_path / "secret", root / "dogs")
    found = scan_image_dir(root)
    assert [e.rel_path for e in found.entries] == ["cats/alias.jpg", "cats/real.jpg"]
    reasons = dict(found.skipped)
    assert set(reasons) == {"cats/escape.jpg", "cats/linkdir", "dogs"}
    assert all("leaves the image folder" in r for r in reasons.values())


@pytest.mark.parametrize("make", ["missing", "file", "no_classes"])
def test_unusable_folders_get_a_clear_error(tmp_path, make):
    root = tmp_path / "photos"
    if make == "file":
        _touch(root)
    elif make == "no_classes":
        _touch(root / "a.jpg")
    with pytest.raises(ValueError, match="photos"):
        scan_image_dir(root)
