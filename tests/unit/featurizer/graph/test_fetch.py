"""Tests for imgclf.featurizer.graph.fetch: download, verify and install the Inception graph, offline.

Archives are built here from the tiny legacy graph and served by a loopback
HTTP server in a thread; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imgclf.core.errors import DownloadError, GraphError
from imgclf.featurizer.graph.fetch import ALT_GRAPH_NAME, GRAPH_NAME, LABELS_NAME, MANIFEST_NAME, fetch_inception
from tests.support.legacy_graph import build_legacy_graph_def

LABELS = "".join(f"class {i}\n" for i in range(16))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf_:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf_.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _graph_without(node: str) -> bytes:
    graph_def = build_legacy_graph_def()
    kept = [n for n in graph_def.node if n.name != node]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    return graph_def.SerializeToString()


def _graph_with_unknown_op() -> bytes:
    graph_def = build_legacy_graph_def()
    next(n for n in graph_def.node if n.name == "mixed/join").op = "NoSuchOp2015"
    return graph_def.SerializeToString()


@pytest.fixture(scope="module")
def graph_bytes() -> bytes:
    return build_legacy_graph_def().SerializeToString()


@pytest.fixture(scope="module")
def good_zip(graph_bytes) -> bytes:
    return _zip({GRAPH_NAME: graph_bytes, LABELS_NAME: LABELS.encode(), "LICENSE": b"Apache 2.0\n"})


class _Handler(BaseHTTPRequestHandler):
    """Serve ``server.routes``: path → bytes, an int status, ("truncate", bytes), "stall" or "silent"."""

    def do_GET(self):
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        route = self.server.routes.get(self.path, 404)
        if isinstance(route, int):
            self.send_error(route)
        elif route == "silent":  # not even the headers
            self.server.release.wait(10)
            self.close_connection = True
        elif route == "stall":  # headers, then silence
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            self.server.release.wait(10)
        elif isinstance(route, tuple):  # announce the whole body, send half, hang up
            body = route[1]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(route)))
            self.end_headers()
            self.wfile.write(route)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server in a thread; ``server.url(path)`` builds URLs, ``server.hits`` counts GETs."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.hits, httpd.release = {}, {}, threading.Event()
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_installs_graph_labels_and_manifest(server, good_zip, graph_bytes, tmp_path):
    server.routes["/inception_dec_2015.zip"] = good_zip
    dest = tmp_path / "inception"

    path = fetch_inception(dest, server.url("/inception_dec_2015.zip"), timeout=5, progress=False)

    assert path == dest / GRAPH_NAME
    assert _sha256(path.read_bytes()) == _sha256(graph_bytes)
    assert (dest / LABELS_NAME).read_text() == LABELS
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert manifest["sha256"] == _sha256(graph_bytes)
    assert manifest["size"] == len(graph_bytes)
    assert manifest["source"] == server.url("/inception_dec_2015.zip")
    assert manifest["archive_sha256"] == _sha256(good_zip)
    assert manifest["labels"] == LABELS_NAME
    assert manifest["fetched_at"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([GRAPH_NAME, LABELS_NAME, MANIFEST_NAME])


def test_installed_graph_is_not_fetched_again_unless_forced(server, good_zip, tmp_path):
    server.routes["/inception_dec_2015.zip"] = good_zip
    url = server.url("/inception_dec_2015.zip")
    first = fetch_inception(tmp_path, url, timeout=5, progress=False)
    assert server.hits["/inception_dec_2015.zip"] == 1

    assert fetch_inception(tmp_path, url, timeout=5, progress=False) == first
    assert server.hits["/inception_dec_2015.zip"] == 1

    assert fetch_inception(tmp_path, url, timeout=5, progress=False, force=True) == first
    assert server.hits["/inception_dec_2015.zip"] == 2


def test_failed_forced_fetch_keeps_the_installed_graph(server, good_zip, graph_bytes, tmp_path):
    server.routes["/inception_dec_2015.zip"] = good_zip
    fetch_inception(tmp_path, server.url("/inception_dec_2015.zip"), timeout=5, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with pytest.raises(DownloadError):
        fetch_inception(tmp_path, server.url("/gone.zip"), timeout=5, progress=False, force=True)

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_progress_bar_goes_to_stderr(server, good_zip, tmp_path, capsys):
    server.routes["/inception_dec_2015.zip"] = good_zip
    fetch_inception(tmp_path, server.url("/inception_dec_2015.zip"), timeout=5, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "inception_dec_2015.zip" in captured.err and "100%" in captured.err


def test_from_file_needs_no_server(good_zip, graph_bytes, tmp_path):
    archive = tmp_path / "inception_dec_2015.zip"
    archive.write_bytes(good_zip)
    dest = tmp_path / "dest"

    path = fetch_inception(dest, "http://127.0.0.1:9/never-used.zip", from_file=archive, progress=False)

    assert path.read_bytes() == graph_bytes
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert manifest["source"] == str(archive.resolve())
    assert manifest["archive"] == "inception_dec_2015.zip"


def test_from_file_accepts_the_2015_tgz(graph_bytes, tmp_path):
    archive = tmp_path / "inception-2015-12-05.tgz"
    archive.write_bytes(_tgz({ALT_GRAPH_NAME: graph_bytes, "LICENSE": b"Apache 2.0\n"}))
    dest = tmp_path / "dest"

    path = fetch_inception(dest, from_file=archive, progress=False)

    assert path == dest / GRAPH_NAME and path.read_bytes() == graph_bytes
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert manifest["archive_member"] == ALT_GRAPH_NAME and manifest["labels"] is None
    assert not (dest / LABELS_NAME).exists()


def test_unreachable_host_says_offline_and_how_to_fetch_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    url = f"http://127.0.0.1:{_free_port()}/inception_dec_2015.zip"
    with pytest.raises(DownloadError) as info:
        fetch_inception(tmp_path / "dest", url, timeout=2, progress=False)
    message = str(info.value)
    assert "offline" in message and url in message
    assert "--from-file inception_dec_2015.zip" in message
    assert list((tmp_path / "dest").iterdir()) == []


def test_http_error_status_is_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch_inception(tmp_path, server.url("/missing.zip"), timeout=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_leaves_nothing_behind(server, good_zip, tmp_path):
    server.routes["/inception_dec_2015.zip"] = ("truncate", good_zip)
    with pytest.raises(DownloadError, match="broke off|incomplete"):
        fetch_inception(tmp_path, server.url("/inception_dec_2015.zip"), timeout=5, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("behaviour", ["silent", "stall"])
def test_stalled_server_times_out(behaviour, server, tmp_path):
    server.routes["/inception_dec_2015.zip"] = behaviour
    with pytest.raises(DownloadError, match="stalled"):
        fetch_inception(tmp_path, server.url("/inception_dec_2015.zip"), timeout=0.3, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("members, error, match", [
    pytest.param(lambda: {LABELS_NAME: LABELS.encode()}, DownloadError, f"holds no {GRAPH_NAME}", id="no-graph"),
    pytest.param(lambda: {GRAPH_NAME: b"\xff" * 64}, GraphError, "not a frozen TensorFlow GraphDef|no nodes",
                 id="garbage-graph"),
    pytest.param(lambda: {GRAPH_NAME: _graph_without("pool_3")}, GraphError, "lacks tensor.*pool_3:0",
                 id="no-pool_3"),
    pytest.param(lambda: {GRAPH_NAME: _graph_with_unknown_op()}, GraphError, "does not load.*NoSuchOp2015",
                 id="does-not-load"),
])
def test_bad_archive_is_refused_and_leaves_nothing(members, error, match, tmp_path):
    archive = tmp_path / "inception_dec_2015.zip"
    archive.write_bytes(_zip(members()))
    dest = tmp_path / "dest"
    with pytest.raises(error, match=match):
        fetch_inception(dest, from_file=archive, progress=False)
    assert list(dest.iterdir()) == []


def test_html_page_instead_of_zip_is_named(tmp_path):
    archive = tmp_path / "inception_dec_2015.zip"
    archive.write_bytes(b"<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>")
    with pytest.raises(DownloadError, match="not a zip.*HTML page"):
        fetch_inception(tmp_path / "dest", from_file=archive, progress=False)
    assert list((tmp_path / "dest").iterdir()) == []


def test_default_destination_is_imgclf_home(good_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    archive = tmp_path / "inception_dec_2015.zip"
    archive.write_bytes(good_zip)
    assert fetch_inception(from_file=archive, progress=False) == tmp_path / "home" / "inception" / GRAPH_NAME
