"""The Flask app factory: configuration, per-worker model loading, routes, error handling.

``create_app()`` builds a fresh app each time: defaults, then ``IMGCLF_*``
environment variables, then the caller's overrides. Models load once per
worker, here (never at import, never in the gunicorn master), into
``app.extensions["imgclf.registry"]``.
"""

from __future__ import annotations

import importlib
import logging
import threading

from flask import Flask, g, request

from service.config import ServiceConfig
from service.errors import register_error_handlers
from service.registry import ModelRegistry
from service.request_input import read_streamed_body

log = logging.getLogger(__name__)

# Each module holds a Blueprint named `bp`.
BLUEPRINTS = ("service.routes_health", "service.routes_predict", "service.routes_tfserving", "service.routes_web")


def create_app(config: ServiceConfig | dict | None = None) -> Flask:
    """Return a new app; ``config`` is a ServiceConfig or a dict of overrides of the environment's settings."""
    if not isinstance(config, ServiceConfig):
        config = ServiceConfig.from_env(**(config or {}))
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.json.ensure_ascii = False  # labels in any script, as they are
    app.json.sort_keys = False
    app.extensions["imgclf.config"] = config
    from service import metrics

    metrics.init_app(app)
    in_flight = InFlight()
    registry = ModelRegistry(config, on_batch=metrics.batch_observer, on_load=metrics.observe_load,
                             expected=in_flight.count)
    app.extensions["imgclf.registry"] = registry
    in_flight.init_app(app)
    register_error_handlers(app)
    # Chunked bodies are read before the views: 413 over the limit, 400 when malformed (werkzeug would
    # silently cut one at the limit), as a body with a Content-Length gets.
    app.before_request(read_streamed_body)
    for module in BLUEPRINTS:
        app.register_blueprint(importlib.import_module(module).bp)
    registry.start()
    return app


class InFlight:
    """Count the prediction requests in flight in this worker (the batchers stop waiting at that many)."""

    PREDICT_ENDPOINTS = ("predict.predict", "tfserving.predict")

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()

    def count(self) -> int:
        """Return the number of prediction requests being handled now."""
        return self._count

    def init_app(self, app: Flask) -> None:
        """Count requests to the prediction routes from start to teardown (errors included)."""

        @app.before_request
        def _enter():
            if request.endpoint in self.PREDICT_ENDPOINTS:
                with self._lock:
                    self._count += 1
                g.imgclf_in_flight = True

        @app.teardown_request
        def _leave(exc):
            if g.pop("imgclf_in_flight", False):
                with self._lock:
                    self._count -= 1


def registry_of(app: Flask) -> ModelRegistry:
    """Return the app's model registry."""
    return app.extensions["imgclf.registry"]


def config_of(app: Flask) -> ServiceConfig:
    """Return the app's configuration."""
    return app.extensions["imgclf.config"]
