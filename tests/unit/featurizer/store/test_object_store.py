"""Locations on the local disk and on an S3-compatible server (moto on 127.0.0.1): whole writes, clear errors."""

import time

import pytest

from imgclf.featurizer.store.object_store import Location, StorageError, is_uri, open_location
from tests.support.processes import free_port
from tests.support.s3_server import s3_client, s3_server


@pytest.fixture(scope="module")
def s3_env():
    with s3_server() as env:
        s3_client(env).create_bucket(Bucket="store-bucket")
        yield env


@pytest.fixture
def s3(s3_env, monkeypatch):
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    return s3_env


@pytest.mark.parametrize("value, remote", [("s3://b/p", True), ("gs://b/p", True), ("S3://b", True),
                                           ("/tmp/x", False), ("relative/dir", False), ("http://host/x", False)])
def test_is_uri(value, remote):
    assert is_uri(value) is remote


def test_s3_files_are_written_whole_listed_and_read_back(s3):
    location = open_location("s3://store-bucket/data/")
    assert isinstance(location, Location) and location.remote and location.root == "store-bucket/data"
    location.write_bytes("a/one.bin", b"1" * 10)
    location.child("a").write_bytes("two.bin", b"22")
    assert location.list_files() == [("a/one.bin", 10), ("a/two.bin", 2)]
    assert location.list_files("a", recursive=False) == [("a/one.bin", 10), ("a/two.bin", 2)]
    assert location.read_bytes("a/two.bin") == b"22" and location.exists("a/one.bin")
    assert not location.exists("a/none.bin") and location.list_files("missing") == []
    location.delete("a/one.bin")
    assert [rel for rel, _ in location.list_files()] == ["a/two.bin"]
    assert location.display("a/two.bin") == "s3://store-bucket/data/a/two.bin"
    listed = s3_client(s3).list_objects_v2(Bucket="store-bucket", Prefix="data/")["Contents"]
    # no temp objects beside it (pyarrow keeps an empty "data/a/" marker after a delete)
    assert [o["Key"] for o in listed if not o["Key"].endswith("/")] == ["data/a/two.bin"]


def test_local_writes_are_atomic_and_a_missing_source_is_refused(tmp_path):
    location = open_location(tmp_path / "dest", create=True)
    location.write_bytes("x/f.bin", b"abc")
    assert (tmp_path / "dest" / "x" / "f.bin").read_bytes() == b"abc"
    assert [p.name for p in (tmp_path / "dest" / "x").iterdir()] == ["f.bin"]
    with pytest.raises(ValueError, match="does not exist"):
        open_location(tmp_path / "nope")


def test_a_missing_bucket_is_one_clear_error(s3):
    with pytest.raises(StorageError, match="cannot read 's3://no-such-bucket/x'.*(NoSuchBucket|NO_SUCH_BUCKET|exist)"):
        open_location("s3://no-such-bucket/x")


def test_missing_credentials_are_one_clear_error(s3, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match="no AWS credentials"):
        open_location("s3://store-bucket/x")


def test_an_endpoint_that_does_not_answer_fails_fast(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot read"):
        open_location("s3://store-bucket/x")
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("value, message", [("ftp://host/x", "unsupported storage URI"), ("s3://", "names no bucket")])
def test_bad_uris(value, message):
    with pytest.raises(StorageError, match=message):
        open_location(value)
