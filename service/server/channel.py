"""gunicorn's workers behind the front: each serves the front's framed requests on one connection it keeps.

With ``IMGCLF_FRONT`` on (the default), the front has read and checked every request whole before a worker
sees it, so the worker needs no HTTP parser, no connection per request and no keep-alive bookkeeping:
:class:`ChannelWorker` (gunicorn's worker class behind the front, :mod:`imgclf.service.server.gunicorn_conf`)
accepts one connection from the front on the private unix socket and reads request frames from it
(:mod:`imgclf.service.server.frames`); its ``IMGCLF_THREADS`` threads run the WSGI app and write the answers
back as frames. The front sends a worker at most as many requests at a time as it has threads, to
whichever worker has the fewest in hand: a free thread takes the next request, as gunicorn's accept did
when each request came on a connection of its own, for less CPU (no connect, accept, close, and no second
parse of the request; measured in ``docs/benchmarks.md``).

What gunicorn's own parser refused reaching the app is refused here the same way (its limits are
gunicorn's settings): a request line over ``limit_request_line`` bytes is a 414, more than
``limit_request_fields`` fields or one over ``limit_request_field_size`` a 431, and a field name with an
underscore is dropped (gunicorn's ``header_map = "drop"``: ``X_Forwarded_For`` must not pass for
``X-Forwarded-For``). An app that raises, or answers a field gunicorn would refuse, is a 500. Each is JSON
``{"error": ...}``, as :mod:`imgclf.service.server.error_pages` makes gunicorn's own.

A worker whose connection is taken takes no other: the front keeps one more connection waiting in the
socket's backlog, which the next worker to start (a replacement, a reload's new worker once it is ready)
takes. Stopping (SIGTERM, a reload, ``max_requests``), a worker says ``bye``: the front sends it nothing
more and closes the connection once the answers it waits for are in; the worker answers what it has
until then, within ``IMGCLF_GRACEFUL_TIMEOUT``.

Of gunicorn's settings, the worker honours ``threads``, ``timeout`` (its heartbeat), ``graceful_timeout``,
``max_requests`` and the request limits above; ``keepalive`` and ``worker_connections`` have nothing to
govern here, and the ``pre_request`` / ``post_request`` hooks are not called (imgclf's configuration defines
none). Without the front (``IMGCLF_FRONT=0``) gunicorn's own ``gthread`` worker serves HTTP as usual.
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import os
import queue
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import unquote_to_bytes, urlsplit

from gunicorn.http.wsgi import WSGIErrorsWrapper
from gunicorn.workers.base import Worker

from imgclf.service.server.frames import (
    BYE,
    CONTROL,
    HOP_BY_HOP,
    SERVER,
    FrameError,
    FrameReader,
    frame,
    hello,
)

log = logging.getLogger("imgclf.channel")

READ_CHUNK = 256 * 1024
TICK_S = 0.5  # gunicorn's heartbeat (``tick``) at most this often, at least every second
# Of the app's answer fields, those the channel's answer leaves out: the hop-by-hop ones and the framing, which
# the front sets, and Server and Date, which are this module's.
NOT_ANSWERED = HOP_BY_HOP | {"server", "date"}
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # no CR, LF or other control characters


class Refusal(Exception):
    """The request is refused before the app sees it: answer ``status`` with ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Limits:
    """gunicorn's request limits (its settings of the same names; 0: no limit)."""

    def __init__(self, limit_request_line: int = 4094, limit_request_fields: int = 100,
                 limit_request_field_size: int = 8190) -> None:
        self.line, self.fields, self.field_size = limit_request_line, limit_request_fields, limit_request_field_size


class _Date:
    """The Date field's value, formatted once a second."""

    def __init__(self) -> None:
        self.second, self.value = -1, b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, email.utils.formatdate(second, usegmt=True).encode()
        return self.value


def json_answer(status: int, message: str) -> tuple[bytes, bytes]:
    """Return the head and body of a JSON ``{"error": message}`` answer of ``status``."""
    body = json.dumps({"error": message}).encode()
    head = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
            b"Cache-Control: no-store\r\nServer: %s\r\nContent-Length: %d\r\n"
            % (status, HTTPStatus(status).phrase.encode(), SERVER, len(body)))
    return head, body


class Channel:
    """One connection from the front: frames in, answer frames out (written whole, one thread at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        """Write ``data`` whole; a front that went away is not an error (its requests are lost with it)."""
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self.sock.close()


class ChannelServer:
    """Run the WSGI ``app`` for the requests of one front connection at a time, on ``threads`` threads.

    ``multiprocess``: whether other processes serve the same app (``wsgi.multiprocess``); ``limits``:
    gunicorn's request limits; ``script_name``: the app's mount point (gunicorn's ``SCRIPT_NAME``); ``name``:
    its threads' names begin with it.
    """

    def __init__(self, app: Callable, threads: int, *, multiprocess: bool = False, limits: Limits = Limits(),
                 script_name: str = "", errors=None, name: str = "channel") -> None:
        self.app, self.threads, self.limits, self.script_name, self.name = app, threads, limits, script_name, name
        self.channel: Channel | None = None  # the connection being served
        self.base = {"wsgi.version": (1, 0), "wsgi.multithread": threads > 1, "wsgi.multiprocess": multiprocess,
                     "wsgi.run_once": False, "wsgi.input_terminated": True, "wsgi.url_scheme": "http",
                     "wsgi.errors": errors if errors is not None else sys.stderr, "SERVER_SOFTWARE": "imgclf",
                     "SERVER_PROTOCOL": "HTTP/1.1", "SCRIPT_NAME": script_name}
        self.served = 0  # requests answered
        self.in_hand = 0  # requests received and not answered yet
        self._count = threading.Lock()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._date = _Date()

    # -- the loop: one connection at a time ------------------------------------------------------------

    def serve(self, listener: socket.socket, running: Callable[[], bool], tick: Callable[[], None] = lambda: None,
              wake_fd: int | None = None, graceful_s: float = 30.0) -> None:
        """Take a connection on ``listener``, serve it until it closes, take the next; until ``running()`` is false.

        ``tick`` is called at least every second (gunicorn's heartbeat); ``wake_fd`` (readable when a signal
        came) cuts the wait short. Then the connection in hand, if any, gets a ``bye`` and is served until
        the front closes it or ``graceful_s`` seconds have passed.
        """
        self._start_threads()
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        if wake_fd is not None:
            selector.register(wake_fd, selectors.EVENT_READ, None)
        selector.register(listener, selectors.EVENT_READ, listener)
        channel = self.channel = None
        ticked = 0.0
        try:
            while running():
                if (now := time.monotonic()) - ticked >= TICK_S:  # not once per read: a syscall each time
                    tick()
                    ticked = now
                for key, _ in selector.select(1.0):
                    if key.data is None:
                        _drain(wake_fd)
                    elif key.data is listener:
                        channel = self.channel = self._accept(listener)
                        if channel is not None:
                            selector.unregister(listener)
                            selector.register(channel.sock, selectors.EVENT_READ, channel)
                    elif not self._read(key.data):  # the front closed it: take the next one
                        selector.unregister(channel.sock)
                        channel.close()
                        channel = self.channel = None
                        selector.register(listener, selectors.EVENT_READ, listener)
            if channel is not None:
                self._say_bye(channel, selector, tick, graceful_s)
        finally:
            selector.close()
            self._stop_threads()

    def _accept(self, listener: socket.socket) -> Channel | None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return None  # another worker took it
        sock.setblocking(True)
        channel = Channel(sock)
        channel.send(hello(os.getpid(), self.threads))
        return channel

    def _say_bye(self, channel: Channel, selector: selectors.BaseSelector, tick: Callable[[], None],
                 graceful_s: float) -> None:
        channel.send(frame(CONTROL, BYE))
        deadline = time.monotonic() + graceful_s
        while (left := deadline - time.monotonic()) > 0:
            tick()
            ready = [key for key, _ in selector.select(min(1.0, left)) if key.data is channel]
            if ready and not self._read(channel):
                break
        if self.in_hand:
            log.warning("stopping with %d requests unanswered after %.0f s", self.in_hand, graceful_s)
        channel.close()

    def _read(self, channel: Channel) -> bool:
        """Read what came on ``channel`` and queue its requests; return False once the front closed it."""
        try:
            data = channel.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        try:
            frames = channel.reader.feed(data)
        except FrameError as e:
            log.error("the front's channel is broken: %s", e)
            return False
        if frames:
            with self._count:
                self.in_hand += len(frames)
            for request_id, head, body in frames:
                self._work.put((channel, request_id, head, body))
        return True

    # -- the threads -------------------------------------------------------------------------------------

    def _start_threads(self) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._run_requests, name=f"{self.name}-{i}", daemon=True)
                             for i in range(self.threads)]
            for thread in self._threads:
                thread.start()

    def _stop_threads(self) -> None:
        for _ in self._threads:
            self._work.put(None)
        self._threads = []

    def _run_requests(self) -> None:
        while (item := self._work.get()) is not None:
            channel, request_id, head, body = item
            answer_head, answer_body = self.answer(head, body)
            channel.send(frame(request_id, answer_head, answer_body))
            with self._count:
                self.in_hand -= 1
                self.served += 1
            # nothing of this request outlives it: the thread waits for the next one holding no body
            del item, channel, head, body, answer_head, answer_body

    # -- one request ---------------------------------------------------------------------------------------

    def environ(self, head: bytes, body: bytes) -> dict:
        """Return the WSGI environ of a request frame's ``head`` and ``body``.

        Raises:
            Refusal: gunicorn's parser would have refused it (414, 431, 400).
        """
        lines = head.split(b"\r\n")
        request_line = lines[0]
        limits = self.limits
        if limits.line and len(request_line) + 9 > limits.line:  # + " HTTP/1.1", as gunicorn counts the line
            raise Refusal(414, f"Request Line is too large ({len(request_line) + 9} > {limits.line})")
        fields = lines[1:-1]
        if limits.fields and len(fields) > limits.fields:
            raise Refusal(431, "Error parsing headers: 'limit request headers fields'")
        method, _, target = request_line.decode("latin-1").partition(" ")
        environ = self.base.copy()
        environ["REQUEST_METHOD"] = method
        environ["RAW_URI"] = target
        environ["wsgi.input"] = io.BytesIO(body)
        host, remote = "", ""
        repeated: dict[str, list[str]] = {}
        for line in fields:
            if limits.field_size and len(line) > limits.field_size:
                raise Refusal(431, "Error parsing headers: 'limit request headers fields size'")
            name, _, value = line.decode("latin-1").partition(": ")
            if "_" in name:
                continue  # gunicorn's header_map = "drop"
            if name == "host":
                host = value
            elif name == "x-real-ip":
                remote = value
            elif name == "content-type":
                environ["CONTENT_TYPE"] = value
                continue
            elif name == "content-length":
                environ["CONTENT_LENGTH"] = value
                continue
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in environ:
                repeated.setdefault(key, [environ[key]]).append(value)
            else:
                environ[key] = value
        for key, values in repeated.items():
            environ[key] = ",".join(values)
        environ["REMOTE_ADDR"] = remote
        if target.startswith("/") and "#" not in target:
            path, _, query = target.partition("?")
        else:  # absolute form ("http://host/path"), a fragment, "*"
            parts = urlsplit(target)
            path, query = parts.path or "", parts.query
        if self.script_name:
            if not path.startswith(self.script_name):
                raise Refusal(400, f"the path does not start with SCRIPT_NAME {self.script_name!r}")
            path = path[len(self.script_name):]
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1") if "%" in path else path
        environ["QUERY_STRING"] = query
        name, colon, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        environ["SERVER_NAME"], environ["SERVER_PORT"] = (name, port) if colon else (host, "80")
        return environ

    def answer(self, head: bytes, body: bytes) -> tuple[bytes, bytes]:
        """Return the answer's head (status line and fields, each line ending CRLF) and body for a request frame."""
        try:
            environ = self.environ(head, body)
        except Refusal as e:
            return json_answer(e.status, str(e))
        except (UnicodeDecodeError, ValueError) as e:
            return json_answer(400, f"Invalid request: {e}")
        started: list = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            if started and not exc_info:
                raise AssertionError("start_response called twice without exc_info")
            started[:] = [status, headers]
            return chunks.append

        try:
            result = self.app(environ, start_response)
            try:
                for chunk in result:
                    if chunk:
                        chunks.append(chunk)
            finally:
                if hasattr(result, "close"):
                    result.close()
            if not started:
                raise AssertionError("the app returned without calling start_response")
            return self._head(environ["REQUEST_METHOD"], *started, chunks)
        except Exception:
            log.exception("error handling %s %s", environ["REQUEST_METHOD"], environ["RAW_URI"])
            return json_answer(500, "Internal Server Error")

    def _head(self, method: str, status: str, headers: list[tuple[str, str]],
              chunks: list[bytes]) -> tuple[bytes, bytes]:
        lines = [f"HTTP/1.1 {status}\r\n".encode("latin-1"), b"Date: %s\r\n" % self._date.now()]
        for name, value in headers:
            if name.lower() in NOT_ANSWERED:
                continue
            if not TOKEN.fullmatch(name) or not FIELD_VALUE.fullmatch(value):
                raise ValueError(f"the app answered an invalid field {name[:40]!r}")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"Server: " + SERVER + b"\r\n")
        code = int(status[:3])
        if method == "HEAD" or code in (204, 304) or code < 200:
            return b"".join(lines), b""
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        lines.append(b"Content-Length: %d\r\n" % len(body))
        return b"".join(lines), body


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


class ChannelWorker(Worker):
    """gunicorn's worker class behind the front: serves the front's channel with a :class:`ChannelServer`."""

    def run(self) -> None:
        cfg = self.cfg
        server = ChannelServer(self.wsgi, cfg.threads, multiprocess=cfg.workers > 1,
                               limits=Limits(cfg.limit_request_line, cfg.limit_request_fields,
                                             cfg.limit_request_field_size),
                               script_name=os.environ.get("SCRIPT_NAME", ""), errors=WSGIErrorsWrapper(cfg))

        def running() -> bool:
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                return False
            if server.served >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after %d requests.", server.served)
                self.alive = False
            return self.alive

        server.serve(self.sockets[0], running, tick=self.notify, wake_fd=self.PIPE[0],
                     graceful_s=cfg.graceful_timeout)
        for sock in self.sockets:
            sock.close()
