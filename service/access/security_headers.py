"""Security headers on every answer: no sniffing, no caching of API answers, no framing, no referrer.

The page sets its own Content-Security-Policy (:mod:`imgclf.service.web.routes`,
``frame-ancestors 'none'`` included); API answers get one that allows nothing,
so a JSON or JPEG answer opened in a browser can run no script and be framed
by no page. ``Server`` is left to the HTTP server in front: gunicorn sends
``Server: gunicorn`` without a version.
"""

from __future__ import annotations

from flask import Flask, Response, request

PAGE_ENDPOINTS = frozenset({"web.index", "web.static"})
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
ALWAYS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def add_headers(response: Response) -> Response:
    """Add the security headers to ``response`` (an after_request hook); set ones are kept."""
    for name, value in ALWAYS.items():
        response.headers.setdefault(name, value)
    if request.endpoint not in PAGE_ENDPOINTS:
        response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault("Content-Security-Policy", API_CSP)
    return response


def init_app(app: Flask) -> None:
    """Install the headers hook."""
    app.after_request(add_headers)
