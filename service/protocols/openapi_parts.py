"""What each protocol's part of the OpenAPI document is made of, and the pieces the parts share.

A part (:class:`Part`) holds one protocol's paths and component schemas;
:func:`imgclf.service.protocols.openapi.document` assembles the parts into the
one document served at ``GET /openapi.json``. The static schemas are data, a
YAML file next to the protocol's code (:func:`schemas_file`); the references,
responses and path parameters the parts have in common are built here, so
every route answers errors with the same ``{"error": ...}`` schema.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from importlib import resources

import yaml

from imgclf.core import export_names

# An 8x8 red PNG: a real image, so the examples are requests the service answers with 200.
EXAMPLE_PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8ISfHgA0wMeAAg1MCANDKARQfGKMR"
                   "AAAAAElFTkSuQmCC")
MODEL_NAME_PATTERN = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"  # imgclf.core.repository.validate_name
MAX_VERSION = 10**18 - 1  # 18 digits: fits int64, as TF Serving parses it
ERROR_MEANINGS = {
    "400": "Malformed request: bad JSON, missing field, wrong shape, bad parameter, undecodable image",
    "404": "Unknown model, or a version that is not served",
    "413": "Too large: request body, image pixels, or too many instances",
    "415": "Unsupported content type or image type",
    "503": "Models are still loading (or failed to load); retry after the Retry-After header's seconds",
    # Access control (imgclf.service.access.auth, cross_site): off by default, so these appear only when configured.
    "401": "An API key is required (IMGCLF_API_KEYS_FILE is set) and was missing or wrong (WWW-Authenticate)",
    "403": "A browser request from another origin that IMGCLF_CORS_ORIGINS does not allow",
    "429": "This API key is over its rate limit (IMGCLF_RATE_LIMIT); retry after the Retry-After header's seconds",
}
# {{NAME}} in a schema file: a value the code fills in (schemas_file).
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Every name an exported model is known by (SERVING_SIGNATURE, IMAGE_BYTES_KEY, ...) fills its placeholder.
_EXPORT_NAMES = {key: value for key, value in vars(export_names).items() if key.isupper() and isinstance(value, str)}


@dataclass(frozen=True)
class Context:
    """What the document says of this server beyond its routes."""

    example_name: str  # a served model's name, so the examples reach a real one
    max_instances: int  # the most instances (rows) one predict or infer request may carry


@dataclass(frozen=True)
class Part:
    """One protocol's share of the document."""

    paths: dict  # OpenAPI path items by path; the access-control answers are added when assembled
    schemas: dict  # components.schemas that its paths refer to
    tags: tuple[dict, ...] = ()  # the tag objects its operations name (one declaration per name is kept)
    open_paths: tuple[str, ...] = ()  # answer without an API key (imgclf.service.access.auth)


@dataclass(frozen=True)
class ModelRoute:
    """One way a route names its model: by name alone, with /versions/{version}, or with /labels/{label}."""

    suffix: str  # after /v1/models/{name} or /v2/models/{name}
    parameters: list  # the path parameters
    target: str  # which version answers, for summaries: "served version", ...
    operation_suffix: str  # appended to the operationIds: "", "Version", "Label"
    lookup_errors: tuple[str, ...]  # statuses the lookup may answer (a version or label can be malformed: 400)


def ref(name: str) -> dict:
    """Return a reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(schema: dict, description: str) -> dict:
    """Return a response whose body is JSON of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def text_response(media_type: str, description: str) -> dict:
    """Return a response whose body is text of ``media_type`` (HTML, Prometheus' exposition format)."""
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def binary_media() -> dict:
    """Return a media type object for raw bytes (an image, the v2 binary tensor data)."""
    return {"schema": {"type": "string", "format": "binary"}}


def errors(*statuses: str) -> dict:
    """Return the error responses of ``statuses`` (``"404"``, ...), each answering the Error schema."""
    return {status: json_response(ref("Error"), ERROR_MEANINGS[status]) for status in statuses}


def model_routes(context: Context, *, labels: bool = False) -> list[ModelRoute]:
    """Return how model routes name their model: served version, given version and (``labels``) labelled one."""
    name = {"name": "name", "in": "path", "required": True, "description": "model name",
            "schema": {"type": "string", "pattern": MODEL_NAME_PATTERN}, "example": context.example_name}
    version = {"name": "version", "in": "path", "required": True,
               "description": "model version (an integer; only a served version is found; 0: the default "
                              "version, as OpenVINO Model Server's clients send it)",
               "schema": {"type": "integer", "minimum": 0, "maximum": MAX_VERSION}, "example": 1}
    label = {"name": "label", "in": "path", "required": True, "example": "stable",
             "description": "version label (a model config file's version_labels)",
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}}
    routes = [ModelRoute("", [name], "served version", "", ("404", "503")),
              ModelRoute("/versions/{version}", [name, version], "given version", "Version", ("400", "404", "503"))]
    if labels:
        routes.append(ModelRoute("/labels/{label}", [name, label], "labelled version", "Label", ("400", "404", "503")))
    return routes


def schemas_file(package: str, filename: str, **values) -> dict:
    """Return the component schemas of a package's YAML file, its ``{{NAME}}`` placeholders filled in.

    The file's ``schemas`` are the schemas (any other top-level key holds YAML anchors they reuse).
    ``values`` and the names of :mod:`imgclf.core.export_names` (``{{IMAGE_BYTES_KEY}}``) fill the
    placeholders: a string that is one placeholder becomes the value itself (a number stays a number), a
    longer string gets the value as text, and so does an object key.
    """
    return _fill(_read(package, filename)["schemas"], {**_EXPORT_NAMES, **values}, f"{package}/{filename}")


@functools.cache
def _read(package: str, filename: str) -> dict:
    return yaml.safe_load(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))


def _fill(node, values: dict, source: str):
    """Return a copy of ``node`` with its placeholders filled from ``values`` (KeyError for one without)."""
    if isinstance(node, dict):
        return {_fill(key, values, source): _fill(value, values, source) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(item, values, source) for item in node]
    if not isinstance(node, str):
        return node

    def value(name: str):
        if name not in values:
            raise KeyError(f"{source}: no value for the placeholder {{{{{name}}}}}")
        return values[name]

    whole = _PLACEHOLDER.fullmatch(node)
    if whole:
        return copy.deepcopy(value(whole.group(1)))
    return _PLACEHOLDER.sub(lambda match: str(value(match.group(1))), node)
