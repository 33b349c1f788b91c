"""The front's process: binding, gunicorn's environment, signals passed on, one stopping the other.

gunicorn is replaced by tests/support/fake_upstream.py (an echo server on the unix socket), so these run
in a second each; tests/system/test_slow_clients.py runs the real pair.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from imgclf.core.errors import UsageError
from imgclf.service.cli.serve import front_argv, gunicorn_argv, serve_argv
from imgclf.service.front import main as front_main
from imgclf.service.front.settings import FrontSettings
from imgclf.service.server.settings import ServerSettings
from tests.support.processes import free_port

FAKE = [sys.executable, str(Path(__file__).resolve().parents[3] / "support" / "fake_upstream.py")]


@pytest.mark.parametrize("bind, expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9000", ("::1", 9000)),
    (":8000", ("0.0.0.0", 8000)),
    ("unix:/run/imgclf.sock", "/run/imgclf.sock"),
])
def test_parse_bind(bind, expected):
    assert front_main.parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["localhost", "127.0.0.1:http", "1.2.3.4:70000"])
def test_a_bad_bind_is_a_usage_error(bind):
    with pytest.raises(UsageError, match=f"IMGCLF_BIND must be HOST:PORT or unix:PATH; received '{bind}'"):
        front_main.parse_bind(bind)


def test_gunicorn_behind_the_front_listens_on_the_socket_without_an_access_log_and_serves_the_channel():
    env = front_main.gunicorn_env("/tmp/f/gunicorn.sock", {"IMGCLF_BIND": "0.0.0.0:80", "IMGCLF_ACCESS_LOG": "1",
                                                           "IMGCLF_WORKERS": "3"})
    assert env == {"IMGCLF_BIND": "unix:/tmp/f/gunicorn.sock", "IMGCLF_ACCESS_LOG": "0", "IMGCLF_WORKERS": "3",
                   "IMGCLF_FRONT_CHANNEL": "1"}


def test_serve_runs_the_front_unless_it_is_turned_off():
    assert serve_argv({}) == front_argv() == [sys.executable, "-P", "-m", "imgclf.service.front.main"]
    assert serve_argv({"IMGCLF_FRONT": "0"}) == gunicorn_argv()


def test_the_fd_limit_is_raised_to_the_hard_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert front_main.raise_fd_limit() == (hard if hard != resource.RLIM_INFINITY else 65536)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _get(port: int, path: str) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 200 "), out
    return json.loads(out.split(b"\r\n\r\n", 1)[1])


def _get_ours(port: int, path: str) -> dict:
    """GET ``path`` through the front to the fake gunicorn (another server on a reused port fails the check)."""
    seen = _get(port, path)
    assert seen.get("target") == path, f"not the fake gunicorn behind our front: {seen}"
    return seen


def _front_process(port: int, tmp_path: Path) -> subprocess.Popen:
    """Run front_main.serve (graceful 5 s) on 127.0.0.1:``port`` before the fake gunicorn, in its own process.

    The tests signal it: signals sent to the test's own process could hit whatever else that pytest worker
    runs (a worker died so in CI).
    """
    code = (
        "import asyncio, sys\n"
        "from dataclasses import replace\n"
        "from imgclf.service.front import main as front_main\n"
        "from imgclf.service.front.settings import FrontSettings\n"
        "from imgclf.service.server.settings import ServerSettings\n"
        f"server = replace(ServerSettings(), bind='127.0.0.1:{port}', workers=1, threads=2, graceful_timeout=5)\n"
        f"sys.exit(asyncio.run(front_main.serve(server, FrontSettings(), argv={FAKE!r})))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)


def _until_ours(port: int, path: str, process: subprocess.Popen, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, f"the front exited with {process.returncode}"
        try:
            return _get_ours(port, path)
        except (AssertionError, OSError):
            assert time.monotonic() < deadline, "the front and its fake gunicorn never answered"
            time.sleep(0.1)


def test_the_socket_folder_fits_a_unix_socket_path_under_a_long_tmpdir(tmp_path):
    long_parent = tmp_path / ("t" * 90)  # a TMPDIR this long leaves no room for the socket's name
    long_parent.mkdir()
    folder = front_main.socket_folder((str(long_parent), None))
    try:
        assert not folder.startswith(str(long_parent)) and os.stat(folder).st_mode & 0o777 == 0o700
        path = os.path.join(folder, front_main.SOCKET_NAME)
        with socket.socket(socket.AF_UNIX) as s:  # the kernel takes it: the reference for the limit
            s.bind(path)
    finally:
        shutil.rmtree(folder)
    assert list(long_parent.iterdir()) == []  # the folder that did not fit is gone
    with pytest.raises(UsageError, match="set TMPDIR to a shorter one"):
        front_main.socket_folder((str(long_parent),))


def test_signals_reach_gunicorn_and_sigterm_stops_both(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_HUP_FILE", str(tmp_path / "hup"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    port = free_port()
    process = _front_process(port, tmp_path)
    try:
        seen = _until_ours(port, "/readyz", process)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not (tmp_path / "hup").exists():
            assert time.monotonic() < deadline and process.poll() is None, "SIGHUP never reached gunicorn"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert code == 0 and seen["target"] == "/readyz"
    assert (tmp_path / "hup").read_text() == "hup\n"
    assert not list(tmp_path.glob("imgclf-front-*")), "the socket folder is removed"
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_gunicorn_exiting_stops_the_front(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_EXIT_AFTER_S", "0.5")
    server = replace(ServerSettings(), bind=f"127.0.0.1:{free_port()}", workers=1, threads=2)
    started = time.monotonic()
    code = asyncio.run(asyncio.wait_for(front_main.serve(server, FrontSettings(), argv=FAKE), 30))
    assert code == 1 and time.monotonic() - started < 10


def test_a_port_in_use_is_one_line_and_status_1(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = replace(ServerSettings(), bind=f"127.0.0.1:{taken.getsockname()[1]}")
        code = asyncio.run(front_main.serve(server, FrontSettings(), argv=FAKE))
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("imgclf serve: cannot listen on 127.0.0.1:") and err.count("\n") == 1


def test_sigterm_lets_a_request_in_flight_finish(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY_S", "1.0")  # gunicorn takes 1 s over this answer
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    port = free_port()
    process = _front_process(port, tmp_path)
    try:
        _until_ours(port, "/up", process)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_get, port, "/slow")
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            seen = in_flight.result(30)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert code == 0 and seen["target"] == "/slow"


def test_main_says_a_bad_setting_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("IMGCLF_MIN_BODY_RATE", "-1")
    assert front_main.main() == 2
    err = capsys.readouterr().err
    assert err == "imgclf serve: error: IMGCLF_MIN_BODY_RATE must be at least 0; received -1\n"


def test_the_front_hands_freed_memory_back_from_a_thread_of_its_own():
    assert front_main.trim_memory_forever(0) is None  # IMGCLF_MALLOC_TRIM_SECONDS=0: never
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    thread = front_main.trim_memory_forever(3600)
    assert thread.daemon and thread.is_alive() and thread.name == "malloc-trim"


def test_the_event_loop_setting(monkeypatch):
    assert front_main.event_loop_factory("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: import fails
    assert front_main.event_loop_factory("auto") is None
    with pytest.raises(UsageError, match="IMGCLF_EVENT_LOOP=uvloop, but uvloop is not installed"):
        front_main.event_loop_factory("uvloop")
