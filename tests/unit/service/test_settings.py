"""The settings tree: every variable imgclf reads is in it, typed, defaulted and described; bad values are named."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.core import settings as core_settings
from imgclf.core.errors import UsageError
from imgclf.service import settings as service_settings
from imgclf.service.settings import SECTIONS, ServingSettings, Settings, iter_settings

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("core", "featurizer", "training", "models", "service")
NAME = re.compile(r"IMGCLF_[A-Z0-9_]*[A-Z0-9]")
# Variables the code reads that are no setting of a user's: why each is left out of the tree.
INTERNAL = {
    "IMGCLF_WORKER_STATE_DIR": "set by the gunicorn master for its own workers (service.server.worker_states)",
    "IMGCLF_FRONT_CHANNEL": "set by the front for the gunicorn it starts: its workers serve the front's channel",
}
# A value of each variable its section refuses (beyond the ones its type refuses), or None: any string is valid.
BAD_STRINGS = {
    "IMGCLF_DEFAULT_MODEL": None,  # checked against the served models when they are planned
    "IMGCLF_FONT": "/no/such/font.ttf",
    "IMGCLF_PRECISION": "fp8",
    "IMGCLF_BACKEND": "onnx",
    "IMGCLF_EVENT_LOOP": "epoll",
    "IMGCLF_ALLOWED_HOSTS": "https://api.example.com/",
    "IMGCLF_VERSION_POLICY": "sometimes",
    "IMGCLF_MODEL_CONFIG_FILE": "/no/such/serving.conf",
    "IMGCLF_API_KEYS_FILE": "/no/such/keys",
    "IMGCLF_METRICS_KEYS": "prometheus",  # names keys, but there is no keys file
    "IMGCLF_RATE_LIMIT": "5/fortnight",
    "IMGCLF_CORS_ORIGINS": "ftp://a.example",
    "IMGCLF_BIND": None,
    "IMGCLF_GRPC_BIND": "localhost",  # gunicorn takes more forms (fd://); `imgclf serve` checks it for the front
    "IMGCLF_LOG_LEVEL": "loud",
    "IMGCLF_DEVICE": "/tpu:0",
    "IMGCLF_API_KEY": None,
}
BAD_BY_TYPE = {"int": "many", "float": "soon", "bool": "maybe", "dict": "flowers"}


def _sources() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
            for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))}


def names_in_the_code() -> dict[str, set[str]]:
    """Return each IMGCLF_* name the source mentions, with the files it is in (``{ENV_PREFIX}X`` counted too)."""
    found: dict[str, set[str]] = {}
    for path, text in _sources().items():
        text = re.sub(r"\{(?:ENV_)?PREFIX\}", "IMGCLF_", text)  # f"{ENV_PREFIX}PRECISION"
        for name in NAME.findall(text):
            found.setdefault(name, set()).add(path)
    return found


SETTINGS = list(iter_settings())
BY_ENV = {s.env: s for s in SETTINGS}


def test_every_variable_the_code_reads_is_in_the_tree():
    names = names_in_the_code()
    assert len(names) > 40  # the scan sees the code
    missing = {name: sorted(paths) for name, paths in names.items() if name not in BY_ENV and name not in INTERNAL}
    assert not missing, f"IMGCLF_* names outside the settings tree: {missing}"


def test_names_are_generated_from_field_names_in_the_settings_module_only():
    generated = re.compile(r"(?<!\w)(?:ENV_)?PREFIX\s*\+|\{(?:ENV_)?PREFIX\}\{")
    where = sorted(path for path, text in _sources().items() if generated.search(text))
    assert where == ["core/settings.py"], where  # env_name(): IMGCLF_<FIELD NAME>, for every section of the tree


def test_each_variable_is_one_setting_of_one_section():
    envs = [s.env for s in SETTINGS]
    assert len(envs) == len(set(envs)), sorted(e for e in envs if envs.count(e) > 1)
    assert BY_ENV["IMGCLF_MAX_UPLOAD_BYTES"].section == "server"  # the front and the app read it there


@pytest.mark.parametrize("info", SETTINGS, ids=[s.env for s in SETTINGS])
def test_every_setting_has_a_type_a_default_and_one_line_of_help(info):
    assert info.type in ("str", "int", "float", "bool", "Path", "dict"), info
    expected = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path, "dict": dict}[info.type]
    assert isinstance(info.default, expected) and not (expected is int and isinstance(info.default, bool)), info
    assert info.help.strip() and "\n" not in info.help and len(info.help) <= 160, info
    assert info.env == core_settings.PREFIX + info.name.upper() or info.env in (
        "IMGCLF_FRONT", "IMGCLF_DEVICE", "IMGCLF_CPU_DEVICES", "IMGCLF_HOME"), info  # the rule, or stated


def test_every_field_of_a_section_is_a_setting_or_says_what_else_it_is():
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            assert core_settings.is_setting(f) or f.metadata.get("parsed") or f.name == "body_rate_grace", (name, f)


def test_field_names_are_unique_across_the_tree():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))  # so create_app({"poll_seconds": 0, ...}) finds each one's section


def _bad_value(info):
    """Return a value the setting refuses, or None for one that takes any value (a path, a free string)."""
    if info.type == "Path":
        return None
    return BAD_BY_TYPE.get(info.type) if info.type != "str" else BAD_STRINGS[info.env]


REFUSING = [s for s in SETTINGS if _bad_value(s) is not None]  # the others take any value: nothing to refuse


@pytest.mark.parametrize("info", REFUSING, ids=[s.env for s in REFUSING])
def test_each_section_refuses_a_bad_value_with_an_error_naming_the_variable(info, tmp_path):
    bad = _bad_value(info)
    with pytest.raises(UsageError, match=re.escape(info.env)):
        SECTIONS[info.section].from_env({info.env: bad})
    with pytest.raises(UsageError, match=re.escape(info.env)):
        Settings.from_env({info.env: bad})


def test_every_string_setting_says_which_values_it_refuses():
    strings = {s.env for s in SETTINGS if s.type == "str"}
    assert strings == set(BAD_STRINGS), strings ^ set(BAD_STRINGS)


def test_defaults_then_environment_then_overrides_by_flat_name(tmp_path):
    env = {"IMGCLF_TOP_K": "3", "IMGCLF_WORKERS": "4", "IMGCLF_HEADER_TIMEOUT": "2.5", "IMGCLF_POLL_SECONDS": "9"}
    tree = Settings.from_env(env, top_k=7, poll_seconds=0, model_repository=str(tmp_path), cors_origins="*",
                             max_upload_bytes=1000)
    assert (tree.serving.top_k, tree.serving.poll_seconds, tree.serving.model_repository) == (7, 0.0, tmp_path)
    assert (tree.server.workers, tree.server.max_upload_bytes, tree.front.header_timeout) == (4, 1000, 2.5)
    assert tree.access.origins == {"*"}
    assert Settings.from_env({}) == Settings()
    with pytest.raises(TypeError, match="no setting is called 'top_kk'"):
        Settings.from_env({}, top_kk=3)
    with pytest.raises(UsageError, match="IMGCLF_TOP_K must be at least 1; received 0"):
        Settings.from_env({}, top_k=0)


def test_the_serving_section_reads_its_own_variables():
    assert ServingSettings.from_env({"IMGCLF_TOP_K": "2"}).top_k == 2


def test_the_model_config_file_is_read_once(tmp_path, monkeypatch):
    from imgclf.service.lifecycle.plan import plan_models

    (tmp_path / "flowers" / "1").mkdir(parents=True)
    path = tmp_path / "serving.conf"
    path.write_text('model_config_list { config { name: "flowers" base_path: "flowers" } }\n')
    reads = []
    real = service_settings.read_model_config
    monkeypatch.setattr(service_settings, "read_model_config", lambda p: reads.append(p) or real(p))
    serving = Settings.from_env({"IMGCLF_MODEL_CONFIG_FILE": str(path)}, model_repository=tmp_path).serving
    assert [m.name for m in serving.model_config] == ["flowers"]
    assert list(plan_models(serving)) == ["flowers"] and list(plan_models(serving)) == ["flowers"]
    assert reads == [str(path)]


def test_a_secret_stays_out_of_the_repr():
    tree = Settings.from_env({"IMGCLF_API_KEY": "imgclf_secret"})
    assert tree.client.api_key == "imgclf_secret" and "imgclf_secret" not in repr(tree)


@pytest.mark.parametrize("module", ["imgclf.service.settings", "imgclf.service.front.main",
                                    "imgclf.service.server.settings", "imgclf.service.cli.serve"])
def test_the_tree_and_the_processes_that_read_it_import_no_flask(module):
    # The front and the gunicorn master import only their sections: no numpy either (nor TensorFlow).
    code = (f"import sys, json; import {module}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'flask', 'werkzeug', 'tensorflow', 'numpy', 'PIL'})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = set(json.loads(done.stdout))
    assert not heavy & {"flask", "werkzeug", "tensorflow"}
    if module in ("imgclf.service.front.main", "imgclf.service.server.settings"):
        assert not heavy, heavy
