"""The one reader of ``IMGCLF_*`` environment variables, with typed parsers and one boolean parser.

Every ``IMGCLF_*`` read in imgclf goes through this module, so each kind of value
is spelled the same way everywhere:

* surrounding spaces are stripped; an unset or empty variable means its default;
* booleans are ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``
  (any case); anything else (``IMGCLF_ACCESS_LOG=2``, ``IMGCLF_BATCHING=maybe``)
  is an error, not a silent "no";
* numbers are checked against their bounds; choices against their list;
* a bad value raises :class:`imgclf.core.errors.UsageError` (exit status 2) naming
  the variable, the value received and what is accepted.

It imports only the standard library (and :mod:`imgclf.core.errors`): the gunicorn
master reads its settings through it and must stay free of TensorFlow and Flask.

The variables and who reads them (the README's configuration table is the user's list):

    IMGCLF_HOME                 path      core.paths: downloads, MNIST, demo files
    IMGCLF_DEVICE               str       core.devices (parsed there: /gpu:N, /cpu:0)
    IMGCLF_GPU_MEMORY_LIMIT_MB  int >= 1  core.devices (unset: memory growth)
    IMGCLF_LOG_DEVICE_PLACEMENT bool      core.devices
    IMGCLF_ALLOW_UNSAFE_OPS     bool      core.op_policy, service.config
    IMGCLF_FONT                 str       service.config, service.annotate, training.metrics
    IMGCLF_MODEL_REPOSITORY     path      service.config, `imgclf models train`
    IMGCLF_CPU_DEVICES          int >= 1  the secondary models' tf.distribute setup
    IMGCLF_MODEL_VERSIONS       name=int,...  service.config
    IMGCLF_API_KEY              str       `imgclf predict --url`: the key it sends (Authorization: Bearer)
    IMGCLF_POLL_SECONDS         float 0..86400  service.config (model lifecycle; 0: no polling)
    IMGCLF_VERSION_POLICY       latest[:N] | all | specific:V,...  service.config (service.version_policy)
    IMGCLF_MODEL_CONFIG_FILE    str (a file)  service.config (service.model_config_file)
    IMGCLF_BACKEND              choice    service.config (card|tensorflow|openvino|auto; training.serving_backend)
    IMGCLF_<FIELD>              by type   the other fields of service.config.ServiceConfig
    IMGCLF_BIND, _WORKERS, _THREADS, _TIMEOUT, _GRACEFUL_TIMEOUT, _LOG_LEVEL, _ACCESS_LOG,
    _MALLOC_TRIM_SECONDS                  service.serve_cli.ServerSettings (gunicorn)
    IMGCLF_FRONT, _HEADER_TIMEOUT, _BODY_TIMEOUT, _MIN_BODY_RATE, _KEEPALIVE_TIMEOUT, _MAX_CONNECTIONS,
    _MAX_CLIENT_CONNECTIONS, _MAX_HEADER_BYTES, _MAX_BUFFERED_BYTES (and _MAX_UPLOAD_BYTES)
                                          service.front.FrontSettings
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

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


def _one_of(choices: Sequence[str]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"one of {', '.join(quoted[:-1])} or {quoted[-1]}"


__all__ = [
    "ENV_CPU_DEVICES", "ENV_FONT", "ENV_HOME", "ENV_MODEL_REPOSITORY", "FALSE_WORDS", "PREFIX", "TRUE_WORDS",
    "check_range", "env_bool", "env_choice", "env_float", "env_int", "env_path", "env_str", "env_versions",
    "parse_bool", "parse_choice", "parse_float", "parse_int", "parse_path", "parse_versions", "raw_value",
]
