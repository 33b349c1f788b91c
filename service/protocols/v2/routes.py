"""The Open Inference Protocol (KServe v2) over REST: health, server and model metadata, readiness, infer.

The protocol KServe, Triton, Seldon MLServer and OpenVINO Model Server speak,
so their clients (``tritonclient.http``, the ``kserve`` SDK) work against
imgclf. Bodies follow the protocol's REST spec, binary tensor data extension
included (:mod:`imgclf.service.protocols.v2.tensors`); what each model takes and answers
comes from its servable (:mod:`imgclf.service.protocols.v2.model`); a request's
``parameters.unfamiliar_threshold`` sets an image classifier's unfamiliar flag threshold
for that request. Errors are the
protocol's ``{"error": "..."}`` with the service's usual statuses. Model names
from URLs are only ever looked up in the registry, never joined into paths.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request

from imgclf.core.errors import BadRequest, NotReady
from imgclf.core.version import package_version
from imgclf.service.app_settings import current_config
from imgclf.service.dataplane.extension import current_plane
from imgclf.service.dataplane.plane import THRESHOLD_PARAMETER
from imgclf.service.lifecycle.extension import current_models
from imgclf.service.protocols.v2 import model as v2_model
from imgclf.service.protocols.v2.tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH, encode_response, parse_request
from imgclf.service.servables.base import Servable
from imgclf.service.server import worker_states

bp = Blueprint("v2", __name__)

SERVER_NAME = "imgclf"
EXTENSIONS = ["binary_tensor_data"]
_VERSION = re.compile(r"[0-9]{1,18}")  # an int64, as the TF Serving routes parse it


def _version(version: str | None) -> int | None:
    """Return a URL's version segment as an integer, None for none or 0 (the default version, as OpenVINO Model
    Server's clients send it); 400 for a non-integer."""
    if version is not None and not _VERSION.fullmatch(version):
        raise BadRequest(f"model version must be a non-negative integer (at most 18 digits); received {version!r}")
    return int(version or 0) or None


def _served(name: str, version: str | None = None) -> Servable:
    """Return the served model for URL segments ``name`` and ``version``."""
    return current_models().get(name, _version(version))


# --- server ---------------------------------------------------------------------------------------------------------


@bp.get("/v2")
def server_metadata():
    """Answer the server metadata: name, version and the protocol extensions supported."""
    return jsonify(name=SERVER_NAME, version=package_version(), extensions=EXTENSIONS)


@bp.get("/v2/health/live")
def live():
    """Answer 200 while the process is alive, loading included."""
    return jsonify(live=True)


@bp.get("/v2/health/ready")
def ready():
    """Answer 200 when every worker has its models loaded and warmed up (as /readyz), else 503 saying why."""
    models = current_models()
    readiness = worker_states.server_readiness(*models.readiness())
    if not readiness.ready:
        raise NotReady("models are still loading" if readiness.status == worker_states.LOADING and not readiness.error
                       else readiness.error or f"models are {readiness.status}")
    return jsonify(ready=True)


# --- models ---------------------------------------------------------------------------------------------------------


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    """Answer the model metadata: versions, platform, inputs and outputs with datatype and shape."""
    served = _served(name, version)
    body = v2_model.model_metadata(served)
    if version is None:  # the model's metadata lists every version this worker serves
        body["versions"] = [str(v) for v in current_models().available_versions(served.name)] or body["versions"]
    return jsonify(body)


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    """Answer 200 when the model (version) is loaded and serving; 404 unknown, 503 still loading."""
    served = _served(name, version)
    return jsonify(name=served.name, ready=True)


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    """Predict an inference request: JSON tensors, or JSON then binary tensor data."""
    plane = current_plane()
    with plane.model(name, _version(version)) as served:
        parsed = parse_request(request.get_data(cache=True), request.headers.get(HEADER_LENGTH),
                               max_batch=plane.max_instances, max_tensors=current_config().max_tensors)
        inference = v2_model.inference_request(plane, served, parsed.inputs, parsed.outputs,
                                               parsed.parameters.get(THRESHOLD_PARAMETER))
        outputs = plane.infer(served, inference).outputs
        # Answered inside the lease: the request counts in flight until its answer is made.
        tensors = v2_model.encode_outputs(served, outputs, parsed.outputs, parsed.binary_output)
        header = {"model_name": served.name, "model_version": str(served.version)}
        if parsed.id is not None:
            header["id"] = parsed.id
        body, json_length = encode_response(header, tensors)
    if json_length is None:
        return Response(body, status=200, mimetype="application/json")
    return Response(body, status=200, mimetype=BINARY_CONTENT_TYPE, headers={HEADER_LENGTH: str(json_length)})
