"""``python -m imgclf.service.front.main``: the front on the public port, gunicorn behind it; one stops the other.

What `imgclf serve` and the container run (unless ``IMGCLF_FRONT=0``). This process binds
``IMGCLF_BIND`` itself, starts gunicorn (the shipped config, :mod:`imgclf.service.server.gunicorn_conf`) on a
unix socket in a private folder (mode 0700), and forwards complete requests to it
(:mod:`imgclf.service.front.proxy`).

* SIGTERM or SIGINT: stop accepting, close idle keep-alive connections, let the requests already
  received finish (at most ``IMGCLF_GRACEFUL_TIMEOUT`` s), then SIGTERM gunicorn (whose workers finish
  theirs), wait for it and exit with its status.
* SIGHUP: passed to gunicorn, which reloads its workers gracefully (the front keeps its connections).
* gunicorn exiting on its own (it failed to boot, or was killed) stops the front (status 1); the front
  dying, even by SIGKILL, stops gunicorn (Linux: ``PR_SET_PDEATHSIG``).
* The access log (``IMGCLF_ACCESS_LOG=1``) is written here, with the real client address; gunicorn's
  is off. gunicorn gets the address as ``X-Forwarded-For`` / ``X-Real-IP`` (any such header a client
  sent is dropped first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from imgclf.core.errors import EXIT_FAILED, EXIT_USAGE, UsageError
from imgclf.service.front.proxy import READ_CHUNK, Front
from imgclf.service.front.settings import FrontSettings
from imgclf.service.front.upstream import Upstream
from imgclf.service.server.frames import BEHIND_FRONT_ENV
from imgclf.service.server.launch import gunicorn_argv
from imgclf.service.server.settings import ServerSettings

log = logging.getLogger("imgclf.front")
PR_SET_PDEATHSIG = 1
LISTEN_BACKLOG = 2048


def parse_bind(bind: str) -> tuple[str, int] | str:
    """Return ``(host, port)`` for ``HOST:PORT`` (``[::1]:8000`` too), or the path of ``unix:PATH``."""
    if bind.startswith("unix:"):
        return bind[len("unix:"):]
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"IMGCLF_BIND must be HOST:PORT or unix:PATH; received {bind!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def gunicorn_env(socket_path: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Return gunicorn's environment behind the front: bound to ``socket_path``, its access log off, its workers
    serving the front's channel (:mod:`imgclf.service.server.channel`)."""
    env = dict(os.environ if base is None else base)
    env.update(IMGCLF_BIND=f"unix:{socket_path}", IMGCLF_ACCESS_LOG="0", **{BEHIND_FRONT_ENV: "1"})
    return env


SOCKET_NAME = "gunicorn.sock"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path: 108 bytes with the terminating NUL


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (each client connection is a descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def trim_memory_forever(seconds: int) -> threading.Thread | None:
    """Hand the heap memory this process freed back to the system every ``seconds`` (glibc's malloc_trim).

    Request bodies arrive in 64 KiB reads that are freed while long-lived objects sit between them, and
    glibc keeps such scattered free memory for reuse: without this, the front's RSS stayed at 2 to 8
    times its starting 24 MB after a burst of large uploads (``bench/hostile.py``). A thread calls it, not
    the event loop: the first trim after a burst walks the whole heap (tens of ms); the next ones take
    0.2 ms. Returns the thread, or None where there is nothing to do (0 s, or not glibc).
    """
    if not seconds or platform.libc_ver()[0] != "glibc":
        return None
    trim = ctypes.CDLL(None).malloc_trim

    def trim_forever() -> None:
        while True:
            time.sleep(seconds)
            trim(0)

    thread = threading.Thread(target=trim_forever, name="malloc-trim", daemon=True)
    thread.start()
    return thread


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def socket_folder(parents: tuple[str | None, ...] = (None, "/tmp")) -> str:
    """Make a private folder (mode 0700: only this user reaches the socket) for gunicorn's unix socket.

    A socket's path must fit ``sockaddr_un`` (107 bytes): under a long ``TMPDIR`` the folder is made in the
    next of ``parents`` instead (None: Python's temporary folder).
    """
    for parent in parents:
        folder = tempfile.mkdtemp(prefix="imgclf-front-", dir=parent)
        if len(os.fsencode(os.path.join(folder, SOCKET_NAME))) <= SUN_PATH_MAX:
            return folder
        os.rmdir(folder)
    raise UsageError(f"no temporary folder short enough for a unix socket path ({SUN_PATH_MAX} bytes at most): "
                     f"set TMPDIR to a shorter one")


async def serve(server: ServerSettings, limits: FrontSettings, argv: list[str] | None = None) -> int:
    """Run the front and gunicorn until a signal or until gunicorn exits; return the exit status."""
    folder = socket_folder()
    socket_path = os.path.join(folder, SOCKET_NAME)
    upstream = Upstream(socket_path, timeout=max(server.timeout, 30))
    front = Front(limits, upstream, server)
    address = parse_bind(server.bind)
    try:
        if isinstance(address, str):
            listener = await asyncio.start_unix_server(front.handle, address, limit=READ_CHUNK,
                                                       backlog=LISTEN_BACKLOG)
        else:
            listener = await asyncio.start_server(front.handle, *address, limit=READ_CHUNK, backlog=LISTEN_BACKLOG)
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"imgclf serve: cannot listen on {server.bind}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    child = subprocess.Popen(argv or gunicorn_argv(), env=gunicorn_env(socket_path), preexec_fn=_die_with_parent,
                             start_new_session=True)
    upstream.start()
    log.info("front listening on %s, gunicorn (pid %d) on %s", server.bind, child.pid, socket_path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: child.poll() is None and child.send_signal(signal.SIGHUP))
    try:
        while not stop.is_set() and child.poll() is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        listener.close()
        front.close_idle()
        if child.poll() is not None:
            log.error("gunicorn exited with status %s; stopping the front", child.returncode)
            return EXIT_FAILED
        deadline = time.monotonic() + server.graceful_timeout
        while front.busy and time.monotonic() < deadline:  # the requests already received finish
            await asyncio.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        code = await loop.run_in_executor(None, _wait, child, server.graceful_timeout + 10)
        log.info("front stopped (gunicorn exited with status %s)", code)
        return 0 if code == 0 else EXIT_FAILED
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        for task in list(front.connections):
            task.cancel()
        upstream.close()
        if child.poll() is None:
            child.kill()
            child.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def event_loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the factory of the front's event loop (``IMGCLF_EVENT_LOOP``); None: asyncio's own.

    uvloop (libuv, in C) runs the front's transports, callbacks and timers for less CPU per request than
    asyncio's pure-Python loop; ``auto`` takes it where it is installed.

    Raises:
        UsageError: ``uvloop`` was asked for and is not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError("IMGCLF_EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def _wait(child: subprocess.Popen, timeout: float) -> int:
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        log.error("gunicorn still running %.0f s after SIGTERM; killing it", timeout)
        child.kill()
        return child.wait(10)


def main() -> int:
    """Read the settings, then run the front and gunicorn; a bad setting is one line and exit status 2.

    The front reads its own sections of the settings tree only (the server's and its own): the keys file,
    the model config file and the workers' settings are gunicorn's workers' to read.
    """
    try:
        server, limits = ServerSettings.from_env(), FrontSettings.from_env()
        parse_bind(server.bind)
        loop_factory = event_loop_factory(limits.event_loop)
    except UsageError as e:
        print(f"imgclf serve: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level={"warn": "WARNING"}.get(server.log_level, server.log_level.upper()),
                        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    access = logging.getLogger("imgclf.front.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO)
    raise_fd_limit()
    trim_memory_forever(server.malloc_trim_seconds)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(server, limits))


if __name__ == "__main__":
    sys.exit(main())
