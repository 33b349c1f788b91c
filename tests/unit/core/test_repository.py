"""imgclf.core.repository: listing versions and models, resolving what a user typed, and publish_version
(a version appears by one rename, or not at all)."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from imgclf.core import export_names as names
from imgclf.core import repository
from imgclf.core.atomic import current_umask
from imgclf.core.errors import ModelNotFound, UsageError
from imgclf.core.repository import (
    STALE_WORK_DIR_SECONDS,
    integer_dirs,
    keep_rejected,
    list_models,
    list_versions,
    publish_version,
    remove_stale_work_dirs,
    resolve,
    validate_name,
)


def writer(payload: bytes = b"graph", card: dict | None = None, seen: list | None = None):
    """Return a ``write(work)`` that writes a stand-in saved_model.pb and returns a card."""
    def write(work: Path) -> dict:
        (work / names.SAVED_MODEL_FILE).write_bytes(payload)
        (work / "variables").mkdir()
        (work / "variables" / "variables.index").write_bytes(b"index")
        if seen is not None:
            seen.append((work, sorted(p.name for p in work.parent.iterdir())))
        return dict(card or {"name": "flowers", "labels": ["a", "b"]})
    return write


def work_dirs(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob(f"{names.TEMP_PREFIX}*"))


def test_a_version_is_written_hidden_and_appears_by_one_rename(tmp_path):
    seen = []
    target = publish_version(tmp_path, "flowers", writer(seen=seen))

    work, listing_while_writing = seen[0]
    assert work.parent == tmp_path / "flowers" and work.name.startswith(names.TEMP_PREFIX)
    assert listing_while_writing == [work.name]  # nothing else was visible while the version was written
    assert target == tmp_path / "flowers" / "1"
    assert not work.exists() and work_dirs(target.parent) == []
    assert (target / names.SAVED_MODEL_FILE).read_bytes() == b"graph"
    assert (target / "variables" / "variables.index").read_bytes() == b"index"
    card = json.loads((target / names.MODEL_CARD_FILE).read_text(encoding="utf-8"))
    assert card == {"name": "flowers", "labels": ["a", "b"], "version": 1}
    assert list_versions(tmp_path, "flowers") == [1]


def test_the_published_tree_gets_the_umask_permissions(tmp_path):
    umask = current_umask()
    target = publish_version(tmp_path, "flowers", writer())  # mkdtemp made the work directory 0700
    for path in [target, *target.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_the_next_version_follows_the_highest_integer_directory(tmp_path):
    model_dir = tmp_path / "flowers"
    publish_version(tmp_path, "flowers", writer())
    os.rename(publish_version(tmp_path, "flowers", writer()), model_dir / "3")  # versions 1 and 3: a gap
    (model_dir / "7").mkdir()  # a half-copied version: not listed, but its number is taken
    (model_dir / "7" / names.SAVED_MODEL_FILE).write_bytes(b"partial")
    (model_dir / "latest").mkdir()  # not an integer: ignored

    target = publish_version(tmp_path, "flowers", writer(b"new"))

    assert target == model_dir / "8"
    assert json.loads((target / names.MODEL_CARD_FILE).read_text())["version"] == 8
    assert (model_dir / "7" / names.SAVED_MODEL_FILE).read_bytes() == b"partial"  # left as it was
    assert list_versions(tmp_path, "flowers") == [1, 3, 8]


def test_a_number_taken_meanwhile_by_another_publisher_is_skipped(tmp_path, monkeypatch):
    """Another process publishes version 1 between this one's listing and its rename."""
    model_dir = tmp_path / "flowers"
    listed = repository.integer_dirs
    calls = []

    def listing_then_rival(path):
        found = listed(path)
        if not calls:  # the rival renames its own work directory to "1" right after we looked
            (model_dir / "1").mkdir()
            (model_dir / "1" / names.MODEL_CARD_FILE).write_text('{"rival": true}')
        calls.append(sorted(found))
        return found

    monkeypatch.setattr(repository, "integer_dirs", listing_then_rival)
    target = publish_version(tmp_path, "flowers", writer())

    assert calls[:2] == [[], [1]]  # looked again after the failed rename
    assert target == model_dir / "2"
    assert json.loads((model_dir / "2" / names.MODEL_CARD_FILE).read_text())["version"] == 2
    assert json.loads((model_dir / "1" / names.MODEL_CARD_FILE).read_text()) == {"rival": True}
    assert work_dirs(model_dir) == []


def test_concurrent_publishers_each_get_their_own_version(tmp_path):
    count = 8
    start = threading.Barrier(count)
    results, errors = [], []

    def publish(i: int) -> None:
        def write(work: Path) -> dict:
            writer(f"model {i}".encode())(work)
            start.wait(10)  # all of them reach the rename together
            return {"publisher": i}
        try:
            results.append((i, publish_version(tmp_path, "flowers", write)))
        except BaseException as exc:  # a thread cannot raise into the test: the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sorted(int(path.name) for _, path in results) == list(range(1, count + 1))
    for i, path in results:  # each version holds its own publisher's files and card
        assert (path / names.SAVED_MODEL_FILE).read_bytes() == f"model {i}".encode()
        card = json.loads((path / names.MODEL_CARD_FILE).read_text())
        assert card == {"publisher": i, "version": int(path.name)}
    assert work_dirs(tmp_path / "flowers") == []


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for entry in [path, *path.rglob("*")]:
        os.utime(entry, (then, then), follow_symlinks=False)


def test_publishing_removes_stale_work_dirs_only(tmp_path):
    model_dir = tmp_path / "flowers"
    stale = model_dir / f"{names.TEMP_PREFIX}killed"
    (stale / "variables").mkdir(parents=True)
    (stale / "variables" / "variables.data").write_bytes(b"x" * 100)
    _age(stale, STALE_WORK_DIR_SECONDS + 60)
    running = model_dir / f"{names.TEMP_PREFIX}running"  # old directory, but a file written just now
    running.mkdir()
    (running / "saved_model.pb").write_bytes(b"being written")
    _age(running, STALE_WORK_DIR_SECONDS + 60)
    (running / "variables.data").write_bytes(b"fresh")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _age(outside, STALE_WORK_DIR_SECONDS + 60)
    link = model_dir / f"{names.TEMP_PREFIX}link"
    link.symlink_to(outside, target_is_directory=True)
    os.utime(link, (0, 0), follow_symlinks=False)

    publish_version(tmp_path, "flowers", writer())

    assert not stale.exists()
    assert running.is_dir() and (running / "saved_model.pb").is_file()
    assert link.is_symlink() and outside.is_dir()  # never followed out of the model directory
    assert list_versions(tmp_path, "flowers") == [1]


def test_remove_stale_work_dirs_reports_what_it_removed(tmp_path):
    old = tmp_path / f"{names.TEMP_PREFIX}a"
    old.mkdir()
    _age(old, 120)
    young = tmp_path / f"{names.TEMP_PREFIX}b"
    young.mkdir()
    (tmp_path / f"{names.TEMP_PREFIX}file").write_text("not a directory")
    _age(tmp_path / f"{names.TEMP_PREFIX}file", 120)

    assert remove_stale_work_dirs(tmp_path, older_than=60) == [old]
    assert not old.exists() and young.is_dir() and (tmp_path / f"{names.TEMP_PREFIX}file").is_file()


@pytest.mark.parametrize("error", [RuntimeError("export failed"), KeyboardInterrupt()])
def test_a_failed_write_leaves_nothing(tmp_path, error):
    def write(work: Path) -> dict:
        writer()(work)
        raise error

    with pytest.raises(type(error)):
        publish_version(tmp_path, "flowers", write)

    assert sorted(p.name for p in (tmp_path / "flowers").iterdir()) == []
    assert list_versions(tmp_path, "flowers") == []


def test_a_card_that_cannot_be_written_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):  # json cannot write a set
        publish_version(tmp_path, "flowers", writer(card={"labels": {"a"}}))
    assert list((tmp_path / "flowers").iterdir()) == []


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "x" * 129])
def test_an_unsafe_name_is_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(UsageError, match="model name"):
        publish_version(tmp_path / "repo", name, writer())
    assert not (tmp_path / "repo").exists()


def fake_version(model_dir: Path, name: str, files=("saved_model.pb", "model_card.json")) -> Path:
    """Create a directory that looks like an export version (for listing and resolving only)."""
    path = model_dir / name
    path.mkdir(parents=True)
    for filename in files:
        (path / filename).write_text("{}")
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    """flowers: versions 1, 2, 10 complete, 11 half-written, a work dir and stray entries; pets: 3; empty: none."""
    flowers = tmp_path / "flowers"
    for version in ("1", "2", "10"):
        fake_version(flowers, version)
    fake_version(flowers, "11", files=("saved_model.pb",))  # no card: not complete
    fake_version(flowers, ".export-abc123")  # a killed export's work directory
    fake_version(flowers, "latest")  # not an integer: TF Serving ignores it too
    (flowers / "12").write_text("a file, not a version")
    fake_version(tmp_path / "pets", "3")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    return tmp_path


def test_list_versions_counts_complete_integer_directories_only(repo):
    assert list_versions(repo, "flowers") == [1, 2, 10]
    assert list_versions(repo, "pets") == [3]
    assert list_versions(repo, "empty") == []
    assert list_versions(repo, "absent") == []
    assert list_versions(repo / "no-such-repo", "flowers") == []


def test_list_models_names_models_with_versions(repo):
    assert list_models(repo) == {"flowers": [1, 2, 10], "pets": [3]}
    assert list_models(repo / "no-such-repo") == {}


def test_resolve_gives_the_newest_or_the_named_version(repo):
    assert resolve(f"{repo}/flowers") == repo / "flowers" / "10"
    assert resolve(f"{repo}/flowers/") == repo / "flowers" / "10"
    assert resolve(repo / "flowers" / "2") == repo / "flowers" / "2"
    assert resolve(f"{repo}/pets") == repo / "pets" / "3"


def test_resolve_a_model_named_like_a_number(tmp_path):
    fake_version(tmp_path / "2024", "1")
    assert resolve(tmp_path / "2024") == tmp_path / "2024" / "1"


@pytest.mark.parametrize("spec, message", [
    ("{repo}/flowers/7", r"has no version 7; versions: 1, 2, 10"),
    ("{repo}/flowers/11", r"has no version 11; versions: 1, 2, 10"),  # half-written
    ("{repo}/tulips", r"no model 'tulips' in .*; models there: flowers \(versions 1, 2, 10\), pets \(versions 3\)"),
    ("{repo}/empty", r"model .*empty' has no complete version yet; models in .*: flowers"),
    ("{repo}/nowhere/flowers", r"no model repository at .*nowhere"),
    ("{repo}/.hidden", r"names no model"),
])
def test_resolve_errors_say_what_exists(repo, spec, message):
    with pytest.raises(ModelNotFound, match=message):
        resolve(spec.format(repo=repo))


@pytest.mark.parametrize("name", ["", ".x", "a/b", "a b", "x" * 129])
def test_list_versions_refuses_unsafe_names(repo, name):
    with pytest.raises(ValueError, match="model name"):
        list_versions(repo, name)


@pytest.mark.parametrize("name", ["flowers", "my-model_2.1", "A", "7"])
def test_safe_names_are_accepted(name):
    assert validate_name(name) == name


# --- a candidate the publish gate rejected: kept, written as carefully, never a version ----------------------

def test_a_rejected_candidate_is_kept_under_a_timestamp_where_no_server_looks(tmp_path):
    from imgclf.service.lifecycle.plan import ModelPlan

    publish_version(tmp_path, "flowers", writer())
    seen = []
    kept = keep_rejected(tmp_path, "flowers", writer(b"rejected", card={"name": "flowers", "version": 0}, seen=seen))
    work, listing_while_writing = seen[0]
    assert work.parent == tmp_path / "flowers" and work.name.startswith(names.TEMP_PREFIX) and not work.exists()
    assert kept.parent == tmp_path / "flowers" / names.REJECTED_DIR
    assert re.fullmatch(r"\d{8}T\d{6}Z", kept.name), kept.name
    assert (kept / names.SAVED_MODEL_FILE).read_bytes() == b"rejected"
    assert json.loads((kept / names.MODEL_CARD_FILE).read_text()) == {"name": "flowers", "version": 0}
    umask = current_umask()
    assert all(stat.S_IMODE(p.stat().st_mode) == ((0o777 if p.is_dir() else 0o666) & ~umask)
               for p in [kept, *kept.rglob("*")])
    # Neither the repository's listings nor the service's plan see it, and it takes no version number.
    assert list_versions(tmp_path, "flowers") == [1] and list_models(tmp_path) == {"flowers": [1]}
    assert set(integer_dirs(tmp_path / "flowers")) == {1}
    assert ModelPlan(tmp_path / "flowers").on_disk() == [1]
    assert resolve(tmp_path / "flowers") == tmp_path / "flowers" / "1"
    assert publish_version(tmp_path, "flowers", writer()) == tmp_path / "flowers" / "2"


def test_two_rejections_in_one_second_keep_both(tmp_path, monkeypatch):
    monkeypatch.setattr(repository.time, "gmtime", lambda *_: time.struct_time((2026, 12, 7, 14, 0, 0, 0, 341, 0)))
    first = keep_rejected(tmp_path, "flowers", writer(b"one"))
    second = keep_rejected(tmp_path, "flowers", writer(b"two"))
    assert (first.name, second.name) == ("20261207T140000Z", "20261207T140000Z-1")
    assert (second / names.SAVED_MODEL_FILE).read_bytes() == b"two"


def test_a_failed_rejected_write_leaves_nothing(tmp_path):
    def failing(work: Path) -> dict:
        (work / names.SAVED_MODEL_FILE).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        keep_rejected(tmp_path, "flowers", failing)
    assert work_dirs(tmp_path / "flowers") == [] and list((tmp_path / "flowers" / names.REJECTED_DIR).iterdir()) == []


def test_check_sizes_refuses_large_files_from_their_sizes_alone(tmp_path, monkeypatch):
    from imgclf.core.repository import check_sizes

    version = tmp_path / "m" / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(bytes(100))
    (version / "variables" / "variables.data-00000-of-00001").write_bytes(bytes(300))
    (version / "variables" / "variables.index").write_bytes(bytes(20))
    (version / "model_card.json").write_text('{"labels": ["a"]}')
    (version / "labels.txt").write_text("a\n")
    (version / "end_to_end.pb").write_bytes(bytes(5000))  # not read by a server: not counted
    assert check_sizes(version, max_model_bytes=420, max_card_bytes=17) == 420
    with pytest.raises(ValueError, match=r"hold 420 bytes \(variables/variables.data-00000-of-00001: 300\); at most "
                                         r"419 are loaded \(IMGCLF_MAX_MODEL_BYTES\)"):
        check_sizes(version, max_model_bytes=419)
    with pytest.raises(ValueError, match=r"model_card.json of .* is 17 bytes; at most 16 are read"):
        check_sizes(version, max_card_bytes=16)
    with open(version / "saved_model.pb", "wb") as sparse:
        sparse.truncate(2 * 1024 ** 3)  # 2 GB on no disk: refused by its stat, never opened
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("a file was opened"))
    with pytest.raises(ValueError, match=r"saved_model.pb: 2,147,483,648\); at most 1,073,741,824"):
        check_sizes(version)
    assert check_sizes(version, max_model_bytes=0, max_card_bytes=0) == 2 * 1024 ** 3 + 320  # 0: no limit
