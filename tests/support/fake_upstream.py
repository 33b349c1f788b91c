"""A fake gunicorn for the front's tests: workers that answer each request with JSON of what they got.

Each worker is a real :class:`~imgclf.service.server.channel.ChannelServer` (what gunicorn's workers run
behind the front) on a thread, serving a WSGI echo app; several share one listening unix socket, as
gunicorn's workers do. Run as a script (``python tests/support/fake_upstream.py``) it serves the unix
socket named by ``IMGCLF_BIND=unix:PATH`` with one worker, as gunicorn would behind the front; SIGHUP
appends a line to ``$FAKE_HUP_FILE``, SIGTERM stops it (the worker says bye and finishes its requests),
``FAKE_DELAY_S`` delays every answer, and ``FAKE_EXIT_AFTER_S`` makes it exit by itself with status 3.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time

from imgclf.service.server.channel import ChannelServer


class Echo:
    """A WSGI app: answer each request with JSON of its method, target, headers, body and worker; remember them.

    ``status``: the answer's status (``"200 OK"``); ``delay_s``: how long each answer takes; ``echo_body``:
    False to give the body's length instead of the body.
    """

    def __init__(self, status: str = "200 OK", delay_s: float | None = None, echo_body: bool = True) -> None:
        self.requests: list[dict] = []
        self.echo_body = echo_body  # False: the answer and the record give the body's length only
        self.status = status
        self.delay_s = float(os.environ.get("FAKE_DELAY_S", "0")) if delay_s is None else delay_s
        self.in_hand: dict[str, int] = {}  # requests being answered, per worker
        self.most_in_hand: dict[str, int] = {}
        self.workers: list[Worker] = []
        self.listener: socket.socket | None = None
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        worker = threading.current_thread().name.rsplit("-", 1)[0]
        with self._lock:
            self.in_hand[worker] = self.in_hand.get(worker, 0) + 1
            self.most_in_hand[worker] = max(self.most_in_hand.get(worker, 0), self.in_hand[worker])
        try:
            body = environ["wsgi.input"].read()
            headers = [[key[5:].lower().replace("_", "-"), value] for key, value in environ.items()
                       if key.startswith("HTTP_")]
            headers += [[key.lower().replace("_", "-"), environ[key]] for key in ("CONTENT_TYPE", "CONTENT_LENGTH")
                        if key in environ]
            seen = {"method": environ["REQUEST_METHOD"], "target": environ["RAW_URI"],
                    "body": body.decode(errors="replace") if self.echo_body else len(body), "headers": headers,
                    "pid": os.getpid(), "worker": worker}
            with self._lock:
                self.requests.append(seen)
            time.sleep(self.delay_s)
            data = json.dumps(seen).encode()
            start_response(self.status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                         ("Server", "gunicorn")])
            return [data]
        finally:
            with self._lock:
                self.in_hand[worker] -= 1

    def serve(self, path: str, workers: int = 1, threads: int = 2) -> socket.socket:
        """Listen on the unix socket ``path`` with ``workers`` workers of ``threads`` threads; return the listener."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        self.listener = listener
        for _ in range(workers):
            self.add_worker(listener, threads)
        return listener

    def add_worker(self, listener: socket.socket, threads: int = 2) -> Worker:
        """Start one more worker on ``listener``."""
        worker = Worker(self, listener, threads, f"w{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def stop(self, graceful: bool = True) -> None:
        """Stop every worker (each says bye, then finishes; not ``graceful``: its connection broken); wait for them."""
        for worker in self.workers:
            worker.stop() if graceful else worker.die()
        for worker in self.workers:
            worker.thread.join(10)


class Worker:
    """One fake gunicorn worker: a ChannelServer on a thread, until :meth:`stop` (graceful) or :meth:`die`."""

    def __init__(self, app, listener: socket.socket, threads: int, name: str) -> None:
        self.name = name
        self.server = ChannelServer(app, threads, name=name)
        self.running = True
        self._wake = os.pipe()  # as gunicorn's signal pipe: a stop is seen at once
        os.set_blocking(self._wake[0], False)
        self.thread = threading.Thread(target=self._serve, args=(listener,), name=f"{name}-loop", daemon=True)
        self.thread.start()

    def _serve(self, listener: socket.socket) -> None:
        try:
            self.server.serve(listener, lambda: self.running, wake_fd=self._wake[0], graceful_s=5)
        finally:
            os.close(self._wake[0])
            os.close(self._wake[1])

    def stop(self) -> None:
        """Stop as gunicorn's SIGTERM stops a worker: bye, then the requests in hand are answered."""
        if self.running:
            self.running = False
            os.write(self._wake[1], b"x")

    def die(self) -> None:
        """Break the worker's connection at once, as a killed process's is (its requests are lost)."""
        self.stop()
        channel = self.server.channel
        if channel is not None:
            with contextlib.suppress(OSError):  # closed already: the worker had stopped
                channel.sock.shutdown(socket.SHUT_RDWR)


def _main() -> int:
    path = os.environ["IMGCLF_BIND"].removeprefix("unix:")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    hup = os.environ.get("FAKE_HUP_FILE")
    if hup:
        signal.signal(signal.SIGHUP, lambda *_: open(hup, "a").write("hup\n"))
    echo = Echo()
    echo.serve(path)
    exit_after = float(os.environ.get("FAKE_EXIT_AFTER_S", "0"))
    if exit_after:
        time.sleep(exit_after)
        return 3
    while not stopped.wait(0.05):
        pass
    echo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
