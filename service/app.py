"""The Flask app factory: configuration, per-worker model loading, routes, error handling.

``create_app()`` builds a fresh app each time: defaults, then ``IMGCLF_*``
environment variables, then the caller's overrides. Models load once per
worker, here (never at import, never in the gunicorn master), into
``app.extensions["imgclf.registry"]``.
"""

from __future__ import annotations

import importlib
import logging

from flask import Flask

from service.config import ServiceConfig
from service.errors import register_error_handlers
from service.registry import ModelRegistry

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
    registry = ModelRegistry(config, on_batch=metrics.batch_observer, on_load=metrics.observe_load)
    app.extensions["imgclf.registry"] = registry
    register_error_handlers(app)
    for module in BLUEPRINTS:
        app.register_blueprint(importlib.import_module(module).bp)
    registry.start()
    return app


def registry_of(app: Flask) -> ModelRegistry:
    """Return the app's model registry."""
    return app.extensions["imgclf.registry"]


def config_of(app: Flask) -> ServiceConfig:
    """Return the app's configuration."""
    return app.extensions["imgclf.config"]
