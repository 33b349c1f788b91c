"""Base64 values as the protocols carry pictures in JSON (``{"b64": ...}``, a v2 BYTES element): one decoder.

Free of Flask: the REST protocols and gRPC use it alike.
"""

from __future__ import annotations

import base64
import binascii
import re

from imgclf.core.errors import BadRequest
from imgclf.core.values import json_type

B64_FIELD = "b64"  # the JSON field that carries base64-encoded bytes ({"b64": ...}), as TF Serving's REST API
_DATA_URL = re.compile(r"^data:[^,;]*(;[^,;]*)*;base64,", re.IGNORECASE)  # what a browser's FileReader gives
_WHITESPACE = re.compile(r"\s+")


def decode_b64(value: str) -> bytes:
    """Return the bytes of a base64 string (standard or URL-safe alphabet, padding optional).

    Whitespace (MIME line breaks) and a ``data:...;base64,`` prefix are allowed.

    Raises:
        BadRequest: not a string, empty, or not base64; the message shows what was received.
    """
    if not isinstance(value, str):
        raise BadRequest(f"b64 must be a string of base64; received {json_type(value)}")
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
