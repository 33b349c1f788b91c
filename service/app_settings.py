"""The settings tree as a Flask extension: :func:`init_app` stores it, :func:`current_settings` reads it.

:func:`current_config` returns the serving section, the one the data plane, the servables
and the life cycle read (its fields keep the names the settings always had).
"""

from __future__ import annotations

from flask import Flask, current_app

from imgclf.service.settings import ServingSettings, Settings

EXTENSION = "imgclf.config"


def init_app(app: Flask, settings: Settings) -> None:
    """Attach ``settings`` to ``app`` and apply the settings Flask itself enforces (the upload and part limits)."""
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_upload_bytes
    app.config["MAX_FORM_PARTS"] = settings.server.max_form_parts
    app.extensions[EXTENSION] = settings


def current_settings(app: Flask | None = None) -> Settings:
    """Return the settings tree of ``app`` (by default the app handling this request)."""
    return (app or current_app).extensions[EXTENSION]


def current_config(app: Flask | None = None) -> ServingSettings:
    """Return the serving section of ``app``'s settings (by default the app handling this request)."""
    return current_settings(app).serving
