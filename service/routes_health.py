"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, jsonify

from imgclf.service.registry import current_registry

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Answer 200 while the process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Answer 200 when every model is loaded and warmed up, 503 before (or when loading failed)."""
    registry = current_registry()
    models = {name: served.version for name, served in registry.models.items()}
    body = {"status": registry.state, "models": models, "precision": registry.precision}
    if registry.error:
        body["error"] = registry.error
    response = jsonify(body)
    if not registry.ready:
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return response
