"""The one reader of IMGCLF_* variables: typed parsers, one boolean parser, errors that name what was received."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgclf.core import settings
from imgclf.core.errors import EXIT_USAGE, UsageError, exit_status


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "Yes", " on ", "oN"])
def test_true_spellings(raw):
    assert settings.env_bool("IMGCLF_X", default=False, env={"IMGCLF_X": raw}) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "NO", " off", "OFF "])
def test_false_spellings(raw):
    assert settings.env_bool("IMGCLF_X", default=True, env={"IMGCLF_X": raw}) is False


@pytest.mark.parametrize("env", [{}, {"IMGCLF_X": ""}, {"IMGCLF_X": "   "}])
@pytest.mark.parametrize("default", [True, False])
def test_unset_or_empty_boolean_is_the_default(env, default):
    assert settings.env_bool("IMGCLF_X", default=default, env=env) is default


@pytest.mark.parametrize("raw", ["2", "maybe", "y", "n", "enabled", "-1", "1.0", "truee"])
def test_any_other_boolean_is_an_error_naming_variable_value_and_spellings(raw):
    with pytest.raises(UsageError) as info:
        settings.env_bool("IMGCLF_ACCESS_LOG", env={"IMGCLF_ACCESS_LOG": raw})
    message = str(info.value)
    assert message.startswith(f"IMGCLF_ACCESS_LOG={raw!r} is not a yes or a no")
    assert "1/true/yes/on" in message and "0/false/no/off" in message
    assert isinstance(info.value, ValueError) and exit_status(info.value) == EXIT_USAGE


def test_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("IMGCLF_TEST_SETTING", " 42 ")
    assert settings.env_int("IMGCLF_TEST_SETTING", 0) == 42
    assert settings.env_str("IMGCLF_TEST_SETTING") == "42"
    monkeypatch.delenv("IMGCLF_TEST_SETTING")
    assert settings.env_int("IMGCLF_TEST_SETTING", 7) == 7 and settings.raw_value("IMGCLF_TEST_SETTING") is None


@pytest.mark.parametrize("raw, minimum, maximum, message", [
    ("many", None, None, r"IMGCLF_N='many' is not a valid int \(a whole number\)"),
    ("2.5", None, None, r"IMGCLF_N='2.5' is not a valid int \(a whole number\)"),
    ("0", 1, None, r"IMGCLF_N must be at least 1; received 0"),
    ("11", None, 10, r"IMGCLF_N must be at most 10; received 11"),
    ("-1", 0, 10, r"IMGCLF_N must be between 0 and 10; received -1"),
])
def test_bad_ints(raw, minimum, maximum, message):
    with pytest.raises(UsageError, match=f"^{message}$"):
        settings.env_int("IMGCLF_N", 5, minimum=minimum, maximum=maximum, env={"IMGCLF_N": raw})


def test_ints_within_bounds_and_an_unchecked_default():
    assert settings.env_int("IMGCLF_N", 5, minimum=0, maximum=10, env={"IMGCLF_N": "0"}) == 0
    assert settings.env_int("IMGCLF_N", 10, minimum=0, maximum=10, env={"IMGCLF_N": "10"}) == 10
    assert settings.env_int("IMGCLF_N", None, minimum=1, env={}) is None  # "unset" may be its own meaning


@pytest.mark.parametrize("raw, message", [
    ("fast", r"IMGCLF_F='fast' is not a valid float"),
    ("inf", r"IMGCLF_F must be a finite number; received 'inf'"),
    ("nan", r"IMGCLF_F must be a finite number; received 'nan'"),
    ("-0.5", r"IMGCLF_F must be between 0 and 1; received -0.5"),
])
def test_bad_floats(raw, message):
    with pytest.raises(UsageError, match=message):
        settings.env_float("IMGCLF_F", 0.5, minimum=0, maximum=1, env={"IMGCLF_F": raw})


def test_floats():
    assert settings.env_float("IMGCLF_F", 0.5, minimum=0, maximum=1, env={"IMGCLF_F": " 0.25"}) == 0.25
    assert settings.env_float("IMGCLF_F", 0.5, env={}) == 0.5


def test_choices_any_case_and_the_error_lists_them():
    assert settings.env_choice("IMGCLF_C", ("debug", "info"), "info", env={"IMGCLF_C": "DEBUG"}) == "debug"
    assert settings.env_choice("IMGCLF_C", ("debug", "info"), "info", env={}) == "info"
    with pytest.raises(UsageError, match=r"^IMGCLF_C must be one of 'debug' or 'info'; received 'loud'$"):
        settings.env_choice("IMGCLF_C", ("debug", "info"), "info", env={"IMGCLF_C": "loud"})


def test_paths_expand_the_home_directory():
    assert settings.env_path("IMGCLF_P", env={"IMGCLF_P": "~/x"}) == Path.home() / "x"
    assert settings.env_path("IMGCLF_P", env={"IMGCLF_P": ""}) is None
    assert settings.env_path("IMGCLF_P", Path("d"), env={}) == Path("d")


@pytest.mark.parametrize("raw, expected", [
    ("flowers=3,pets=1", {"flowers": 3, "pets": 1}),
    (" a = 2 , b=5, ", {"a": 2, "b": 5}),
    ("", {}),
])
def test_version_mappings(raw, expected):
    assert settings.env_versions("IMGCLF_MODEL_VERSIONS", env={"IMGCLF_MODEL_VERSIONS": raw}) == expected


@pytest.mark.parametrize("raw, item", [("flowers", "flowers"), ("a=1,b=x", "b=x"), ("=3", "=3"), ("a=", "a=")])
def test_bad_version_mappings_name_the_bad_item(raw, item):
    with pytest.raises(UsageError, match=rf"IMGCLF_MODEL_VERSIONS={raw!r} is not a list of name=version pairs "
                                         rf"\(e.g. flowers=3,pets=1\); {item!r} is not one"):
        settings.env_versions("IMGCLF_MODEL_VERSIONS", env={"IMGCLF_MODEL_VERSIONS": raw})


@dataclass(frozen=True)
class Knobs(settings.Section):
    """A section of every kind of setting, for the tests below."""

    size: int = settings.setting(3, "how many", minimum=1, maximum=9)
    rate: float = settings.setting(0.5, "how fast", minimum=0)
    loud: bool = settings.setting(False, "whether to shout")
    level: str = settings.setting("info", "how much to say", choices=("debug", "info"))
    where: Path = settings.setting(Path("here"), "where to look")
    pins: dict = settings.setting({}, "pinned versions", env="IMGCLF_PINS", parse=settings.parse_versions)
    zero_default: int = settings.setting(0, "unset: off; set: at least 1", minimum=1)
    internal: float = 1.0  # not a setting: no variable


def test_a_section_reads_each_variable_by_its_type():
    env = {"IMGCLF_SIZE": "4", "IMGCLF_RATE": " 2.5", "IMGCLF_LOUD": "yes", "IMGCLF_LEVEL": "DEBUG",
           "IMGCLF_WHERE": "~/x", "IMGCLF_PINS": "a=2", "IMGCLF_INTERNAL": "7"}
    knobs = Knobs.from_env(env)
    assert knobs == Knobs(4, 2.5, True, "debug", Path.home() / "x", {"a": 2})
    assert Knobs.from_env({}) == Knobs() and Knobs.from_env({}, size=5).size == 5
    assert Knobs().pins is not Knobs().pins  # a mutable default is copied


@pytest.mark.parametrize("env, overrides, message", [
    ({"IMGCLF_SIZE": "x"}, {}, "IMGCLF_SIZE='x' is not a valid int"),
    ({"IMGCLF_SIZE": "10"}, {}, "IMGCLF_SIZE must be between 1 and 9; received 10"),
    ({}, {"size": 0}, "IMGCLF_SIZE must be between 1 and 9; received 0"),  # overrides are checked too
    ({"IMGCLF_RATE": "-1"}, {}, "IMGCLF_RATE must be at least 0; received -1.0"),
    ({"IMGCLF_LOUD": "2"}, {}, "IMGCLF_LOUD='2' is not a yes or a no"),
    ({"IMGCLF_LEVEL": "loud"}, {}, "IMGCLF_LEVEL must be one of 'debug' or 'info'; received 'loud'"),
    ({}, {"level": "loud"}, "IMGCLF_LEVEL must be one of 'debug' or 'info'; received 'loud'"),
    ({"IMGCLF_PINS": "a"}, {}, "IMGCLF_PINS='a' is not a list of name=version pairs"),
    ({"IMGCLF_ZERO_DEFAULT": "0"}, {}, "IMGCLF_ZERO_DEFAULT must be at least 1; received 0"),
])
def test_a_bad_value_is_one_error_naming_the_variable(env, overrides, message):
    with pytest.raises(UsageError, match=message):
        Knobs.from_env(env, **overrides)


def test_the_default_is_not_checked_and_an_unknown_override_is_a_type_error():
    assert Knobs.from_env({}).zero_default == 0
    with pytest.raises(TypeError, match="Knobs has no setting 'sise'"):
        Knobs.from_env({}, sise=3)


def test_describe_lists_every_setting_with_its_variable_type_default_and_help():
    listed = list(settings.describe(Knobs, "knobs"))
    assert [s.name for s in listed] == ["size", "rate", "loud", "level", "where", "pins", "zero_default"]
    assert listed[0] == settings.SettingInfo("knobs", "size", "IMGCLF_SIZE", "int", 3, "how many")
    assert (listed[5].env, listed[5].type, listed[5].default) == ("IMGCLF_PINS", "dict", {})


@pytest.mark.parametrize("help_text", ["", "two\nlines"])
def test_a_setting_has_one_line_of_help(help_text):
    with pytest.raises(ValueError, match="one line"):
        settings.setting(1, help_text)


def test_imgclf_home_goes_through_the_reader(monkeypatch, tmp_path):
    from imgclf.core.paths import imgclf_home, inception_dir

    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path))
    assert imgclf_home() == tmp_path and inception_dir() == tmp_path / "inception"
    monkeypatch.setenv("IMGCLF_HOME", " ")
    assert imgclf_home() == Path.home() / ".cache" / "imgclf"


def test_allow_unsafe_ops_uses_the_one_boolean_parser():
    from imgclf.core.op_policy import allow_unsafe_ops_from_env

    assert allow_unsafe_ops_from_env({"IMGCLF_ALLOW_UNSAFE_OPS": "Yes"}) is True
    assert allow_unsafe_ops_from_env({}) is False
    with pytest.raises(UsageError, match="IMGCLF_ALLOW_UNSAFE_OPS='2' is not a yes or a no"):
        allow_unsafe_ops_from_env({"IMGCLF_ALLOW_UNSAFE_OPS": "2"})


def test_importing_it_needs_only_the_standard_library():
    # The gunicorn master reads its settings through this module: no TensorFlow, Flask, numpy there.
    code = ("import sys; import imgclf.core.settings; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'flask', 'numpy', 'PIL')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
