"""The upload page: ``GET /`` and its static files under ``/static/``.

The page is plain HTML, CSS and JavaScript shipped in ``service/web/`` (no CDN,
no build step); it talks to the JSON API like any other client.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

WEB_DIR = Path(__file__).parent  # index.html, app.js, style.css beside this module

bp = Blueprint("web", __name__, static_folder=WEB_DIR, static_url_path="/static")

# The page loads only its own files; the annotated image arrives as a data: URL and the
# chosen photo's preview as a blob: URL. Labels are inserted as text, and this header is
# the second line of defence should that ever change.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                           "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")


@bp.get("/")
def index() -> Response:
    """Serve the upload page."""
    response = send_from_directory(WEB_DIR, "index.html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


@bp.after_request
def _nosniff(response: Response) -> Response:
    """Keep browsers from guessing the type of the page and its static files."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
