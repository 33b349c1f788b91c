"""TensorFlow-Serving-compatible REST routes: predict, model status, metadata, and the model list.

Request and response bodies follow TF Serving's REST API (row format
``{"instances": [...]}`` and columnar format ``{"inputs": ...}``, binary
values as ``{"b64": ...}``), so a TF Serving client works against imgclf
unchanged. The routes only translate: the body into the data plane's
instances and its outputs into rows or columns (:mod:`imgclf.service.protocols.tfserving.codec`).
Image classifiers answer ``unfamiliar`` and ``unfamiliar_score`` beside the
probabilities; a top-level ``"unfamiliar_threshold"`` field beside
``instances``/``inputs`` (imgclf's own: TF Serving has no such field) sets the
flag's threshold for that request.
Model names from URLs are only ever looked up in the version manager, never
joined into paths.
"""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, jsonify, request
from werkzeug.routing import BaseConverter

from imgclf.core.errors import BadRequest, ModelNotFound
from imgclf.service.dataplane.extension import current_plane
from imgclf.service.dataplane.plane import THRESHOLD_PARAMETER, InferenceRequest
from imgclf.service.lifecycle.extension import current_models
from imgclf.service.protocols.tfserving import codec
from imgclf.service.protocols.tfserving.ovms_json import with_json_names
from imgclf.service.servables.base import Servable

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
        return current_models().get_label(name, label)
    return current_models().get(name, _version(version) or None)


# --- status, metadata, list -------------------------------------------------------------------------------------


@bp.get("/v1/models/<segment:name>")
@bp.get("/v1/models/<segment:name>/versions/<segment:version>")
@bp.get("/v1/models/<segment:name>/labels/<segment:label>")
def model_status(name: str, version: str | None = None, label: str | None = None):
    """Answer TF Serving's model status: every version of the model with its state, or the one named (version 0:
    the default version); with KServe v1's ``name`` and ``ready`` (a version of it is AVAILABLE) beside it."""
    models = current_models()
    if label is not None:
        number = models.label_version(name, label)
    else:
        number = _version(version)
        if number == 0:
            number = models.default_version(name)
    statuses = models.status(name, number)
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
        "metadata": {"signature_def": {"signature_def": codec.signature_defs(served)}},
        "labels": served.labels,
        "model_card": served.card,
    }
    if served.input_notes:
        body["input"] = served.input_notes
    return jsonify(with_json_names(body))  # OpenVINO Model Server's spelling too: ovmsclient reads only that


@bp.get("/v1/models/<segment:name>/reliability.png")
@bp.get("/v1/models/<segment:name>/versions/<segment:version>/reliability.png")
@bp.get("/v1/models/<segment:name>/labels/<segment:label>/reliability.png")
def reliability_diagram(name: str, version: str | None = None, label: str | None = None):
    """Answer the version's calibration reliability diagram (PNG; imgclf's own route, the page shows it); 404 when
    the export has none."""
    served = _served(name, version, label)
    png = served.reliability_diagram()
    if png is None:
        raise ModelNotFound(f"model {served.name!r} version {served.version} has no reliability diagram (only "
                            "image classifiers trained with calibration figures have one)")
    return Response(png, mimetype="image/png")


@bp.get("/v1/models")
def list_models():
    """List the served models with their default version, every available version, and labels."""
    models = current_models()
    if not models.ready:
        models.get()  # raises NotReady with the reason
    return jsonify(models=[{"name": s.name, "version": s.version, "labels": s.labels, "kind": s.kind.value,
                            "versions": models.available_versions(s.name)}
                           for _, s in sorted(models.models.items())])


# --- predict ------------------------------------------------------------------------------------------------------


@bp.post("/v1/models/<segment:name>:predict")
@bp.post("/v1/models/<segment:name>/versions/<segment:version>:predict")
@bp.post("/v1/models/<segment:name>/labels/<segment:label>:predict")
def predict(name: str, version: str | None = None, label: str | None = None):
    """Predict a TF Serving request: row format answers ``predictions``, columnar format ``outputs``."""
    plane = current_plane()
    number = _version(version) or None
    with plane.model(name, number, label) as served:
        body = _json_body()
        signature = served.signature(body.get("signature_name"))
        items, where = codec.instances(body, signature)
        plane.check_count(len(items), where)  # before any picture is read
        inference = InferenceRequest(codec.pictures_decoded(items, served), signature.name, where=where,
                                     unfamiliar_threshold=body.get(THRESHOLD_PARAMETER))
        outputs = plane.infer(served, inference).outputs
        if "instances" in body:  # answered inside the lease: the request counts in flight until then
            return jsonify(predictions=codec.rows(outputs))
        return jsonify(outputs=codec.columns(outputs))


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
