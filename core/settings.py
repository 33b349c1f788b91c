"""The one reader of ``IMGCLF_*`` environment variables: typed parsers, and typed sections of settings.

Every ``IMGCLF_*`` read in imgclf goes through this module, so each kind of value
is spelled the same way everywhere:

* surrounding spaces are stripped; an unset or empty variable means its default;
* booleans are ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``
  (any case); anything else (``IMGCLF_ACCESS_LOG=2``, ``IMGCLF_BATCHING=maybe``)
  is an error, not a silent "no";
* numbers are checked against their bounds; choices against their list;
* a bad value raises :class:`imgclf.core.errors.UsageError` (exit status 2) naming
  the variable, the value received and what is accepted.

Settings are declared, not read by hand: a *section* is a dataclass deriving from
:class:`Section` whose fields are made by :func:`setting` (a default, a one-line
help, bounds or choices). Its variable is ``IMGCLF_<FIELD NAME>`` unless the field
states another (``env=``); :meth:`Section.from_env` reads and checks them all, and
:func:`describe` lists them (name, variable, type, default, help) for the
configuration reference. The sections: :class:`imgclf.core.devices.DeviceSettings`,
:class:`imgclf.core.paths.PathSettings`, and the service's tree
(:mod:`imgclf.service.settings`), which composes its own with these.

It imports only the standard library (and :mod:`imgclf.core.errors`): the gunicorn
master and the front read their sections through it and must stay free of
TensorFlow, Flask and numpy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from imgclf.core.errors import UsageError

PREFIX = "IMGCLF_"
ENV_HOME = "IMGCLF_HOME"
ENV_FONT = "IMGCLF_FONT"
ENV_MODEL_REPOSITORY = "IMGCLF_MODEL_REPOSITORY"
ENV_CPU_DEVICES = "IMGCLF_CPU_DEVICES"

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

Env = Mapping[str, str]
T = TypeVar("T")
S = TypeVar("S", bound="Section")


# --- parsers: one raw string (already stripped, not empty) -> a typed value -------------------------------

def parse_bool(name: str, raw: str) -> bool:
    """Return ``raw`` as a boolean, or raise UsageError naming ``name``, ``raw`` and the accepted spellings."""
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise UsageError(f"{name}={raw!r} is not a yes or a no: use {'/'.join(TRUE_WORDS)} or "
                     f"{'/'.join(FALSE_WORDS)} (any case; empty or unset = the default)")


def parse_int(name: str, raw: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``raw`` as an integer within the bounds, or raise UsageError."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a valid int (a whole number)") from None
    return check_range(name, value, minimum, maximum)


def parse_float(name: str, raw: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """Return ``raw`` as a finite float within the bounds, or raise UsageError."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a valid float (a number)") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{name} must be a finite number; received {raw!r}")
    return check_range(name, value, minimum, maximum)


def parse_choice(name: str, raw: str, choices: Sequence[str]) -> str:
    """Return the entry of ``choices`` that ``raw`` names (any case), or raise UsageError listing them."""
    word = raw.strip().lower()
    for choice in choices:
        if choice.lower() == word:
            return choice
    raise UsageError(f"{name} must be {_one_of(choices)}; received {raw!r}")


def parse_path(name: str, raw: str) -> Path:
    """Return ``raw`` as a path, ``~`` expanded."""
    return Path(raw.strip()).expanduser()


def parse_versions(name: str, raw: str) -> dict[str, int]:
    """Return ``"flowers=3, pets=1"`` as ``{"flowers": 3, "pets": 1}``, or raise UsageError."""
    versions: dict[str, int] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError(item)
            versions[key.strip()] = int(value)
        except ValueError:
            raise UsageError(f"{name}={raw!r} is not a list of name=version pairs (e.g. flowers=3,pets=1); "
                             f"{item.strip()!r} is not one") from None
    return versions


def check_range(name: str, value: T, minimum: T | None = None, maximum: T | None = None) -> T:
    """Return ``value`` if it lies within the bounds (None = open), else raise UsageError naming ``name``."""
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise UsageError(f"{name} must be between {minimum} and {maximum}; received {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be at least {minimum}; received {value!r}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be at most {maximum}; received {value!r}")
    return value


# --- readers: a variable of ``env`` (default: the process environment) -> a typed value or the default ----

def raw_value(name: str, env: Env | None = None) -> str | None:
    """Return the variable ``name`` with surrounding spaces stripped, or None when it is unset or empty."""
    raw = (os.environ if env is None else env).get(name)
    if raw is None or not raw.strip():
        return None
    return raw.strip()


def env_str(name: str, default: str = "", env: Env | None = None) -> str:
    """Return the variable as a string, or ``default`` when unset or empty."""
    raw = raw_value(name, env)
    return default if raw is None else raw


def env_bool(name: str, default: bool = False, env: Env | None = None) -> bool:
    """Return the variable as a boolean (:func:`parse_bool`), or ``default`` when unset or empty."""
    raw = raw_value(name, env)
    return default if raw is None else parse_bool(name, raw)


def env_int(name: str, default: T, minimum: int | None = None, maximum: int | None = None,
            env: Env | None = None) -> int | T:
    """Return the variable as an integer within the bounds, or ``default`` (unchecked) when unset or empty."""
    raw = raw_value(name, env)
    return default if raw is None else parse_int(name, raw, minimum, maximum)


def env_float(name: str, default: T, minimum: float | None = None, maximum: float | None = None,
              env: Env | None = None) -> float | T:
    """Return the variable as a float within the bounds, or ``default`` (unchecked) when unset or empty."""
    raw = raw_value(name, env)
    return default if raw is None else parse_float(name, raw, minimum, maximum)


def env_choice(name: str, choices: Sequence[str], default: str, env: Env | None = None) -> str:
    """Return the entry of ``choices`` the variable names (any case), or ``default`` when unset or empty."""
    raw = raw_value(name, env)
    return default if raw is None else parse_choice(name, raw, choices)


def env_path(name: str, default: T = None, env: Env | None = None) -> Path | T:
    """Return the variable as a path (``~`` expanded), or ``default`` when unset or empty."""
    raw = raw_value(name, env)
    return default if raw is None else parse_path(name, raw)


def env_versions(name: str, env: Env | None = None) -> dict[str, int]:
    """Return the variable as a ``name=version,...`` mapping (:func:`parse_versions`); {} when unset or empty."""
    raw = raw_value(name, env)
    return {} if raw is None else parse_versions(name, raw)


# --- sections: dataclasses of settings, one variable per field --------------------------------------------

class SettingInfo(NamedTuple):
    """One setting as the configuration reference lists it."""

    section: str  # the tree's name of its section ("serving", "front", ...); "" for a lone section
    name: str  # the field's name
    env: str  # its variable
    type: str  # as annotated: "int", "bool", "Path", ...
    default: Any  # the value when the variable is unset or empty
    help: str  # one line


def setting(default: Any, help: str, *, env: str | None = None, minimum: Any = None, maximum: Any = None,
            choices: Sequence[str] | None = None, parse: Callable[[str, str], Any] | None = None,
            secret: bool = False) -> Any:
    """Return a dataclass field for one setting: its default, its one-line help, and how its variable is read.

    Args:
        default: the value when the variable is unset or empty (a dict, list or set is copied per instance).
        help: one line for the configuration reference.
        env: the variable, where it is not ``IMGCLF_<FIELD NAME>``.
        minimum, maximum: bounds of a number, checked on every value given (never on the default).
        choices: the accepted words of a string (any case in the environment).
        parse: ``parse(variable, raw) -> value`` where the annotation alone does not say how to read it.
        secret: keep the value out of the section's repr (and so out of logs).
    """
    if not help.strip() or "\n" in help:
        raise ValueError(f"a setting's help is one line; received {help!r}")
    metadata = {"help": help, "env": env, "minimum": minimum, "maximum": maximum,
                "choices": tuple(choices) if choices else None, "parse": parse}
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), repr=not secret, metadata=metadata)
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


def parsed(default: Any = None) -> Any:
    """Return a dataclass field for a value :meth:`Section.from_values` parses from settings (a file's content)."""
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), repr=False, compare=False,
                                 metadata={"parsed": True})
    return dataclasses.field(default=default, repr=False, compare=False, metadata={"parsed": True})


def is_setting(f: dataclasses.Field) -> bool:
    """Return whether field ``f`` is a setting (made by :func:`setting`), not a parsed or internal value."""
    return "help" in f.metadata


def env_name(f: dataclasses.Field) -> str:
    """Return the variable of setting ``f``: the one it states, else ``IMGCLF_<FIELD NAME>``."""
    return f.metadata.get("env") or PREFIX + f.name.upper()


def type_name(f: dataclasses.Field) -> str:
    """Return the type of field ``f`` as annotated ("int", "Path", "dict[str, int]")."""
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _as_str(name: str, raw: str) -> str:
    return raw


# Annotated type -> the parser of its variable; other types name theirs (``setting(parse=...)``).
_TYPE_PARSERS = {"str": _as_str, "bool": parse_bool, "int": parse_int, "float": parse_float, "Path": parse_path}


def parser(f: dataclasses.Field) -> Callable[[str, str], Any]:
    """Return ``parse(variable, raw)`` of setting ``f``: its own, its choices', else its type's."""
    meta = f.metadata
    if meta["parse"] is not None:
        return meta["parse"]
    if meta["choices"]:
        return lambda name, raw: parse_choice(name, raw, meta["choices"])
    try:
        return _TYPE_PARSERS[type_name(f)]
    except KeyError:
        raise TypeError(f"setting {f.name!r} of type {type_name(f)} needs parse=") from None


def check_setting(f: dataclasses.Field, value: Any) -> Any:
    """Return ``value`` given for setting ``f`` (a number as its type); raise UsageError if out of bounds or choices."""
    meta, name = f.metadata, env_name(f)
    kind = type_name(f)
    if kind in ("int", "float") and not isinstance(value, bool):
        value = int(value) if kind == "int" else float(value)
    if meta["minimum"] is not None or meta["maximum"] is not None:
        check_range(name, value, meta["minimum"], meta["maximum"])
    if meta["choices"] and value not in meta["choices"]:
        raise UsageError(f"{name} must be {_one_of(meta['choices'])}; received {value!r}")
    return value


def read_values(cls: type, env: Env | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the values of section ``cls`` that are given: its variables in ``env``, then ``overrides``, checked.

    Raises:
        UsageError: a variable or override is malformed or out of bounds (naming the variable).
        TypeError: an override names no field of ``cls``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides or ()) - set(fields))
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(map(repr, unknown))}")
    values = {}
    for f in fields.values():
        raw = raw_value(env_name(f), env) if is_setting(f) else None
        if raw is not None:
            values[f.name] = parser(f)(env_name(f), raw)
    values.update(overrides or {})
    return {key: check_setting(fields[key], value) if is_setting(fields[key]) else value
            for key, value in values.items()}


def read_setting(cls: type, name: str, env: Env | None = None) -> Any:
    """Return setting ``name`` of section ``cls``: its variable in ``env``, checked, else its default.

    For a command that needs one value before the whole section (whose other settings may name files).
    """
    f = next(f for f in dataclasses.fields(cls) if f.name == name and is_setting(f))
    raw = raw_value(env_name(f), env)
    if raw is None:
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return check_setting(f, parser(f)(env_name(f), raw))


def describe(cls: type, section: str = "") -> Iterator[SettingInfo]:
    """Yield every setting of section ``cls``: name, variable, type, default and help, in field order."""
    for f in dataclasses.fields(cls):
        if is_setting(f):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield SettingInfo(section, f.name, env_name(f), type_name(f), default, f.metadata["help"])


class Section:
    """Base of a dataclass of settings: :meth:`from_env` reads and checks its variables.

    A section that checks settings together, or parses what they name (a file) once, overrides
    :meth:`from_values`.
    """

    @classmethod
    def from_env(cls: type[S], env: Env | None = None, **overrides: Any) -> S:
        """Return the section: defaults, then its variables in ``env`` (default: os.environ), then ``overrides``.

        Raises:
            UsageError: a value is malformed, out of range or at odds with another (naming the variable).
            TypeError: an override names no field of this section.
        """
        return cls.from_values(read_values(cls, env, overrides))

    @classmethod
    def from_values(cls: type[S], values: dict[str, Any]) -> S:
        """Return the section of checked ``values`` (field name -> value; the others take their defaults)."""
        return cls(**values)


def _one_of(choices: Sequence[str]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"one of {', '.join(quoted[:-1])} or {quoted[-1]}"


__all__ = [
    "ENV_CPU_DEVICES", "ENV_FONT", "ENV_HOME", "ENV_MODEL_REPOSITORY", "Env", "FALSE_WORDS", "PREFIX", "TRUE_WORDS",
    "Section", "SettingInfo", "check_range", "check_setting", "describe", "env_bool", "env_choice", "env_float",
    "env_int", "env_name", "env_path", "env_str", "env_versions", "is_setting", "parse_bool", "parse_choice",
    "parse_float", "parse_int", "parse_path", "parse_versions", "parsed", "parser", "raw_value", "read_setting",
    "read_values", "setting", "type_name",
]
