"""The Flask app factory: settings, per-worker model loading, routes, error handling.

``create_app()`` builds a fresh app each time from the settings tree
(:class:`~imgclf.service.settings.Settings`: defaults, then ``IMGCLF_*`` environment
variables, then the caller's overrides), read once, and hands each part its section.
Each resource is an extension with one accessor: the settings
(:func:`~imgclf.service.app_settings.current_settings`, and the serving section,
:func:`~imgclf.service.app_settings.current_config`), the metrics
(:func:`~imgclf.service.metrics.current_metrics`), the version manager
(:func:`~imgclf.service.lifecycle.extension.current_models`) and the data plane over it
(:func:`~imgclf.service.dataplane.extension.current_plane`). Models load once per
worker, here (never at import, never in the gunicorn master).
"""

from __future__ import annotations

import logging

from flask import Flask

from imgclf.core import devices
from imgclf.service import app_settings, metrics
from imgclf.service.access import auth, cross_site, hosts, redact, security_headers
from imgclf.service.dataplane import extension as dataplane
from imgclf.service.protocols import health as routes_health
from imgclf.service.protocols.predict import lean as lean_predict
from imgclf.service.protocols.predict import routes as routes_predict
from imgclf.service.protocols.rest import read_streamed_body, register_error_handlers
from imgclf.service.protocols.tfserving import routes as routes_tfserving
from imgclf.service.protocols.v2 import routes as routes_v2
from imgclf.service.settings import Settings
from imgclf.service.web import routes as routes_web

log = logging.getLogger(__name__)

BLUEPRINTS = (routes_health.bp, routes_predict.bp, routes_tfserving.bp, routes_v2.bp, routes_web.bp)


def create_app(settings: Settings | dict | None = None) -> Flask:
    """Return a new app; ``settings`` is a settings tree, or overrides of the environment's by field name.

    ``create_app({"model_repository": repo, "poll_seconds": 0})``: each name is a field of one section
    of :class:`~imgclf.service.settings.Settings`.
    """
    if not isinstance(settings, Settings):
        settings = Settings.from_env(**(settings or {}))
    app = Flask(__name__, static_folder=None)
    app.json.ensure_ascii = False  # labels in any script, as they are
    app.json.sort_keys = False
    app_settings.init_app(app, settings)  # the serving section: current_config(), read by the parts below
    devices.use_settings(settings.device)  # applied when the version manager first configures TensorFlow
    hosts.init_app(app, settings.access)  # before any route: no router redirects; a Host not allowed gets 400
    metrics.init_app(app, settings.serving)
    # Hostile clients (issues 15 and 27), before any hook that reads a body: 400 for a Host not allowed (above),
    # 403 for browser pages of other origins (CORS for allowed ones), then API keys and rate limits when
    # configured; security headers and no server paths on every answer.
    cross_site.init_app(app, settings.access)
    auth.init_app(app, settings.access)
    security_headers.init_app(app)
    redact.init_app(app, settings.serving.model_repository)
    # Chunked bodies are read before anything else reads them:
    # 413 over the limit, 400 when malformed (werkzeug would silently cut one at the limit), as a body with a
    # Content-Length gets.
    app.before_request(read_streamed_body)
    # The data plane: the version manager (models load per worker), budgets, in-flight counts.
    plane = dataplane.init_app(app, settings.serving)
    register_error_handlers(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    if settings.server.grpc_bind:  # this worker's gRPC server, once its models are loaded
        # Imported only where gRPC is on: every imgclf command imports this package, and grpcio's core is
        # not small (nor needed by `imgclf train`).
        from imgclf.service.protocols.grpc import extension as grpc_extension

        grpc_extension.init_app(app, settings)
    # The common POST /predict (a JPEG, JSON back, no browser Origin) is answered before Flask; every other
    # request, and any error, goes through the app as before (protocols/predict/lean.py).
    if settings.server.lean_predict:
        lean_predict.init_app(app, settings, plane, metrics.current_metrics(app))
    plane.models.start()
    return app
