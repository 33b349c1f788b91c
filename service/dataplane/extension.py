"""The data plane as a Flask extension: :func:`init_app` builds it for an app, :func:`current_plane` returns it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app

from imgclf.service.dataplane.budget import Budget
from imgclf.service.dataplane.in_flight import InFlight
from imgclf.service.dataplane.plane import DataPlane
from imgclf.service.lifecycle import extension as lifecycle
from imgclf.service.metrics import current_metrics

if TYPE_CHECKING:  # the settings tree imports the parsers of this layer: a type only, no cycle
    from imgclf.service.settings import ServingSettings

EXTENSION = "imgclf.dataplane"


def init_app(app: Flask, config: ServingSettings) -> DataPlane:
    """Create the app's data plane over its version manager (created here too), budget and in-flight count."""
    metrics = current_metrics(app)
    in_flight = InFlight()
    models = lifecycle.init_app(app, config, metrics, expected=in_flight.count)
    plane = DataPlane(models, Budget.from_config(config, metrics.registry), in_flight, config.max_instances)
    app.extensions[EXTENSION] = plane
    return plane


def current_plane(app: Flask | None = None) -> DataPlane:
    """Return the data plane of ``app`` (by default the app handling this request)."""
    return (app or current_app).extensions[EXTENSION]
