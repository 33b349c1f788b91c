"""Read a model config file: TF Serving's ``model_config_list`` in protobuf text format, checked strictly.

The file ``imgclf serve --model-config-file FILE`` (or ``IMGCLF_MODEL_CONFIG_FILE``)
names the models to serve, as TF Serving's ``--model_config_file`` does::

    model_config_list {
      config {
        name: "flowers"
        base_path: "flowers"            # relative to the repository, or absolute; omitted: REPO/NAME
        model_platform: "tensorflow"    # accepted and ignored (the only platform)
        model_version_policy { latest { num_versions: 2 } }   # or all {}, or specific { versions: 1 versions: 3 }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

Only the models listed are served (as TF Serving does). The text format is the
protobuf one: ``field: value`` or ``field { ... }`` (a colon before ``{`` is
allowed), strings in single or double quotes with backslash escapes, ``#``
comments, optional ``,`` or ``;`` after a field. Anything else (an unknown
field, a value of the wrong type, a field given twice, a missing name, a label
that names a version a specific policy does not serve) is an error that names
the file and line; nothing is served from a file with an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.core.errors import UsageError
from imgclf.core.repository import validate_name
from imgclf.service.lifecycle.policy import ALL, LATEST, SPECIFIC, VersionPolicy

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?[0-9]+(?![A-Za-z0-9_.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}:,;])
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True)
class ModelConfig:
    """One ``config { ... }`` entry: a model to serve, where, which versions, and its version labels."""

    name: str
    base_path: Path | None = None  # None: REPO/NAME; relative paths are relative to the repository
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: dict[str, int] = field(default_factory=dict)

    def model_dir(self, repository: Path) -> Path:
        """Return the directory holding this model's integer versions."""
        if self.base_path is None:
            return Path(repository) / self.name
        return self.base_path if self.base_path.is_absolute() else Path(repository) / self.base_path


@dataclass
class _Token:
    kind: str  # string | number | ident | punct | end
    text: str
    line: int


@dataclass
class _Field:
    name: str
    line: int
    value: object  # a _Token (scalar) or a list of _Field (message)


class ConfigFileError(UsageError):
    """A model config file that cannot be read or parsed (exit status 2, as any usage error)."""


def read_model_config(path: str | Path) -> list[ModelConfig]:
    """Return the models a config file lists, in file order.

    Raises:
        ConfigFileError: the file cannot be read, or it is not a valid ``model_config_list`` (``FILE:LINE: why``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"cannot read the model config file {str(path)!r}: {exc}") from None
    return parse_model_config(text, str(path))


def parse_model_config(text: str, source: str = "<model config>") -> list[ModelConfig]:
    """Return the models of a ``model_config_list`` text; raise ConfigFileError naming ``source`` and the line."""
    parser = _Parser(_tokens(text, source), source)
    top = parser.message(end="end")
    lists = _fields(top, {"model_config_list": "message"}, "the file", source)
    if "model_config_list" not in lists:
        raise ConfigFileError(f"{source}:1: the file holds no model_config_list {{ ... }}")
    entries = _fields(lists["model_config_list"].value, {"config": "message*"}, "model_config_list", source)
    models: list[ModelConfig] = []
    seen: dict[str, int] = {}
    for entry in entries.get("config", []):
        model = _model(entry, source)
        if model.name in seen:
            raise ConfigFileError(f"{source}:{entry.line}: model {model.name!r} is listed twice "
                                  f"(first on line {seen[model.name]})")
        seen[model.name] = entry.line
        models.append(model)
    return models


def _tokens(text: str, source: str) -> list[_Token]:
    tokens, line, pos = [], 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigFileError(f"{source}:{line}: unexpected character {text[pos]!r}")
        kind = match.lastgroup
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            tokens.append(_Token(kind, match.group(), line))
        pos = match.end()
    tokens.append(_Token("end", "end of file", line))
    return tokens


class _Parser:
    """A recursive-descent reader of the protobuf text format into nested fields (no schema yet)."""

    def __init__(self, tokens: list[_Token], source: str):
        self.tokens, self.source, self.pos = tokens, source, 0

    def _next(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def _peek(self) -> _Token:
        return self.tokens[self.pos]

    def error(self, token: _Token, message: str) -> ConfigFileError:
        return ConfigFileError(f"{self.source}:{token.line}: {message}")

    def message(self, end: str) -> list[_Field]:
        """Read fields until ``end`` ("}" or "end" of file)."""
        fields: list[_Field] = []
        while True:
            token = self._next()
            if token.text == end or token.kind == end:
                return fields
            if token.kind == "end":
                raise self.error(token, "unexpected end of file: a '}' is missing")
            if token.kind != "ident":
                raise self.error(token, f"expected a field name; found {token.text!r}")
            separator = self._peek()
            if separator.text == ":":
                self._next()
            value = self._peek()
            if value.text == "{":
                self._next()
                fields.append(_Field(token.text, token.line, self.message(end="}")))
            elif separator.text != ":":
                raise self.error(value, f"expected ':' or '{{' after {token.text!r}; found {value.text!r}")
            elif value.kind in ("string", "number", "ident"):
                self._next()
                fields.append(_Field(token.text, token.line, value))
            else:
                raise self.error(value, f"expected a value for {token.text!r}; found {value.text!r}")
            if self._peek().text in (",", ";"):
                self._next()


def _fields(message: list[_Field], schema: dict[str, str], where: str, source: str) -> dict:
    """Check ``message`` against ``schema`` ({field: string|int|message, a trailing * = repeated}); index it."""
    found: dict = {}
    for f in message:
        expected = schema.get(f.name)
        if expected is None:
            known = ", ".join(sorted(schema)) or "none"
            raise ConfigFileError(f"{source}:{f.line}: unknown field {f.name!r} in {where} (fields: {known})")
        kind = expected.rstrip("*")
        is_message = isinstance(f.value, list)
        if kind == "message" and not is_message:
            raise ConfigFileError(f"{source}:{f.line}: {f.name} must be a message {{ ... }}")
        if kind != "message":
            if is_message:
                raise ConfigFileError(f"{source}:{f.line}: {f.name} must be a {kind}, not a message")
            wanted = {"string": "string", "int": "number"}[kind]
            if f.value.kind != wanted:
                raise ConfigFileError(f"{source}:{f.line}: {f.name} must be a {kind}; received {f.value.text}")
        if expected.endswith("*"):
            found.setdefault(f.name, []).append(f)
        elif f.name in found:
            raise ConfigFileError(f"{source}:{f.line}: {f.name} is given twice in {where} "
                                  f"(first on line {found[f.name].line})")
        else:
            found[f.name] = f
    return found


def _string(f: _Field) -> str:
    body = f.value.text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


def _positive(f: _Field, source: str, what: str) -> int:
    value = int(f.value.text)
    if not 1 <= value <= 10**18 - 1:
        raise ConfigFileError(f"{source}:{f.line}: {what} must be a positive whole number (at most 18 digits); "
                              f"received {f.value.text}")
    return value


_CONFIG_SCHEMA = {"name": "string", "base_path": "string", "model_platform": "string",
                  "model_version_policy": "message", "version_labels": "message*"}


def _model(entry: _Field, source: str) -> ModelConfig:
    fields = _fields(entry.value, _CONFIG_SCHEMA, "config", source)
    if "name" not in fields:
        raise ConfigFileError(f"{source}:{entry.line}: config has no name")
    name = _string(fields["name"])
    try:
        validate_name(name)
    except ValueError as exc:
        raise ConfigFileError(f"{source}:{fields['name'].line}: {exc}") from None
    platform = fields.get("model_platform")
    if platform is not None and _string(platform) != "tensorflow":
        raise ConfigFileError(f"{source}:{platform.line}: model_platform must be \"tensorflow\"; received "
                              f"{platform.value.text}")
    base_path = None
    if "base_path" in fields:
        raw = _string(fields["base_path"])
        if not raw.strip():
            raise ConfigFileError(f"{source}:{fields['base_path'].line}: base_path is empty")
        base_path = Path(raw).expanduser()
    policy = VersionPolicy()
    if "model_version_policy" in fields:
        policy = _policy(fields["model_version_policy"], source)
    labels: dict[str, int] = {}
    for label in fields.get("version_labels", []):
        key, value = _label(label, source)
        if key in labels:
            raise ConfigFileError(f"{source}:{label.line}: label {key!r} is given twice for model {name!r}")
        if policy.kind == SPECIFIC and value not in policy.versions:
            raise ConfigFileError(f"{source}:{label.line}: label {key!r} points at version {value}, which the "
                                  f"policy {policy.describe()} does not serve")
        labels[key] = value
    return ModelConfig(name, base_path, policy, labels)


def _policy(f: _Field, source: str) -> VersionPolicy:
    kinds = _fields(f.value, {LATEST: "message", ALL: "message", SPECIFIC: "message"}, "model_version_policy",
                    source)
    if len(kinds) != 1:
        raise ConfigFileError(f"{source}:{f.line}: model_version_policy needs exactly one of latest, all, "
                              f"specific; received {len(kinds)}")
    kind, body = next(iter(kinds.items()))
    if kind == ALL:
        _fields(body.value, {}, "all", source)
        return VersionPolicy(ALL)
    if kind == LATEST:
        inner = _fields(body.value, {"num_versions": "int"}, "latest", source)
        count = _positive(inner["num_versions"], source, "num_versions") if "num_versions" in inner else 1
        return VersionPolicy(LATEST, count=count)
    inner = _fields(body.value, {"versions": "int*"}, "specific", source)
    if not inner.get("versions"):
        raise ConfigFileError(f"{source}:{body.line}: specific needs at least one versions: N")
    return VersionPolicy(SPECIFIC, versions=tuple(sorted({_positive(v, source, "versions")
                                                          for v in inner["versions"]})))


def _label(f: _Field, source: str) -> tuple[str, int]:
    inner = _fields(f.value, {"key": "string", "value": "int"}, "version_labels", source)
    if "key" not in inner or "value" not in inner:
        raise ConfigFileError(f"{source}:{f.line}: version_labels needs a key and a value")
    key = _string(inner["key"])
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", key):
        raise ConfigFileError(f"{source}:{inner['key'].line}: label must be 1-128 letters, digits, '-', '_' or "
                              f"'.'; received {key!r}")
    return key, _positive(inner["value"], source, "a label's value")
