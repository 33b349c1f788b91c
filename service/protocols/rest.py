"""What the REST protocols share: request bodies read whole, and errors answered as JSON.

Every error becomes ``{"error": "<message>"}`` with its status, in one place:
the typed errors of :mod:`imgclf.core.errors` (400, 404, 413, 415, 503 with
Retry-After) and werkzeug's own (404 and 405 for unknown routes and methods,
413 for a body over the upload limit). Anything else is a bug: 500, logged,
and the worker lives on.
"""

from __future__ import annotations

import io
import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from imgclf.core.errors import (
    BadRequest,
    ImageTooLarge,
    ImgclfError,
    InvalidImage,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    UnsupportedImageType,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024  # bytes per read of a chunked body


def read_streamed_body() -> None:
    """Read a body sent without Content-Length (chunked) before any view does: 413 over the limit, 400 if malformed.

    Registered with ``app.before_request``. Werkzeug cuts such a body at
    ``MAX_CONTENT_LENGTH`` without a word (a view would see a truncated image or
    JSON and blame the client's data), and a malformed chunk raises the server's
    own parse error in the view (a 500). Read here once, the body then reaches
    every view as if it had come with a Content-Length.

    Raises:
        RequestEntityTooLarge: the body is longer than ``MAX_CONTENT_LENGTH``.
        BadRequest: the server cannot read the body (bad chunk size, missing terminator, disconnect).
    """
    environ = request.environ
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower() or "wsgi.input_terminated" not in environ:
        return  # no body, a Content-Length body (werkzeug checks it), or one the server cannot delimit (ignored)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    body = bytearray()
    try:
        while chunk := stream.read(_READ_SIZE if limit is None else min(_READ_SIZE, limit + 1 - len(body))):
            body += chunk
            if limit is not None and len(body) > limit:
                raise RequestEntityTooLarge()
    except RequestEntityTooLarge:
        raise
    except Exception as exc:
        raise BadRequest(f"cannot read the request body: {type(exc).__name__}: {exc}") from exc
    environ["wsgi.input"] = io.BytesIO(bytes(body))
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)


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


def _too_large(app: Flask) -> str:
    """Say which limit a 413 of werkzeug's hit: the body's size, or (a multipart body within it) its parts."""
    limit = app.config.get("MAX_CONTENT_LENGTH")
    length = request.content_length
    if request.mimetype == "multipart/form-data" and (not limit or (length is not None and length <= limit)):
        field = app.config.get("MAX_FORM_MEMORY_SIZE")
        field_limit = f", or a text field over {field:,} bytes" if isinstance(field, int) else ""
        return (f"the multipart body holds more than {app.config.get('MAX_FORM_PARTS')} parts "
                f'(IMGCLF_MAX_FORM_PARTS){field_limit}; send the image as one file field "image"')
    return f"request body is over the limit of {limit} bytes" if limit else ""


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
            message = _too_large(app) or message
        response = jsonify(error=message)
        response.status_code = exc.code or 500
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # a bug: say so without leaking internals, keep the worker alive
        log.exception("unhandled error")
        return jsonify(error=f"internal error ({type(exc).__name__}); see the server log"), 500
