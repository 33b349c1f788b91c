"""Tests for imgclf.models.fetch_mnist: download, verify and install mnist.npz, against a loopback server only."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imgclf.core.errors import DownloadError
from imgclf.models.fetch_mnist import DEFAULT_URL, SHA256, fetch_mnist
from tests.support.mnist_data import write_mnist_npz


@pytest.fixture(scope="module")
def npz_bytes(tmp_path_factory) -> bytes:
    return write_mnist_npz(tmp_path_factory.mktemp("src") / "mnist.npz", 2, 1).read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serve ``server.routes``: path → bytes, an int status, or ("truncate", bytes) (half, then hang up)."""

    def do_GET(self):  # http.server's naming
        self.server.hits += 1
        route = self.server.routes.get(self.path, 404)
        if isinstance(route, int):
            self.send_error(route)
            return
        body = route[1] if isinstance(route, tuple) else route
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if isinstance(route, tuple) else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.hits = {}, 0
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_official_url_and_checksum():
    assert DEFAULT_URL == "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
    assert SHA256 == "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


def test_download_verifies_and_installs(server, npz_bytes, tmp_path):
    server.routes["/mnist.npz"] = npz_bytes
    dest = tmp_path / "data" / "mnist.npz"
    path = fetch_mnist(dest, server.url("/mnist.npz"), sha256=_sha(npz_bytes), timeout=5, progress=False)
    assert path == dest and dest.read_bytes() == npz_bytes
    assert [p.name for p in dest.parent.iterdir()] == ["mnist.npz"]  # no temp folder left
    fetch_mnist(dest, server.url("/mnist.npz"), sha256=_sha(npz_bytes), timeout=5, progress=False)
    assert server.hits == 1  # already installed with the right checksum: not fetched again
    fetch_mnist(tmp_path / "data", server.url("/mnist.npz"), sha256=_sha(npz_bytes), progress=False, force=True)
    assert server.hits == 2  # a folder gets mnist.npz inside


def test_default_destination_is_imgclf_home(server, npz_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    server.routes["/m.npz"] = npz_bytes
    assert fetch_mnist(url=server.url("/m.npz"), sha256=_sha(npz_bytes), progress=False) == \
        tmp_path / "home" / "data" / "mnist.npz"


@pytest.mark.parametrize("route, message", [
    (404, "HTTP 404"),
    ("truncated", "broke off|incomplete"),
    ("wrong_checksum", "has sha256 .* but mnist.npz has .*Nothing was installed"),
    ("html", "looks like an HTML page"),
])
def test_failures_install_nothing_and_keep_a_good_file(server, npz_bytes, tmp_path, route, message):
    good = tmp_path / "mnist.npz"
    good.write_bytes(b"previous file")
    body = {"truncated": ("truncate", npz_bytes), "wrong_checksum": npz_bytes,
            "html": b"<!DOCTYPE html><html>sign in to the network</html>"}.get(route, route)
    server.routes["/mnist.npz"] = body
    with pytest.raises(DownloadError, match=message):
        fetch_mnist(good, server.url("/mnist.npz"), sha256="0" * 64 if route == "wrong_checksum" else
                    _sha(npz_bytes), timeout=5, progress=False)
    assert good.read_bytes() == b"previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["mnist.npz"]


def test_right_checksum_but_not_mnist_is_refused(server, tmp_path):
    server.routes["/mnist.npz"] = b"not an archive at all"
    with pytest.raises(DownloadError, match="not a usable mnist.npz"):
        fetch_mnist(tmp_path / "mnist.npz", server.url("/mnist.npz"), sha256=_sha(b"not an archive at all"),
                    timeout=5, progress=False)
    assert not (tmp_path / "mnist.npz").exists()


def test_unreachable_host_fails_fast_and_says_what_to_do(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: the connection is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_mnist(tmp_path / "mnist.npz", f"http://127.0.0.1:{port}/mnist.npz", timeout=2, progress=False)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "offline or 127.0.0.1 is unreachable" in message
    assert "copy it to" in message and "--from-file" in message and "--data PATH" in message
    assert "fetch-inception" not in message


def test_from_file_checks_and_installs_a_local_copy(npz_bytes, tmp_path):
    source = tmp_path / "download" / "mnist.npz"
    source.parent.mkdir()
    source.write_bytes(npz_bytes)
    dest = fetch_mnist(tmp_path / "home" / "mnist.npz", from_file=source, sha256=_sha(npz_bytes))
    assert dest.read_bytes() == npz_bytes
    with pytest.raises(DownloadError, match="has sha256"):
        fetch_mnist(tmp_path / "other.npz", from_file=source)  # Keras' checksum: this is not that file
    with pytest.raises(DownloadError, match="is not a file"):
        fetch_mnist(tmp_path / "other.npz", from_file=tmp_path / "missing.npz")


def test_cli_reports_a_failed_fetch(server, tmp_path, capsys):
    from imgclf.service.cli.main import main

    assert main(["models", "fetch-mnist", "--output", str(tmp_path / "m.npz"), "--url", server.url("/nothing"),
                 "--quiet"]) == 1
    assert "HTTP 404" in capsys.readouterr().err
