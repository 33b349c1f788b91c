"""Atomic writes: the file appears whole with open()'s mode, or not at all."""

import os
import stat

import pytest

from imgclf.core import atomic
from imgclf.core.atomic import atomic_file, write_json_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_file_gets_the_mode_open_would_give_it(tmp_path, umask_022):
    write_json_atomic(tmp_path / "card.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "card.json").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert (tmp_path / "card.json").read_text() == '{\n  "a": 1\n}\n'
    assert atomic.current_umask() == 0o022


def test_a_failed_fsync_closes_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError, match="Input/output error"):
        with atomic_file(tmp_path / "out.bin") as fh:
            fh.write(b"data")
    assert fh.closed
    assert list(tmp_path.iterdir()) == []


def test_the_directory_is_synced_after_the_rename_where_the_platform_allows(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    with atomic_file(tmp_path / "out.bin") as fh:
        fh.write(b"data")
    assert synced == [False, True]  # the file, then its directory

    def directories_refuse(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", directories_refuse)
    with atomic_file(tmp_path / "out.bin") as fh:  # best effort: still written
        fh.write(b"new")
    assert (tmp_path / "out.bin").read_bytes() == b"new"
