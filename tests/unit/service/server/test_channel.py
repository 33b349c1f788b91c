"""The channel worker's requests and answers: the environ gunicorn's own parser makes, its limits, the answer's head."""

from __future__ import annotations

import json
import socket
import threading

import h11
import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.errors import LimitRequestLine
from gunicorn.http.parser import RequestParser

from imgclf.service.server.channel import ChannelServer, Limits
from imgclf.service.server.frames import HEADER, FrameReader, parse_hello, request_frame

SOCKET = "/tmp/imgclf-front/gunicorn.sock"
COMPARED = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SCRIPT_NAME", "SERVER_NAME", "SERVER_PORT",
            "SERVER_PROTOCOL", "CONTENT_TYPE", "CONTENT_LENGTH", "wsgi.url_scheme", "wsgi.input_terminated")


def frame_head(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    return request_frame(1, method, target, fields, 0)[HEADER.size:]


def gunicorns_environ(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], body: bytes) -> dict:
    """The environ gunicorn's own parser and WSGI code make of the same request sent as HTTP/1.1."""
    data = b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method, target, b"".join(b"%s: %s\r\n" % f for f in fields), body)
    request = next(RequestParser(Config(), [data], ("", 0)))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        _, environ = wsgi.create(request, ours, "", SOCKET, Config())
    environ["wsgi.input"] = environ["wsgi.input"].read()
    return environ


@pytest.mark.parametrize("method, target, fields, body", [
    (b"GET", b"/healthz", [(b"host", b"localhost:8000")], b""),
    (b"POST", b"/predict?top_k=3&model=flowers", [(b"host", b"example.org"), (b"content-type", b"image/jpeg"),
                                                   (b"content-length", b"4")], b"\xff\xd8ab"),
    (b"GET", b"/v1/models/a%20b%2Fc/versions/2?x=%20&y", [(b"host", b"h"), (b"accept", b"*/*")], b""),
    (b"POST", b"/v2/models/m/infer", [(b"host", b"h:1"), (b"x-a", b"1"), (b"x-a", b"2"), (b"x_b", b"dropped"),
                                      (b"content-length", b"2"), (b"x-forwarded-for", b"9.9.9.9")], b"{}"),
    (b"GET", b"/caf%C3%A9#frag", [(b"host", b"h")], b""),
    (b"OPTIONS", b"http://example.org:81/abs?q=1", [(b"host", b"example.org:81")], b""),
])
def test_the_environ_is_the_one_gunicorns_parser_makes(method, target, fields, body):
    theirs = gunicorns_environ(method, target, fields, body)
    ours = ChannelServer(None, 2).environ(frame_head(method, target, fields), body)
    assert {k: ours.get(k) for k in COMPARED} == {k: theirs.get(k) for k in COMPARED}
    assert {k: v for k, v in ours.items() if k.startswith("HTTP_")} == \
        {k: v for k, v in theirs.items() if k.startswith("HTTP_")}
    assert ours["wsgi.input"].read() == theirs["wsgi.input"]


def answer_of(server: ChannelServer, method: bytes, target: bytes, fields=((b"host", b"h"),), body=b""):
    """Return (status, fields, body) of the server's answer, read by h11 as a client reads it."""
    head, answer_body = server.answer(frame_head(method, target, list(fields)), body)
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=target, headers=[("Host", "h")]))
    client.receive_data(head + b"\r\n" + answer_body)
    response = client.next_event()
    data = b""
    while isinstance(event := client.next_event(), h11.Data):
        data += event.data
    assert isinstance(event, h11.EndOfMessage), event
    return response.status_code, dict(response.headers), data


def app_answering(status: str, headers: list[tuple[str, str]], chunks: list[bytes]):
    def app(environ, start_response):
        start_response(status, headers)
        return iter(chunks)
    return app


def test_the_answer_is_framed_by_its_length_without_hop_by_hop_fields():
    server = ChannelServer(app_answering("200 OK", [("Content-Type", "application/json"), ("Content-Length", "99"),
                                                    ("Connection", "keep-alive"), ("Server", "werkzeug"),
                                                    ("Transfer-Encoding", "chunked"), ("X-Thing", "1")],
                                         [b'{"a":', b"", b" 1}"]), 2)
    status, fields, body = answer_of(server, b"GET", b"/x")
    assert status == 200 and body == b'{"a": 1}' and fields[b"content-length"] == b"8"
    assert fields[b"server"] == b"imgclf" and fields[b"x-thing"] == b"1" and b"date" in fields
    assert b"connection" not in fields and b"transfer-encoding" not in fields


@pytest.mark.parametrize("method, status", [(b"HEAD", "200 OK"), (b"GET", "204 No Content"),
                                            (b"GET", "304 Not Modified")])
def test_no_body_and_no_length_for_head_204_and_304(method, status):
    server = ChannelServer(app_answering(status, [("Content-Length", "5")], [b"hello"]), 2)
    head, body = server.answer(frame_head(method, b"/x", [(b"host", b"h")]), b"")
    assert body == b"" and b"content-length" not in head.lower() and head.startswith(b"HTTP/1.1 " + status.encode())


def test_gunicorns_limits_are_kept_with_its_answers():
    server = ChannelServer(app_answering("200 OK", [], [b"ok"]), 2, limits=Limits(4094, 100, 8190))
    status, _, body = answer_of(server, b"GET", b"/" + b"x" * 5000)
    with pytest.raises(LimitRequestLine) as theirs:  # gunicorn's own parser, on the same request line
        gunicorns_environ(b"GET", b"/" + b"x" * 5000, [(b"host", b"h")], b"")
    assert status == 414 and json.loads(body)["error"] == str(theirs.value) == "Request Line is too large (5014 > 4094)"
    status, _, body = answer_of(server, b"GET", b"/", [(b"host", b"h"), (b"x-big", b"y" * 9000)])
    assert status == 431 and "limit request headers fields size" in json.loads(body)["error"]
    status, _, body = answer_of(server, b"GET", b"/", [(b"x-%d" % i, b"1") for i in range(101)])
    assert status == 431 and "limit request headers fields'" in json.loads(body)["error"]
    assert answer_of(server, b"GET", b"/", [(b"x-%d" % i, b"1") for i in range(100)])[0] == 200


def test_an_app_that_raises_or_answers_a_bad_field_is_a_500(caplog):
    def raising(environ, start_response):
        raise RuntimeError("boom")

    for app in (raising, app_answering("200 OK", [("X-Bad", "a\r\nInjected: 1")], [b"x"]),
                app_answering("200 OK", [("Bad Name", "1")], [b"x"])):
        status, fields, body = answer_of(ChannelServer(app, 2), b"GET", b"/x")
        assert status == 500 and json.loads(body) == {"error": "Internal Server Error"} and b"injected" not in fields
    assert "boom" in caplog.text


def test_a_worker_takes_one_connection_says_hello_and_answers_frames_on_its_threads():
    seen_threads = set()

    def app(environ, start_response):
        seen_threads.add(threading.current_thread().name)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(f"\0imgclf-test-channel-{id(listener)}")  # abstract: no file
    listener.listen(4)
    server, running = ChannelServer(app, 3, name="t"), [True]
    thread = threading.Thread(target=server.serve, args=(listener, lambda: running[0]), daemon=True)
    thread.start()
    first, second = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    first.connect(listener.getsockname())
    second.connect(listener.getsockname())  # waits in the backlog: the worker has its connection
    reader = FrameReader()
    frames = []
    first.sendall(b"".join(request_frame(i, b"GET", b"/%d" % i, [(b"host", b"h")], 0) for i in range(1, 7)))
    while len(frames) < 7:
        frames += reader.feed(first.recv(65536))
    assert parse_hello(frames[0][1])[1] == 3
    assert sorted((i, body) for i, _, body in frames[1:]) == [(i, b"/%d" % i) for i in range(1, 7)]
    second.settimeout(0.3)
    with pytest.raises(TimeoutError):
        second.recv(100)  # no hello: nobody took it
    first.close()  # the front closed the first: the worker takes the next one
    second.settimeout(5)
    assert parse_hello(FrameReader().feed(second.recv(100))[0][1])[1] == 3
    running[0] = False
    assert FrameReader().feed(second.recv(100))[0][1] == b"bye"  # stopping: bye, then it waits for the close
    second.close()
    thread.join(5)
    assert not thread.is_alive() and seen_threads <= {"t-0", "t-1", "t-2"} and server.served == 6
