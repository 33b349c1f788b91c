"""Read what a request sends: the image (multipart, raw body or JSON base64) and its parameters.

Shared by the routes so every one of them refuses bad input with the same
clear messages: which fields were received, what the base64 looked like,
which range ``top_k`` must be in.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re

from flask import Request, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from imgclf.service.dataplane.errors import BadRequest, UnsupportedMediaType

IMAGE_FIELD = "image"  # the multipart field that carries the file
B64_FIELD = "b64"  # the JSON field that carries the base64-encoded image
MODEL_FIELD = "model"  # the parameter (query, JSON or form field) that names the model
ACCEPTED = ('multipart/form-data (field "image"), application/json ({"b64": ...}), '
            "image/* or application/octet-stream")
_DATA_URL = re.compile(r"^data:[^,;]*(;[^,;]*)*;base64,", re.IGNORECASE)  # what a browser's FileReader gives
_WHITESPACE = re.compile(r"\s+")
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")  # bounded: int() of a huge digit string raises
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_JSON_CACHE = "imgclf.json_body"  # request.environ key: the body is parsed once per request
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


def decode_b64(value: str) -> bytes:
    """Return the bytes of a base64 string (standard or URL-safe alphabet, padding optional).

    Whitespace (MIME line breaks) and a ``data:...;base64,`` prefix are allowed.

    Raises:
        BadRequest: not a string, empty, or not base64; the message shows what was received.
    """
    if not isinstance(value, str):
        raise BadRequest(f"b64 must be a string of base64; received {_json_type(value)}")
    text = _WHITESPACE.sub("", _DATA_URL.sub("", value.strip(), count=1))
    if not text:
        raise BadRequest("b64 is empty: expected the base64-encoded image")
    if "-" in text or "_" in text:  # URL-safe alphabet (TF Serving's clients send either)
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4) if len(text) % 4 != 1 else ""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"b64 is not valid base64 ({exc}); received {len(value)} characters "
                         f"starting {value[:24]!r}") from exc


def json_object(request: Request) -> dict:
    """Return the request's JSON body, which must be an object.

    Raises:
        BadRequest: empty body, malformed JSON, or JSON that is not an object.
    """
    cached = request.environ.get(_JSON_CACHE)
    if cached is not None:
        return cached
    data = request.get_data(cache=True)
    if not data.strip():
        raise BadRequest(f"empty body: expected a JSON object like {{\"{B64_FIELD}\": \"<base64 image>\"}}")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; absurd nesting
        raise BadRequest(f"malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"the JSON body must be an object like {{\"{B64_FIELD}\": ...}}; "
                         f"received {_json_type(body)}")
    request.environ[_JSON_CACHE] = body
    return body


def image_from_request(request: Request) -> bytes:
    """Return the encoded image a request carries: multipart field "image", raw body, or JSON {"b64": ...}.

    Raises:
        BadRequest: empty body, no "image" field, malformed JSON, no or bad "b64".
        UnsupportedMediaType: any other content type.
    """
    mimetype = request.mimetype
    if not mimetype:
        if not request.content_length and not request.get_data(cache=True):
            raise BadRequest(f"empty body: send an image as {ACCEPTED}")
        raise UnsupportedMediaType(f"the request has no Content-Type; send {ACCEPTED}")
    if mimetype == "multipart/form-data":
        upload = request.files.get(IMAGE_FIELD)
        if upload is None:
            if IMAGE_FIELD in request.form:  # curl -F image=photo.jpg instead of -F image=@photo.jpg
                raise BadRequest(f'multipart field "{IMAGE_FIELD}" is text, not a file '
                                 f"(with curl: -F {IMAGE_FIELD}=@photo.jpg)")
            received = sorted(set(request.files) | set(request.form))
            raise BadRequest(f'multipart body has no file field "{IMAGE_FIELD}"; received fields: {_names(received)}')
        return upload.read()
    if request.is_json:
        body = json_object(request)
        if B64_FIELD not in body:
            raise BadRequest(f'the JSON body needs a "{B64_FIELD}" field with the base64-encoded image; '
                             f"received keys: {_names(body)}")
        return decode_b64(body[B64_FIELD])
    if mimetype.startswith("image/") or mimetype == "application/octet-stream":
        data = request.get_data(cache=True)
        if not data:
            raise BadRequest(f"empty body: the {mimetype} request carries no image bytes")
        return data
    raise UnsupportedMediaType(f"unsupported content type {mimetype!r}; send {ACCEPTED}")


def request_param(request: Request, name: str):
    """Return a parameter: the query string's, else the JSON body's field, else the multipart form's; or None."""
    value = request.args.get(name)
    if value not in (None, ""):  # an empty query value (an HTML form's blank field) means "not given"
        return value
    if request.is_json:
        value = json_object(request).get(name)
    elif request.mimetype == "multipart/form-data":
        value = request.form.get(name)
    return None if value == "" else value


def requested_model(request: Request) -> str | None:
    """Return the model a request names: ``?model=``, else the JSON body's or multipart form's "model"; or None.

    The query string wins, as it does for ``top_k`` and ``annotate``.

    Raises:
        BadRequest: the body's "model" is not a string (a number, a list...).
    """
    value = request_param(request, MODEL_FIELD)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f'"{MODEL_FIELD}" must be a string naming a served model; received {_short(value)}')
    return value or None


def parse_top_k(value, n_labels: int, default: int) -> int:
    """Return ``top_k`` as an int in 1..n_labels; None gives ``default`` cut to ``n_labels``.

    Raises:
        BadRequest: not an integer, or outside 1..n_labels (the message names the range).
    """
    if value is None:
        return max(1, min(int(default), n_labels))
    if isinstance(value, bool):  # JSON true is not 1 here
        k = None
    elif isinstance(value, int):
        k = value
    elif isinstance(value, float) and value.is_integer():
        k = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        k = int(value.strip())
    else:
        k = None
    if k is None or not 1 <= k <= n_labels:
        raise BadRequest(f"top_k must be an integer between 1 and {n_labels}; received {_short(value)}")
    return k


def parse_bool(value, name: str, default: bool = False) -> bool:
    """Return a flag given as a JSON boolean, 0/1, or "true"/"false"/"1"/"0" (any case); None gives ``default``.

    Raises:
        BadRequest: anything else, naming the parameter.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadRequest(f"{name} must be true, false, 1 or 0; received {value!r}")


def _names(names) -> str:
    """Return the first few received field names, for an error message."""
    names = [str(name)[:40] for name in names]
    return (", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")) or "none"


def _short(value) -> str:
    """Return the repr of a received value, cut so a huge one cannot flood the message."""
    if isinstance(value, int) and abs(value) >= 10**30:  # JSON allows 4300 digits
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value) -> str:
    """Name a JSON value's type as a client would say it."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)
