"""The HTTP service (Flask under gunicorn): app factory, servables, routes, batching, metrics, the page.

gunicorn runs ``"imgclf.service:create_app()"``: every worker builds its own app and
loads its own models. ``create_app`` is imported on first use, so the command-line
modules of this package (``imgclf serve``, ``imgclf predict``) never import Flask.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from imgclf.service.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
