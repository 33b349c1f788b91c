"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Answer 200 while the process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Answer 200 when every model is loaded and warmed up, 503 before (or when loading failed)."""
    from imgclf.service.app import registry_of

    registry = registry_of(current_app)
    models = {name: served.version for name, served in registry.models.items()}
    body = {"status": registry.state, "models": models, "precision": registry.precision}
    if registry.error:
        body["error"] = registry.error
    response = jsonify(body)
    if not registry.ready:
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return response
