"""gunicorn's own error answers as the service's JSON ``{"error": "..."}``, not its HTML page.

gunicorn answers a request it cannot parse itself, before the app sees it: 400 for a bad request line,
method, header or chunk, 414 for a request line over ``limit_request_line`` (4094 bytes), 431 for too
many or too large header fields, 417, 501, and 500 when the app's answer itself is broken. It writes
those with :func:`gunicorn.util.write_error`, an HTML page. Behind the front most such requests are
refused by the front first (as JSON), but not all: gunicorn's line and field limits are tighter than the
front's 16 KiB head, and its parser is stricter than h11 in places; with ``IMGCLF_FRONT=0`` every one
reaches gunicorn. Each worker therefore replaces ``write_error`` (same signature, same status and
reason, gunicorn's message) with :func:`write_json_error`: one function of gunicorn's, where overriding
the worker's ``handle_error`` would copy its 90 lines of status mapping.
"""

from __future__ import annotations

import json

from gunicorn import util


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's error answer ``status_int`` as ``{"error": mesg}`` (the reason if mesg is empty)."""
    body = json.dumps({"error": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1", "replace") + body)


def install() -> None:
    """Make this process's gunicorn write its error answers as JSON (called in each worker)."""
    util.write_error = write_json_error
