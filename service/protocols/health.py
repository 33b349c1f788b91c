"""The routes every protocol shares: liveness, readiness, and the API description.

``/healthz`` answers as long as the process does, also while models load.
``/readyz`` is 200 only when this worker has loaded and warmed up its models
and, under gunicorn, so has every other worker that takes connections (their
states are files in the server's folder, :mod:`imgclf.service.server.worker_states`):
after a 200, a model request gets its model whichever worker takes it. It is 503
with status ``unavailable`` while a model this worker has served has no available
version (its served version's folder was deleted: TF Serving's status shows its
versions END), as Triton's strict readiness, and with status ``stalled`` while
another worker's heartbeat is late (stopped, or hung).
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from imgclf.service.app_settings import current_config
from imgclf.service.lifecycle.extension import current_models
from imgclf.service.protocols.openapi import document
from imgclf.service.server import worker_states

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Answer 200 while the process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Answer 200 when every worker's models are loaded and warmed up, 503 before (or when loading failed)."""
    manager = current_models()
    models = {name: served.version for name, served in manager.models.items()}
    readiness = worker_states.server_readiness(*manager.readiness())
    body = {"status": readiness.status, "models": models, "precision": manager.precision}
    if readiness.workers is not None:
        body["workers"] = readiness.workers
    if readiness.error:
        body["error"] = readiness.error
    response = jsonify(body)
    if not readiness.ready:
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return response


@bp.get("/openapi.json")
def openapi_json():
    """Answer the OpenAPI 3 description of the whole service."""
    models = current_models()
    return jsonify(document(sorted(models.models) if models.ready else [],
                            max_instances=int(current_config().max_instances)))
