"""The version manager as a Flask extension: :func:`init_app` creates it, :func:`current_models` returns it.

gunicorn's hooks find it under :data:`EXTENSION` to hold a worker back until its models are loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Flask, current_app

from imgclf.service.lifecycle.manager import Observer, VersionManager

if TYPE_CHECKING:  # the settings tree imports the parsers of this layer: a type only, no cycle
    from imgclf.service.settings import ServingSettings

EXTENSION = "imgclf.models"


def init_app(app: Flask, config: ServingSettings, metrics: Observer | None = None,
             expected: Callable[[str], int] | None = None) -> VersionManager:
    """Create the app's version manager (``metrics``: where load times and batches go; ``expected``: requests
    in flight by model).

    Loading starts with :meth:`VersionManager.start`, once the app is complete.
    """
    manager = VersionManager(config, metrics, expected=expected)
    app.extensions[EXTENSION] = manager
    return manager


def current_models(app: Flask | None = None) -> VersionManager:
    """Return the version manager of ``app`` (by default the app handling this request)."""
    return (app or current_app).extensions[EXTENSION]
