"""Planning what to serve: from the repository (policy, pins) or from a model config file."""

from pathlib import Path

import pytest

from imgclf.core import export_names as names
from imgclf.core.errors import ModelNotFound
from imgclf.service.lifecycle.plan import ModelPlan, check_plan, plan_models
from imgclf.service.lifecycle.policy import ALL, LATEST, SPECIFIC, VersionPolicy
from imgclf.service.settings import ServingSettings


def add_version(repo: Path, name: str, version: int, complete: bool = True) -> None:
    path = repo / name / str(version)
    path.mkdir(parents=True)
    for required in names.REQUIRED_FILES if complete else names.REQUIRED_FILES[:1]:
        (path / required).write_text("{}")


def config(repo: Path, **settings) -> ServingSettings:
    return ServingSettings.from_env({}, model_repository=repo, **settings)


def test_every_model_of_the_repository_with_the_policy_and_the_pins(tmp_path):
    for name, version in (("a", 1), ("a", 2), ("b", 1), ("b", 3)):
        add_version(tmp_path, name, version)
    add_version(tmp_path, "a", 4, complete=False)  # half a version is never served
    (tmp_path / "empty").mkdir()
    plans = plan_models(config(tmp_path, version_policy="all", model_versions={"b": 1}))
    assert plans == {"a": ModelPlan(tmp_path / "a", VersionPolicy(ALL)),
                     "b": ModelPlan(tmp_path / "b", VersionPolicy(SPECIFIC, versions=(1,)))}
    assert plans["a"].on_disk() == [1, 2] and plans["a"].selected() == [1, 2] and plans["b"].selected() == [1]
    assert plan_models(config(tmp_path / "missing")) == {}


def test_a_config_file_lists_the_models(tmp_path):
    add_version(tmp_path, "a", 1)
    add_version(tmp_path, "b", 1)
    path = tmp_path / "serving.conf"
    path.write_text('model_config_list { config { name: "b" base_path: "elsewhere" '
                    'version_labels { key: "stable" value: 1 } } }')
    assert plan_models(config(tmp_path, model_config_file=str(path))) == {
        "b": ModelPlan(tmp_path / "elsewhere", VersionPolicy(LATEST, 1), {"stable": 1})}


def test_check_plan_refuses_unknown_pins_and_default(tmp_path):
    plans = {"a": ModelPlan(tmp_path / "a")}
    check_plan(config(tmp_path, default_model="a", model_versions={"a": 1}), plans)
    with pytest.raises(ModelNotFound, match="pinned model\\(s\\) z not in"):
        check_plan(config(tmp_path, model_versions={"z": 1}), plans)
    with pytest.raises(ModelNotFound, match="the default model 'z' \\(IMGCLF_DEFAULT_MODEL\\) is not in .*; "
                                            "served models: a"):
        check_plan(config(tmp_path, default_model="z"), plans)


def test_why_none(tmp_path):
    add_version(tmp_path, "a", 1)
    specific = ModelPlan(tmp_path / "a", VersionPolicy(SPECIFIC, versions=(2, 3)))
    assert specific.why_none("a") == f"model 'a' has no version 2, 3 in {tmp_path / 'a'}; versions: 1"
    assert ModelPlan(tmp_path / "b").why_none("b") == f"model 'b' has no complete version in {tmp_path / 'b'}"
