"""The common ``POST /predict`` without Flask: a WSGI layer that answers it, and hands every other request on.

Most requests a deployed classifier gets are alike: a JPEG as multipart field
``image`` (or as the raw body), perhaps ``top_k`` or ``model`` in the query, JSON
wanted back, and no browser Origin. For those, Flask's request context,
routing, hooks, werkzeug's form parser and its response object cost about a
millisecond of CPU per request, which is a sixth of what a small model costs.
:class:`LeanPredict` answers exactly these requests itself, through the same
data plane (:class:`~imgclf.service.dataplane.plane.DataPlane`: the same lease,
in-flight count, budgets, decoding and batcher) and the same answer
(:mod:`imgclf.service.protocols.predict.answer`), with the headers Flask's hooks
would add and the same request metrics.

It takes a request only when nothing in it needs Flask. Anything else goes to
the app, the reference, unchanged:

* another method or path, a chunked body, or a body over ``MAX_CONTENT_LENGTH``;
* API keys required, a ``Host`` outside ``IMGCLF_ALLOWED_HOSTS``, or a browser's
  ``Origin`` or ``Sec-Fetch-Site`` header (the cross-site rules);
* an ``Accept`` other than none, ``*/*`` or ``application/json``; ``annotate``;
* a JSON body, a query string with characters that need decoding, or a
  multipart body this strict reader does not take whole (a part header other
  than Content-Disposition and Content-Type or not printable ASCII, a
  quoted-string with escapes, more than :data:`MAX_PARTS` parts, a text field
  over :data:`MAX_TEXT_BYTES` or not UTF-8, anything but CRLF delimiters);
* and any error. One met before the model is leased sends the request to
  Flask whole (with the body it sent, read once and kept here). One met after
  (404 or 503 from the lease, a bad ``top_k``, a picture that cannot be
  served, a busy decoder) is the one the view would raise at that point, on
  the same values: Flask renders it (a before_request hook raises it), so its
  status, message, headers and metrics are the app's, and nothing runs twice.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flask import Flask, request

from imgclf.service.access.hosts import host_allowed
from imgclf.service.access.security_headers import ALWAYS, API_CSP
from imgclf.service.dataplane.plane import THRESHOLD_PARAMETER, DataPlane, InferenceRequest
from imgclf.service.metrics import Metrics
from imgclf.service.protocols.predict.answer import answer_body, best_labels, image_classifier
from imgclf.service.protocols.predict.request import IMAGE_FIELD, MODEL_FIELD, parse_bool, parse_top_k

if TYPE_CHECKING:  # a type only
    from imgclf.service.settings import Settings

EXTENSION = "imgclf.lean_predict"
ERROR_KEY = "imgclf.lean_predict.error"  # the WSGI environ key of an error for Flask to render
PATH = "/predict"  # the path taken, and the URL rule the request metrics label its answers with
MAX_PARTS = 8  # more parts than a browser form sends: werkzeug's parser (and its part limit) takes them
MAX_TEXT_BYTES = 1024  # a text field longer than any parameter's value goes to werkzeug's parser
JSON_ACCEPTS = frozenset({"", "*/*", "application/json"})
RAW_TYPES = ("image/", "application/octet-stream")
_QUERY = re.compile(r"[A-Za-z0-9_.\-=&]*")  # no percent-escapes, no "+": split as werkzeug would, without decoding
_MULTIPART = re.compile(r'multipart/form-data;[ \t]*boundary=(?:"([0-9A-Za-z\'()+_,\-./:=? ]{1,70})"'
                        r"|([0-9A-Za-z'()+_,\-./:=?]{1,70}))[ \t]*", re.IGNORECASE)
_DISPOSITION = re.compile(rb'form-data; name="([^"\\\r\n]*)"(?:; filename="([^"\\\r\n]*)")?', re.IGNORECASE)
_HEAD = re.compile(rb"[\x20-\x7e]+(?:\r\n[\x20-\x7e]+)*")
_PART_HEADERS = frozenset({b"content-disposition", b"content-type"})


class Fallback(Exception):
    """The request is not one the lean path takes whole: Flask answers it."""


class Failed(Exception):
    """The request failed once its model was leased (``error``): Flask renders that error, without running the
    request again."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def raise_lean_error() -> None:
    """Raise the error the lean path met for this request, if any (a before_request hook): Flask's error
    handlers and hooks then answer it exactly as they answer the view's own errors."""
    error = request.environ.pop(ERROR_KEY, None)
    if error is not None:
        raise error


def query_values(query: str) -> dict[str, str]:
    """Return the first value of each name of a query string of plain characters (``a=1&b&a=2``: a 1, b "").

    Raises:
        Fallback: the query has characters that need decoding (``%``, ``+``, anything outside ``[A-Za-z0-9_.-=&]``).
    """
    if not _QUERY.fullmatch(query):
        raise Fallback
    values: dict[str, str] = {}
    for pair in query.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            values.setdefault(name, value)
    return values


def multipart_fields(body: bytes, content_type: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """Return the files (by field name, the first of each) and the text fields of a plain multipart body.

    Raises:
        Fallback: the body is not one this reader takes whole (see the module's notes); werkzeug then reads it.
    """
    match = _MULTIPART.fullmatch(content_type)
    if match is None:
        raise Fallback
    delimiter = b"\r\n--" + (match.group(1) or match.group(2)).encode("ascii")
    # Every delimiter line must be CRLF --boundary then CRLF or "--": werkzeug also takes LF alone and spaces.
    if not (b"\r\n" + body).startswith(delimiter + b"\r\n") or body.count(delimiter[2:]) != body.count(delimiter) + 1:
        raise Fallback
    chunks = (b"\r\n" + body).split(delimiter)
    last = chunks[-1]
    if len(chunks) - 2 > MAX_PARTS or not last.startswith(b"--") \
            or any(not chunk.startswith(b"\r\n") for chunk in chunks[1:-1]):
        raise Fallback
    files: dict[str, bytes] = {}
    texts: dict[str, str] = {}
    for chunk in chunks[1:-1]:
        head, separator, content = chunk[2:].partition(b"\r\n\r\n")
        if not separator:
            raise Fallback
        name, filename = _part_name(head)
        if filename is not None:
            files.setdefault(name, content)
        elif len(content) > MAX_TEXT_BYTES:
            raise Fallback
        else:
            try:
                texts.setdefault(name, content.decode("utf-8"))
            except UnicodeDecodeError:
                raise Fallback from None
    return files, texts


def _part_name(head: bytes) -> tuple[str, str | None]:
    """Return a part's field name and file name (None for a text field) from its header block."""
    if not _HEAD.fullmatch(head):  # printable ASCII lines only: werkzeug reads others its own way
        raise Fallback
    name = filename = None
    for line in head.split(b"\r\n"):
        key, colon, value = line.partition(b":")
        key = key.lower()
        if not colon or key not in _PART_HEADERS:
            raise Fallback
        if key == b"content-disposition":
            match = _DISPOSITION.fullmatch(value.strip(b" "))
            if match is None or name is not None:
                raise Fallback
            name = match.group(1).decode("ascii")
            filename = None if match.group(2) is None else match.group(2).decode("ascii")
    if name is None:
        raise Fallback
    return name, filename


class LeanPredict:
    """The app's WSGI callable with the common /predict answered here (see the module's notes)."""

    def __init__(self, app: Flask, settings: Settings, plane: DataPlane, metrics: Metrics):
        self.flask = app.wsgi_app  # the app's own WSGI callable: every request not taken here
        self.app, self.plane, self.top_k_default = app, plane, settings.serving.top_k
        access = settings.access
        self.hosts = access.hosts
        vary = "Accept, Origin" if access.origins else "Accept"  # as the view and the cross-site hook set it
        self.headers = [("Vary", vary), *ALWAYS.items(), ("Cache-Control", "no-store"),
                        ("Content-Security-Policy", API_CSP)]
        self.metrics = metrics
        self.counted = self.timed = None  # the series, made at the first answer (none shows before, as in Flask)
        self.answered = 0  # requests answered here (the tests check which path took a request)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not (environ.get("PATH_INFO") == PATH and environ.get("REQUEST_METHOD") == "POST"):
            return self.flask(environ, start_response)
        body = self._body(environ)
        if body is None:
            return self.flask(environ, start_response)
        try:
            if len(body) != int(environ["CONTENT_LENGTH"]):  # the client sent less than it said, then closed
                raise Fallback
            status, headers, payload = self._answer(environ, body)
        except Failed as failed:  # the view would have raised it at the same point: Flask renders it
            environ[ERROR_KEY] = failed.error
            environ["wsgi.input"] = io.BytesIO(body)
            return self.flask(environ, start_response)
        except Exception:  # Fallback, or a request this path did not get as far as the model with
            environ["wsgi.input"] = io.BytesIO(body)  # what was read, for Flask to read again
            return self.flask(environ, start_response)
        start_response(status, headers)
        return [payload]

    def _body(self, environ: dict) -> bytes | None:
        """Return the body of a request the lean path may take (read whole: shorter than its Content-Length only
        when the client stopped sending), or None to leave it unread."""
        if (environ.get("HTTP_TRANSFER_ENCODING") or environ.get("HTTP_ORIGIN") or environ.get("HTTP_SEC_FETCH_SITE")
                or environ.get("HTTP_ACCEPT", "").strip() not in JSON_ACCEPTS or self.app.debug):
            return None
        if self.hosts and not host_allowed(environ.get("HTTP_HOST", ""), self.hosts):
            return None
        length = environ.get("CONTENT_LENGTH", "")
        limit = self.app.config.get("MAX_CONTENT_LENGTH")
        if not length.isdigit() or not int(length) or (limit is not None and int(length) > limit):
            return None
        return environ["wsgi.input"].read(int(length))

    def _answer(self, environ: dict, body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        started = time.perf_counter()
        query = query_values(environ.get("QUERY_STRING", ""))
        content_type = environ.get("CONTENT_TYPE", "")
        mimetype = content_type.partition(";")[0].strip().lower()
        if mimetype == "multipart/form-data":
            files, texts = multipart_fields(body, content_type)
            data = files.get(IMAGE_FIELD)
        elif mimetype.startswith(RAW_TYPES):
            data, texts = body, {}
        else:
            raise Fallback

        def param(name: str) -> str | None:  # the query's value, else the form's; "" is "not given"
            return query.get(name) or texts.get(name) or None

        if not data or parse_bool(param("annotate"), "annotate"):
            raise Fallback
        # From here on the checks come in the view's order, on the same values: an error is the one the view
        # would raise (the picture, top_k and annotate were already found good, as the view finds them).
        try:
            with self.plane.model(param(MODEL_FIELD)) as served:
                image_classifier(served)
                k = parse_top_k(param("top_k"), len(served.labels), self.top_k_default)
                answer = self.plane.infer(served, InferenceRequest(
                    [data], one_picture=True, unfamiliar_threshold=param(THRESHOLD_PARAMETER)))
                body = answer_body(served, answer, best_labels(served, answer, k), started)
        except Exception as exc:
            raise Failed(exc) from None
        payload = (self.app.json.dumps(body, separators=(",", ":")) + "\n").encode("utf-8")
        if self.counted is None:
            self.counted = self.metrics.requests.labels(PATH, "POST", "200")
            self.timed = self.metrics.request_seconds.labels(PATH)
        self.counted.inc()
        self.timed.observe(time.perf_counter() - started)
        self.answered += 1
        return "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                          *self.headers], payload


def init_app(app: Flask, settings: Settings, plane: DataPlane, metrics: Metrics) -> LeanPredict | None:
    """Put the lean path in front of the app's WSGI callable (``app.wsgi_app``); return it.

    Not where API keys are required (None): each request then passes the keys' and rate limit's hooks.
    """
    if settings.access.keys_required:
        return None
    lean = LeanPredict(app, settings, plane, metrics)
    app.before_request(raise_lean_error)
    app.wsgi_app = lean
    app.extensions[EXTENSION] = lean
    return lean
