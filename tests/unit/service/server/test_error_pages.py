"""gunicorn's own error answers (bad request line, 414, 431, ...) are the service's JSON, with gunicorn's status."""

from __future__ import annotations

import json
import logging
import socket
import types

import h11
import pytest
from gunicorn import util
from gunicorn.http.errors import InvalidRequestLine, LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.base import Worker

from imgclf.service.server import error_pages


def answer_of(data: bytes) -> tuple[int, dict, dict]:
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    http.receive_data(data)
    head, body = http.next_event(), http.next_event()
    return head.status_code, dict(head.headers), json.loads(body.data)


@pytest.mark.parametrize("exc, status, message", [
    (LimitRequestLine(5012, 4094), 414, "Request Line is too large (5012 > 4094)"),
    (LimitRequestHeaders("Request Header Fields Too Large"), 431, "Error parsing headers: 'Request Header Fields"),
    (InvalidRequestLine("GET /x HTTP/1.1"), 400, "Invalid Request Line 'Invalid HTTP request line: 'GET /x"),
])
def test_a_worker_answers_gunicorns_own_errors_as_json(monkeypatch, exc, status, message):
    monkeypatch.setattr(util, "write_error", util.write_error)  # restored after the test
    error_pages.install()
    ours, theirs = socket.socketpair()
    worker = types.SimpleNamespace(log=logging.getLogger("test.gunicorn"))
    Worker.handle_error(worker, None, ours, None, exc)  # gunicorn's own status mapping, then our writer
    ours.close()
    got_status, headers, body = answer_of(theirs.recv(65536))
    assert got_status == status and headers[b"content-type"] == b"application/json"
    assert body["error"].startswith(message) and headers[b"connection"] == b"close"


def test_an_empty_message_says_the_reason():
    ours, theirs = socket.socketpair()
    error_pages.write_json_error(ours, 500, "Internal Server Error", "")
    assert answer_of(theirs.recv(65536))[::2] == (500, {"error": "Internal Server Error"})
