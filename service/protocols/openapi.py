"""The service's OpenAPI 3.0 description, served at ``GET /openapi.json`` and tested against the app.

Every route is described with its request bodies and with a schema for each
response status it can answer, errors included (``{"error": "..."}``), so a
client generator or a fuzzer (schemathesis) can hold the app to it. Each
protocol describes its own routes (a :class:`~imgclf.service.protocols.openapi_parts.Part`);
this module assembles the parts, in the order of :data:`PARTS`, and adds what
every route shares: the info, the Error schema and the access-control answers.
"""

from __future__ import annotations

from imgclf.core.version import package_version
from imgclf.service.protocols import service_openapi
from imgclf.service.protocols.openapi_parts import Context, errors
from imgclf.service.protocols.predict import openapi as predict_openapi
from imgclf.service.protocols.tfserving import openapi as tfserving_openapi
from imgclf.service.protocols.v2 import openapi as v2_openapi

OPENAPI_VERSION = "3.0.3"
# One part per protocol, each a function of the Context: a new protocol adds its part here.
PARTS = (predict_openapi.part, tfserving_openapi.part, v2_openapi.part, service_openapi.part)
SECURITY_SCHEMES = {"bearerKey": {"type": "http", "scheme": "bearer", "description": "an imgclf API key"},
                    "headerKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
DESCRIPTION = ("Image classification with Inception-v3 bottlenecks and a trained head. "
               "Every error answers {\"error\": \"<message>\"}.")


def document(model_names: list[str] | None = None, max_instances: int = 256) -> dict:
    """Return the OpenAPI document; ``model_names`` (the served ones) become the examples of model names."""
    context = Context(example_name=(model_names or ["flowers"])[0], max_instances=max_instances)
    parts = [build(context) for build in PARTS]
    tags = {}
    for part in parts:
        for tag in part.tags:
            tags.setdefault(tag["name"], tag)
    paths = _merged("path", [part.paths for part in parts])
    error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "imgclf", "version": package_version(), "description": DESCRIPTION},
        "tags": list(tags.values()),
        "paths": _access_control(paths, {path for part in parts for path in part.open_paths}),
        "components": {"schemas": _merged("schema", [{"Error": error}] + [part.schemas for part in parts]),
                       "securitySchemes": SECURITY_SCHEMES},
    }


def _merged(what: str, mappings: list[dict]) -> dict:
    """Return the union of ``mappings``, which two parts may not both define a key of (ValueError)."""
    merged = {}
    for mapping in mappings:
        for key, value in mapping.items():
            if key in merged:
                raise ValueError(f"two parts of the OpenAPI document define the {what} {key!r}")
            merged[key] = value
    return merged


def _access_control(paths: dict, open_paths: set[str]) -> dict:
    """Add the access-control answers and the optional key requirement to every operation but the open ones."""
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":  # the path's own parameters, not an operation
                continue
            operation["responses"].update(errors("403"))
            if path in open_paths:
                operation["security"] = []
                continue
            operation["responses"].update(errors("401", "429"))
            operation["security"] = [{"bearerKey": []}, {"headerKey": []}, {}]  # {}: keys are off by default
    return paths

