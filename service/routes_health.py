"""Liveness and readiness.

``/healthz`` answers as long as the process does, also while models load.
``/readyz`` is 200 only when this worker has loaded and warmed up its models
and, under gunicorn, so has every other worker that takes connections (their
states are files in the server's folder, :mod:`imgclf.service.worker_states`):
after a 200, a model request gets its model whichever worker takes it.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from imgclf.service import worker_states
from imgclf.service.registry import current_registry

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Answer 200 while the process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Answer 200 when every worker's models are loaded and warmed up, 503 before (or when loading failed)."""
    registry = current_registry()
    models = {name: served.version for name, served in registry.models.items()}
    status, error = registry.state, registry.error
    folder = worker_states.server_folder()
    workers = worker_states.read_all(folder) if folder is not None else None
    if registry.ready and workers:
        unready = worker_states.unready(workers)
        failed = [w for w in unready if w.state == worker_states.FAILED]
        if failed:
            status, error = "failed", f"worker {failed[0].pid or failed[0].age}: {failed[0].error}"
        elif unready:
            status = "loading"
            error = f"{len(unready)} of {len(workers)} workers still loading their models"
    body = {"status": status, "models": models, "precision": registry.precision}
    if workers is not None:
        body["workers"] = worker_states.counts(workers)
    if error:
        body["error"] = error
    response = jsonify(body)
    if status != "ready":
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return response
