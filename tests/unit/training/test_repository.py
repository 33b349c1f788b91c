"""The model repository: listing versions and models, resolving what a user typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.core.errors import ModelNotFound
from imgclf.core.repository import list_models, list_versions, resolve, validate_name


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
