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

from imgclf.core.errors import ImgclfError
from imgclf.service.config import ServiceConfig
from imgclf.service.errors import register_error_handlers
from imgclf.service.registry import ModelRegistry
from imgclf.service.request_input import read_streamed_body

log = logging.getLogger(__name__)

# Each module holds a Blueprint named `bp`.
BLUEPRINTS = ("imgclf.service.routes_health", "imgclf.service.routes_predict", "imgclf.service.routes_tfserving",
              "imgclf.service.routes_web")


def create_app(config: ServiceConfig | dict | None = None) -> Flask:
    """Return a new app; ``config`` is a ServiceConfig or a dict of overrides of the environment's settings."""
    if not isinstance(config, ServiceConfig):
        config = ServiceConfig.from_env(**(config or {}))
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.json.ensure_ascii = False  # labels in any script, as they are
    app.json.sort_keys = False
    app.extensions["imgclf.config"] = config
    from imgclf.service import metrics

    metrics.init_app(app)
    in_flight = InFlight()
    registry = ModelRegistry(config, on_batch=metrics.batch_observer, on_load=metrics.observe_load,
                             expected=in_flight.count)
    app.extensions["imgclf.registry"] = registry
    in_flight.init_app(app, registry)
    register_error_handlers(app)
    # Chunked bodies are read before the views: 413 over the limit, 400 when malformed (werkzeug would
    # silently cut one at the limit), as a body with a Content-Length gets.
    app.before_request(read_streamed_body)
    for module in BLUEPRINTS:
        app.register_blueprint(importlib.import_module(module).bp)
    registry.start()
    return app


class InFlight:
    """Count the prediction requests in flight in this worker, by model (a batcher stops waiting at that many)."""

    PREDICT_ENDPOINTS = ("predict.predict", "tfserving.predict")

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, model: str) -> int:
        """Return the number of prediction requests for ``model`` being handled now."""
        return self._counts.get(model, 0)

    def init_app(self, app: Flask, registry: ModelRegistry) -> None:
        """Count requests to the prediction routes from start to teardown (errors included), by model name."""

        @app.before_request
        def _enter():
            if request.endpoint not in self.PREDICT_ENDPOINTS:
                return
            name = (request.view_args or {}).get("name") or request.args.get("model")
            if not name and registry.ready:
                try:
                    name = registry.default_name()
                except ImgclfError:  # no model served: the view answers that
                    return
            if name:
                with self._lock:
                    self._counts[name] = self._counts.get(name, 0) + 1
                g.imgclf_in_flight = name

        @app.teardown_request
        def _leave(exc):
            name = g.pop("imgclf_in_flight", None)
            if name is not None:
                with self._lock:
                    self._counts[name] -= 1
                    if not self._counts[name]:
                        del self._counts[name]  # names come from requests: keep the dict small


def registry_of(app: Flask) -> ModelRegistry:
    """Return the app's model registry."""
    return app.extensions["imgclf.registry"]


def config_of(app: Flask) -> ServiceConfig:
    """Return the app's configuration."""
    return app.extensions["imgclf.config"]
