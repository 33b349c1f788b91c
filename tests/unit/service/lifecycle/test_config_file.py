"""The model config file: TF Serving's model_config_list text format, good files and many bad ones."""

from pathlib import Path

import pytest

from imgclf.core.errors import UsageError
from imgclf.service.lifecycle.config_file import ConfigFileError, ModelConfig, parse_model_config, read_model_config
from imgclf.service.lifecycle.policy import ALL, LATEST, SPECIFIC, VersionPolicy
from imgclf.service.settings import ServingSettings

# As TF Serving's documentation writes one (single quotes, a colon before a message, comments).
TF_SERVING_EXAMPLE = """
# two models
model_config_list {
  config {
    name: 'my_first_model'
    base_path: '/tmp/my_first_model/'
    model_platform: 'tensorflow'
    model_version_policy {
      specific {
        versions: 42
        versions: 43
      }
    }
    version_labels {
      key: 'stable'
      value: 42
    }
    version_labels {
      key: 'canary'
      value: 43
    }
  }
  config: {
    name: "my_second_model", base_path: "second";
    model_version_policy: { latest { num_versions: 2 } }
  }
  config { name: "third" model_version_policy { all {} } }
  config { name: "fourth" }
}
"""


def test_tf_servings_example_parses():
    models = parse_model_config(TF_SERVING_EXAMPLE)
    assert models == [
        ModelConfig("my_first_model", Path("/tmp/my_first_model/"), VersionPolicy(SPECIFIC, versions=(42, 43)),
                    {"stable": 42, "canary": 43}),
        ModelConfig("my_second_model", Path("second"), VersionPolicy(LATEST, 2)),
        ModelConfig("third", None, VersionPolicy(ALL)),
        ModelConfig("fourth", None, VersionPolicy(LATEST, 1)),
    ]


def test_base_paths_resolve_against_the_repository(tmp_path):
    first, second, _, fourth = parse_model_config(TF_SERVING_EXAMPLE)
    assert first.model_dir(tmp_path) == Path("/tmp/my_first_model")
    assert second.model_dir(tmp_path) == tmp_path / "second"
    assert fourth.model_dir(tmp_path) == tmp_path / "fourth"


def test_escapes_and_an_empty_list():
    (model,) = parse_model_config(r'model_config_list { config { name: "a.b" base_path: "x\"y\\z" } }')
    assert (model.name, str(model.base_path)) == ("a.b", 'x"y\\z')
    assert parse_model_config("model_config_list {}") == []


@pytest.mark.parametrize("text, message", [
    ("", ":1: the file holds no model_config_list"),
    ("model_config_list {\n  config {\n    name: 'a'\n", ":4: unexpected end of file: a '}' is missing"),
    ("model_config_list {\n}\n}", ":3: expected a field name; found '}'"),
    ("model_config_list {\n config {\n  nmae: 'a'\n }\n}", ":3: unknown field 'nmae' in config (fields: "
                                                            "base_path, model_platform, model_version_policy, "
                                                            "name, version_labels)"),
    ("model_config_list { config { base_path: 'x' } }", ":1: config has no name"),
    ("model_config_list { config { name: 'a' name: 'b' } }", "name is given twice in config (first on line 1)"),
    ("model_config_list {\n config { name: 'a' }\n config { name: 'a' }\n}",
     ":3: model 'a' is listed twice (first on line 2)"),
    ("model_config_list { config { name: '../etc' } }", ":1: model name must be"),
    ("model_config_list { config { name: 42 } }", "name must be a string; received 42"),
    ("model_config_list { config { name 'a' } }", "expected ':' or '{' after 'name'; found \"'a'\""),
    ("model_config_list { config { name: } }", "expected a value for 'name'; found '}'"),
    ("model_config_list { config { name: 'a' model_platform: 'pytorch' } }",
     'model_platform must be "tensorflow"'),
    ("model_config_list { config { name: 'a' base_path: '' } }", "base_path is empty"),
    ("model_config_list { config { name: 'a' model_version_policy: 'latest' } }",
     "model_version_policy must be a message"),
    ("model_config_list { config { name: 'a' model_version_policy {} } }",
     "model_version_policy needs exactly one of latest, all, specific; received 0"),
    ("model_config_list { config { name: 'a' model_version_policy { all {} latest {} } } }",
     "needs exactly one of latest, all, specific; received 2"),
    ("model_config_list { config { name: 'a' model_version_policy { latest { num_versions: 0 } } } }",
     "num_versions must be a positive whole number"),
    ("model_config_list { config { name: 'a' model_version_policy { latest { num_versions: -2 } } } }",
     "num_versions must be a positive whole number"),
    ("model_config_list { config { name: 'a' model_version_policy { latest { count: 2 } } } }",
     "unknown field 'count' in latest (fields: num_versions)"),
    ("model_config_list { config { name: 'a' model_version_policy { specific {} } } }",
     "specific needs at least one versions: N"),
    ("model_config_list { config { name: 'a' model_version_policy { specific { versions: '1' } } } }",
     "versions must be a int; received '1'"),
    ("model_config_list { config { name: 'a' model_version_policy { all { x: 1 } } } }",
     "unknown field 'x' in all (fields: none)"),
    ("model_config_list { config { name: 'a' version_labels { key: 'stable' } } }",
     "version_labels needs a key and a value"),
    ("model_config_list { config { name: 'a' version_labels { key: 'a b' value: 1 } } }", "label must be"),
    ("model_config_list { config { name: 'a' version_labels { key: 's' value: 1 } version_labels { key: 's' "
     "value: 2 } } }", "label 's' is given twice for model 'a'"),
    ("model_config_list { config { name: 'a' model_version_policy { specific { versions: 1 } } "
     "version_labels { key: 'canary' value: 2 } } }",
     "label 'canary' points at version 2, which the policy specific:1 does not serve"),
    ("model_config_list { config { name: 'a' } } model_config_list {}", "model_config_list is given twice"),
    ("custom_model_config {}", "unknown field 'custom_model_config' in the file"),
    ("model_config_list { config { name: 'a' @ } }", "unexpected character '@'"),
    ("model_config_list { config { name: 'unterminated } }", "unexpected character \"'\""),
    ("model_config_list < config { name: 'a' } >", "unexpected character '<'"),
])
def test_bad_files_are_refused_with_the_line(text, message):
    with pytest.raises(ConfigFileError) as caught:
        parse_model_config(text, "serving.conf")
    assert str(caught.value).startswith("serving.conf:") and message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)  # one line


def test_reading_a_file(tmp_path):
    path = tmp_path / "serving.conf"
    path.write_text(TF_SERVING_EXAMPLE, encoding="utf-8")
    assert [m.name for m in read_model_config(path)] == ["my_first_model", "my_second_model", "third", "fourth"]
    with pytest.raises(ConfigFileError, match="cannot read the model config file"):
        read_model_config(tmp_path / "missing.config")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigFileError, match="cannot read the model config file"):
        read_model_config(path)


def test_the_service_config_checks_the_file_and_refuses_two_sources_of_versions(tmp_path):
    path = tmp_path / "serving.conf"
    path.write_text("model_config_list { config { name: 'a' } }", encoding="utf-8")
    assert ServingSettings.from_env({"IMGCLF_MODEL_CONFIG_FILE": str(path)}).model_config_file == str(path)
    path.write_text("model_config_list { config { name: 'a' }", encoding="utf-8")
    with pytest.raises(UsageError, match=r"serving.conf:1: unexpected end of file"):
        ServingSettings.from_env({"IMGCLF_MODEL_CONFIG_FILE": str(path)})
    path.write_text("model_config_list { config { name: 'a' } }", encoding="utf-8")
    for extra in ({"IMGCLF_VERSION_POLICY": "all"}, {"IMGCLF_MODEL_VERSIONS": "a=1"}):
        with pytest.raises(UsageError, match="leave IMGCLF_VERSION_POLICY and IMGCLF_MODEL_VERSIONS unset"):
            ServingSettings.from_env({"IMGCLF_MODEL_CONFIG_FILE": str(path), **extra})


def test_serve_checks_the_model_config_file_before_it_execs_gunicorn(tmp_path, monkeypatch, capsys):
    from imgclf.core import export_names
    from imgclf.service.cli import serve as serve_cli
    from imgclf.service.cli.main import main

    model_repo = tmp_path / "models"
    for required in export_names.REQUIRED_FILES:  # a version as `imgclf serve` looks for one (never loaded here)
        (model_repo / "shapes" / "1").mkdir(parents=True, exist_ok=True)
        (model_repo / "shapes" / "1" / required).write_text("{}")

    calls = []
    monkeypatch.setattr(serve_cli.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setenv("IMGCLF_MODEL_CONFIG_FILE", "")  # empty = unset; `imgclf serve` sets it, teardown unsets it
    path = tmp_path / "serving.conf"
    path.write_text("model_config_list {\n  config { name: 'shapes' bogus: 1 }\n}\n", encoding="utf-8")
    assert main(["serve", "--model-dir", str(model_repo), "--model-config-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgclf serve: error: ") and err.count("\n") == 1 and calls == []
    assert f"{path}:2: unknown field 'bogus' in config" in err
