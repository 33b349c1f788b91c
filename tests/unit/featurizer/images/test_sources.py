"""SOURCE listings: a local folder as scan_image_dir sees it, a bucket prefix by the same class-layout rules."""

import numpy as np
import pytest

from imgclf.featurizer.images.folders import scan_image_dir
from imgclf.featurizer.images.sources import open_image_source
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
    assert source.entries == directory.entries and source.root == directory.root
    assert source.read("dogs/c.jpeg") == directory.read("dogs/c.jpeg") == (root / "dogs" / "c.jpeg").read_bytes()


def test_a_bucket_source_follows_the_same_rules(tmp_path, s3_env, monkeypatch):
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    root = _folder(tmp_path / "photos")
    upload_folder(s3_env, root, "source-bucket", "photos")
    source = open_image_source("s3://source-bucket/photos/")
    local = open_image_source(root)
    assert source.label_names == local.label_names
    assert [(i.rel_path, i.label) for i in source.entries] == [(i.rel_path, i.label) for i in local.entries]
    assert source.ignored == 4  # the hidden file, the hidden folder's file, the text file, the loose file
    assert source.read("cats/sub/b.PNG") == (root / "cats" / "sub" / "b.PNG").read_bytes()
    assert source.location.path("dogs/c.jpeg") == "source-bucket/photos/dogs/c.jpeg"
    s3_client(s3_env).put_object(Bucket="source-bucket", Key="flat/a.jpg", Body=b"x")
    with pytest.raises(ValueError, match="has no class sub-folder with images"):
        open_image_source("s3://source-bucket/flat")


def _featurize(source, graph, dest):
    from imgclf.service.cli.main import main

    return main(["featurize", str(source), "--graph", str(graph), "--precision", "fp32", "--quiet",
                 "--output-dataset", str(dest)])


def test_the_local_engine_reads_a_bucket_as_it_reads_the_folder(tmp_path, s3_env, monkeypatch, legacy_graph_path):
    from imgclf.featurizer.store.dataset import load_features, read_manifest
    from imgclf.featurizer.store.identity import FeaturizerIdentity
    from imgclf.featurizer.store.object_store import open_location

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    root = _folder(tmp_path / "photos")
    upload_folder(s3_env, root, "engine-bucket", "photos")
    assert _featurize("s3://engine-bucket/photos", legacy_graph_path, "s3://engine-bucket/features") == 0
    assert _featurize(root, legacy_graph_path, tmp_path / "local") == 0
    (entry,) = read_manifest(open_location(tmp_path / "local"))["featurizers"].values()
    identity = FeaturizerIdentity.from_description(entry["featurizer"])
    remote, local = (load_features(d, identity)[0] for d in ("s3://engine-bucket/features", tmp_path / "local"))
    assert remote.paths == local.paths == ["cats/a.jpg", "cats/sub/b.PNG", "dogs/c.jpeg"]
    np.testing.assert_array_equal(remote.features, local.features)


@pytest.mark.parametrize("case, message", [
    ("missing bucket", "cannot read 's3://no-such-bucket/photos'"),
    ("no credentials", "no AWS credentials"),
    ("not a class layout", "has no class sub-folder with images"),
])
def test_bad_sources_are_one_line_and_exit_1_before_any_work(case, message, tmp_path, s3_env, monkeypatch,
                                                              legacy_graph_path, capsys):
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    source = "s3://no-such-bucket/photos"
    if case == "no credentials":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    elif case == "not a class layout":
        s3_client(s3_env).create_bucket(Bucket="flat-bucket")
        s3_client(s3_env).put_object(Bucket="flat-bucket", Key="photos/a.jpg", Body=images.jpeg(1, (40, 30)))
        source = "s3://flat-bucket/photos"
    assert _featurize(source, legacy_graph_path, tmp_path / "ds") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "ds").exists()  # nothing written
