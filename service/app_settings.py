"""The app's configuration as a Flask extension: :func:`init_app` stores it, :func:`current_config` reads it."""

from __future__ import annotations

from flask import Flask, current_app

from imgclf.service.settings import ServiceConfig

EXTENSION = "imgclf.config"


def init_app(app: Flask, config: ServiceConfig) -> None:
    """Attach ``config`` to ``app`` and apply the settings Flask itself enforces (the upload limit)."""
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.extensions[EXTENSION] = config


def current_config(app: Flask | None = None) -> ServiceConfig:
    """Return the configuration of ``app`` (by default the app handling this request)."""
    return (app or current_app).extensions[EXTENSION]
