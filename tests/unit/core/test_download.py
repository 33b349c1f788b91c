"""imgclf.core.download: stream a URL into a file; every failure is one DownloadError that says what happened.

A loopback HTTP server in a thread plays the remote host; nothing leaves 127.0.0.1.
The caller's ``hint`` (what to do instead) belongs to failures a retry may not fix,
and to the retry advice of interrupted ones; never to answers the server gave.
"""

from __future__ import annotations

import gzip
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from imgclf.core import download as download_module
from imgclf.core.download import content_length, download, html_hint, show_progress
from imgclf.core.errors import DownloadError

HINT = "copy mnist.npz by hand and run fetch-mnist --from-file PATH"
BODY = bytes(range(256)) * 1024  # 256 KiB: several chunks


class _Handler(BaseHTTPRequestHandler):
    """Serve ``server.routes``: path → bytes, an int status, "truncate", "short", "stall", "gzip"."""

    def do_GET(self):
        route = self.server.routes.get(self.path, 404)
        if isinstance(route, int):
            self.send_error(route)
        elif route == "stall":  # headers, then silence
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            self.server.release.wait(10)
        elif route == "truncate":  # announce the whole body, send half, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif route == "gzip":  # encoded: the announced length is not the decoded one
            data = gzip.compress(BODY)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(route)))
            self.end_headers()
            self.wfile.write(route)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server in a thread; ``server.url(path)`` builds URLs."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes, httpd.release = {}, threading.Event()
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def _failure(url: str, target, **kwargs) -> str:
    with pytest.raises(DownloadError) as info:
        download(url, target, progress=False, **kwargs)
    return str(info.value)


def test_the_body_is_written_to_the_target(server, tmp_path):
    server.routes["/data.bin"] = BODY
    target = tmp_path / "data.bin.part"

    download(server.url("/data.bin"), target, timeout=5, progress=False, hint=HINT)

    assert target.read_bytes() == BODY


def test_an_encoded_body_is_decoded_and_not_checked_against_its_length(server, tmp_path):
    server.routes["/data.bin"] = "gzip"
    download(server.url("/data.bin"), tmp_path / "out", timeout=5, progress=False)
    assert (tmp_path / "out").read_bytes() == BODY


def test_a_refused_connection_says_offline_and_gives_the_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    url = f"http://127.0.0.1:{_closed_port()}/mnist.npz"

    message = _failure(url, tmp_path / "out", timeout=2, hint=HINT)

    assert message.startswith(f"cannot download {url}: this machine seems to be offline or 127.0.0.1 is unreachable")
    assert message.endswith(HINT)
    assert not (tmp_path / "out").exists()


def test_a_connect_timeout_says_offline_and_gives_the_hint(tmp_path, monkeypatch):
    """No route to the host within the timeout (a black-holed network): requests raises ConnectTimeout."""
    def black_hole(url, **kwargs):
        raise requests.ConnectTimeout(f"connect to {url} timed out")

    monkeypatch.setattr(download_module.requests, "get", black_hole)
    message = _failure("https://example.invalid/x.zip", tmp_path / "out", timeout=3, hint=HINT)

    assert "no connection to example.invalid within 3 s" in message and "offline" in message
    assert message.endswith(HINT)


def test_a_stalled_server_times_out_and_gives_the_hint(server, tmp_path):
    server.routes["/slow"] = "stall"
    message = _failure(server.url("/slow"), tmp_path / "out", timeout=0.5, hint=HINT)
    assert message == (f"download of {server.url('/slow')} stalled: no data from 127.0.0.1 for 0.5 s. "
                       f"Try again, or: {HINT}")


def test_a_body_cut_short_is_an_error_and_gives_the_hint(server, tmp_path):
    server.routes["/cut"] = "truncate"
    message = _failure(server.url("/cut"), tmp_path / "out", timeout=5, hint=HINT)
    # requests either notices the short body itself or hands it over and the length check below does
    assert f"broke off after {len(BODY) // 2} bytes" in message and message.endswith(f"Try again, or: {HINT}") \
        or message.endswith(f"received {len(BODY) // 2} of {len(BODY)} bytes (the connection was dropped); try again")


@pytest.mark.parametrize("hint", ["", "   "])
def test_without_a_hint_the_retry_advice_ends_cleanly(server, tmp_path, hint):
    server.routes["/slow"] = "stall"
    assert _failure(server.url("/slow"), tmp_path / "a", timeout=0.5, hint=hint).endswith("for 0.5 s. Try again.")


@pytest.mark.parametrize("hint", ["", "   "])
def test_without_a_hint_the_offline_message_ends_cleanly(tmp_path, monkeypatch, hint):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    offline = _failure(f"http://127.0.0.1:{_closed_port()}/x", tmp_path / "b", timeout=2, hint=hint)
    assert offline.endswith(")."), offline  # the reason, then nothing dangling


def test_an_http_error_names_the_status_without_the_hint(server, tmp_path):
    message = _failure(server.url("/missing.zip"), tmp_path / "out", timeout=5, hint=HINT)
    assert message == f"download of {server.url('/missing.zip')} failed: HTTP 404 Not Found"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url", ["ftp://example.com/x.zip", "example.com/x.zip", "http://", "not a url"])
def test_not_an_http_url_is_said_so_without_the_hint(tmp_path, url):
    message = _failure(url, tmp_path / "out", timeout=1, hint=HINT)
    assert message.startswith(f"{url!r} is not an http(s) URL to download from: ")
    assert HINT not in message


def test_a_target_that_cannot_be_written_names_its_folder(server, tmp_path):
    server.routes["/data.bin"] = BODY
    target = tmp_path / "no-such-folder" / "out"
    message = _failure(server.url("/data.bin"), target, timeout=5, hint=HINT)
    assert message == f"cannot write the download to {str(target.parent)!r}: No such file or directory"


def test_progress_goes_to_stderr_when_asked(server, tmp_path, capsys):
    server.routes["/data.bin"] = BODY
    download(server.url("/data.bin"), tmp_path / "out", timeout=5, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "data.bin" in captured.err and "256k" in captured.err.lower()


def test_progress_defaults_to_whether_stderr_is_a_terminal(monkeypatch):
    class Terminal:
        def __init__(self, tty):
            self.isatty = lambda: tty

    assert show_progress(True) is True and show_progress(False) is False
    monkeypatch.setattr(download_module.sys, "stderr", Terminal(True))
    assert show_progress(None) is True
    monkeypatch.setattr(download_module.sys, "stderr", Terminal(False))
    assert show_progress(None) is False


@pytest.mark.parametrize("headers, expected", [
    ({"Content-Length": "123"}, 123),
    ({"Content-Length": "123", "Content-Encoding": "identity"}, 123),
    ({"Content-Length": "123", "Content-Encoding": "gzip"}, None),
    ({"Content-Length": "lots"}, None),
    ({}, None),
])
def test_content_length_is_only_trusted_for_unencoded_bodies(headers, expected):
    response = requests.Response()
    response.headers.update(headers)
    assert content_length(response) == expected


@pytest.mark.parametrize("head, named", [
    (b"<!DOCTYPE html><html>", True), (b"\n  <html lang=en>", True), (b"<?xml version='1.0'?>", True),
    (b"PK\x03\x04zipdata", False), (b"", False),
])
def test_html_hint_names_a_web_page_only(tmp_path, head, named):
    path = tmp_path / "download"
    path.write_bytes(head)
    assert (html_hint(path) == "; it looks like an HTML page") is named
