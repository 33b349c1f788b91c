"""Errors of the HTTP layer, and the one place that maps every error to a JSON response."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from imgclf.core.errors import ImageTooLarge, ImgclfError, InvalidImage, ModelNotFound, UnsupportedImageType

log = logging.getLogger(__name__)


class BadRequest(ImgclfError):
    """Malformed input: missing field, bad JSON, wrong shape, bad parameter (400)."""


class PayloadTooLarge(ImgclfError):
    """A body or a request over a size limit (413)."""


class UnsupportedMediaType(ImgclfError):
    """A content type the route does not take (415)."""


class NotReady(ImgclfError):
    """Models are still loading or warming up (503)."""


STATUS = (  # most specific first
    (UnsupportedImageType, 415),
    (ImageTooLarge, 413),
    (InvalidImage, 400),
    (ModelNotFound, 404),
    (BadRequest, 400),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (NotReady, 503),
)


def status_of(exc: Exception) -> int:
    """Return the HTTP status for an imgclf error (500 for anything unexpected)."""
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def register_error_handlers(app: Flask) -> None:
    """Answer every error as ``{"error": "<message>"}`` with the right status."""

    @app.errorhandler(ImgclfError)
    def imgclf_error(exc: ImgclfError):
        status = status_of(exc)
        response = jsonify(error=str(exc))
        if status == 503:
            response.headers["Retry-After"] = "1"
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body is over the limit of {limit} bytes" if limit else message
        response = jsonify(error=message)
        response.status_code = exc.code or 500
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # a bug: say so without leaking internals, keep the worker alive
        log.exception("unhandled error")
        return jsonify(error=f"internal error ({type(exc).__name__}); see the server log"), 500
