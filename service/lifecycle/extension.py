"""The version manager as a Flask extension: :func:`init_app` creates it, :func:`current_models` returns it.

gunicorn's hooks find it under :data:`EXTENSION` to hold a worker back until its models are loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, current_app

from imgclf.service.app_settings import current_config
from imgclf.service.lifecycle.manager import Observer, VersionManager

EXTENSION = "imgclf.models"


def init_app(app: Flask, metrics: Observer | None = None, expected: Callable[[str], int] | None = None
             ) -> VersionManager:
    """Create the app's version manager (its config; ``metrics``: where load times and batches go;
    ``expected``: requests in flight by model).

    Loading starts with :meth:`VersionManager.start`, once the app is complete.
    """
    manager = VersionManager(current_config(app), metrics, expected=expected)
    app.extensions[EXTENSION] = manager
    return manager


def current_models(app: Flask | None = None) -> VersionManager:
    """Return the version manager of ``app`` (by default the app handling this request)."""
    return (app or current_app).extensions[EXTENSION]
