"""SOURCE listings: a local folder as scan_image_dir sees it, a bucket prefix by the same class-layout rules."""

import pytest

from imgclf.featurizer.image_dir import scan_image_dir
from imgclf.featurizer.image_source import open_image_source
from tests.support import images
from tests.support.s3_server import s3_client, s3_server, upload_folder


def _folder(root):
    for rel, seed in (("cats/a.jpg", 1), ("cats/sub/b.PNG", 2), ("dogs/c.jpeg", 3)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(images.jpeg(seed, (40, 30)))
    (root / "cats" / ".hidden.jpg").write_bytes(b"x")
    (root / "cats" / "notes.txt").write_text("x")
    (root / "loose.jpg").write_bytes(b"x")
    (root / ".git").mkdir()
    (root / ".git" / "x.jpg").write_bytes(b"x")
    return root


@pytest.fixture(scope="module")
def s3_env():
    with s3_server() as env:
        yield env


def test_a_local_source_is_the_image_directory(tmp_path):
    root = _folder(tmp_path / "photos")
    source, directory = open_image_source(root), scan_image_dir(root)
    assert source.label_names == directory.label_names == ["cats", "dogs"]
    assert [(i.rel_path, i.label) for i in source.images] == [(e.rel_path, e.label) for e in directory.entries]
    assert source.read("dogs/c.jpeg") == (root / "dogs" / "c.jpeg").read_bytes()
    assert source.as_directory().entries[0].path == directory.entries[0].path


def test_a_bucket_source_follows_the_same_rules(tmp_path, s3_env, monkeypatch):
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    root = _folder(tmp_path / "photos")
    upload_folder(s3_env, root, "source-bucket", "photos")
    source = open_image_source("s3://source-bucket/photos/")
    local = open_image_source(root)
    assert source.label_names == local.label_names
    assert [(i.rel_path, i.label) for i in source.images] == [(i.rel_path, i.label) for i in local.images]
    assert source.ignored == 4  # the hidden file, the hidden folder's file, the text file, the loose file
    assert source.read("cats/sub/b.PNG") == (root / "cats" / "sub" / "b.PNG").read_bytes()
    assert source.fs_path("dogs/c.jpeg") == "source-bucket/photos/dogs/c.jpeg"
    s3_client(s3_env).put_object(Bucket="source-bucket", Key="flat/a.jpg", Body=b"x")
    with pytest.raises(ValueError, match="has no class sub-folder with images"):
        open_image_source("s3://source-bucket/flat")
