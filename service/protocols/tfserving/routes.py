"""TensorFlow-Serving-compatible REST routes: predict, model status, metadata, and the model list.

Request and response bodies follow TF Serving's REST API (row format
``{"instances": [...]}`` and columnar format ``{"inputs": ...}``, binary
values as ``{"b64": ...}``), so a TF Serving client works against imgclf
unchanged. The routes only translate HTTP: each instance is decoded, the
batch predicted and the outputs formatted by the model's
:class:`~imgclf.service.servables.base.Servable`. Model names from URLs are only
ever looked up in the registry, never joined into paths.
"""

from __future__ import annotations

import json
import re

from flask import Blueprint, jsonify, request
from werkzeug.routing import BaseConverter

from imgclf.service.app_settings import current_config
from imgclf.service.dataplane.budget import admit, instance_pictures
from imgclf.service.dataplane.errors import BadRequest
from imgclf.service.lifecycle.registry import current_registry
from imgclf.service.protocols.openapi import document
from imgclf.service.protocols.tfserving.ovms_json import with_json_names
from imgclf.service.servables.base import Servable, describe

bp = Blueprint("tfserving", __name__)

_VERSION = re.compile(r"[0-9]{1,18}")  # an int64, as TF Serving parses it


class SegmentConverter(BaseConverter):
    """One path segment without ':' — so ``NAME:predict`` never matches the plain ``NAME`` routes."""

    regex = r"[^/:]+"


# Runs when the blueprint is registered, before the rules below are added (deferred functions run in order).
bp.record_once(lambda state: state.app.url_map.converters.setdefault("segment", SegmentConverter))


def _version(version: str | None) -> int | None:
    """Return a URL's version segment as an integer (None: the route names none); 400 for a non-integer."""
    if version is None:
        return None
    if not _VERSION.fullmatch(version):
        raise BadRequest(f"model version must be a non-negative integer (at most 18 digits); received {version!r}")
    return int(version)


def _served(name: str, version: str | None = None, label: str | None = None) -> Servable:
    """Return the served model for URL segments ``name`` and ``version`` or ``label`` (its default: neither).

    Version 0 means the default version, as OpenVINO Model Server's clients send it.
    """
    if label is not None:
        return current_registry().get_label(name, label)
    return current_registry().get(name, _version(version) or None)


# --- status, metadata, list -------------------------------------------------------------------------------------


@bp.get("/v1/models/<segment:name>")
@bp.get("/v1/models/<segment:name>/versions/<segment:version>")
@bp.get("/v1/models/<segment:name>/labels/<segment:label>")
def model_status(name: str, version: str | None = None, label: str | None = None):
    """Answer TF Serving's model status: every version of the model with its state, or the one named (version 0:
    the default version); with KServe v1's ``name`` and ``ready`` (a version of it is AVAILABLE) beside it."""
    registry = current_registry()
    if label is not None:
        number = registry.label_version(name, label)
    else:
        number = _version(version)
        if number == 0:
            number = registry.default_version(name)
    statuses = registry.status(name, number)
    ready = any(status["state"] == "AVAILABLE" for status in statuses)
    return jsonify(name=name, ready=ready, model_version_status=statuses)


@bp.get("/v1/models/<segment:name>/metadata")
@bp.get("/v1/models/<segment:name>/versions/<segment:version>/metadata")
@bp.get("/v1/models/<segment:name>/labels/<segment:label>/metadata")
def model_metadata(name: str, version: str | None = None, label: str | None = None):
    """Answer TF Serving's model metadata (signature defs), plus the labels and the model card."""
    served = _served(name, version, label)
    body = {
        "model_spec": {"name": served.name, "signature_name": "", "version": str(served.version)},
        "metadata": {"signature_def": {"signature_def": served.signature_defs()}},
        "labels": served.labels,
        "model_card": served.card,
    }
    if served.input_notes:
        body["input"] = served.input_notes
    return jsonify(with_json_names(body))  # OpenVINO Model Server's spelling too: ovmsclient reads only that


@bp.get("/v1/models")
def list_models():
    """List the served models with their default version, every available version, and labels."""
    registry = current_registry()
    if not registry.ready:
        registry.get()  # raises NotReady with the reason
    return jsonify(models=[{"name": s.name, "version": s.version, "labels": s.labels, "kind": s.kind.value,
                            "versions": registry.available_versions(s.name)}
                           for _, s in sorted(registry.models.items())])


# --- predict ------------------------------------------------------------------------------------------------------


@bp.post("/v1/models/<segment:name>:predict")
@bp.post("/v1/models/<segment:name>/versions/<segment:version>:predict")
@bp.post("/v1/models/<segment:name>/labels/<segment:label>:predict")
def predict(name: str, version: str | None = None, label: str | None = None):
    """Predict a TF Serving request: row format answers ``predictions``, columnar format ``outputs``."""
    served = _served(name, version, label)
    body = _json_body()
    signature = served.check_signature(body.get("signature_name"))
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest('the request must hold exactly one of "instances" (row format) or "inputs" '
                         f"(columnar format); received keys {sorted(body)}")
    row_format = "instances" in body
    items = _items(body["instances"] if row_format else body["inputs"], served.input_key(signature), row_format)
    with admit(instance_pictures(items)):  # 413 over the request's pixel budget, before any decoding
        batch = served.decode_batch(items, signature)
    outputs = served.predict(batch, signature)
    if row_format:
        return jsonify(predictions=served.rows(outputs))
    return jsonify(outputs=served.columns(outputs))


def _json_body() -> dict:
    """Return the request's JSON object, whatever its content type (TF Serving's clients often send none)."""
    try:
        body = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested arrays
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object; received {type(body).__name__}")
    if "signature_name" in body and not isinstance(body["signature_name"], str):
        raise BadRequest(f"signature_name must be a string; received {body['signature_name']!r}")
    return body


def _items(value, input_key: str, row_format: bool) -> list:
    """Return the per-instance values of ``instances`` or ``inputs``, unwrapping the named-input forms."""
    where = "instances" if row_format else "inputs"
    if not row_format and isinstance(value, dict):  # columnar, named: {"image_bytes": [...]}
        if set(value) != {input_key}:
            raise BadRequest(f'"inputs" must name the one input {input_key!r}; received {sorted(value)}')
        value = value[input_key]
    if not isinstance(value, list) or not value:
        raise BadRequest(f'"{where}" must be a non-empty list; received {describe(value)}')
    limit = int(current_config().max_instances)
    if len(value) > limit:
        raise BadRequest(f'"{where}" holds {len(value)} items; at most {limit} are allowed per request')
    if row_format:  # row format, named: [{"image_bytes": {"b64": ...}}, ...]
        value = [item[input_key] if isinstance(item, dict) and set(item) == {input_key} else item for item in value]
    return value


# --- the API description ------------------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_json():
    """Answer the OpenAPI 3 description of the whole service."""
    registry = current_registry()
    return jsonify(document(sorted(registry.models) if registry.ready else [],
                            max_instances=int(current_config().max_instances)))
