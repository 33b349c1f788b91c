"""Read what a POST /predict request sends: the image (multipart, raw body or JSON base64) and its parameters.

Bad input is refused with clear messages: which fields were received, what the
base64 looked like, which range ``top_k`` must be in.
"""

from __future__ import annotations

import json
import re

from flask import Request

from imgclf.core.errors import BadRequest, UnsupportedMediaType
from imgclf.core.values import json_type, short
from imgclf.service.protocols.b64 import B64_FIELD, decode_b64

IMAGE_FIELD = "image"  # the multipart field that carries the file
MODEL_FIELD = "model"  # the parameter (query, JSON or form field) that names the model
ACCEPTED = ('multipart/form-data (field "image"), application/json ({"b64": ...}), '
            "image/* or application/octet-stream")
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")  # bounded: int() of a huge digit string raises
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_JSON_CACHE = "imgclf.json_body"  # request.environ key: the body is parsed once per request


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
                         f"received {json_type(body)}")
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
        raise BadRequest(f'"{MODEL_FIELD}" must be a string naming a served model; received {short(value)}')
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
        raise BadRequest(f"top_k must be an integer between 1 and {n_labels}; received {short(value)}")
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
