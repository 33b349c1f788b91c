"""A closed-loop HTTP/1.1 load generator that costs little CPU: one thread, raw sockets, one request built once.

On a small machine the load generator shares the cores with the server it
measures; a thread per client with ``http.client`` spends about a millisecond
of CPU per request on its own (header parsing, the GIL handed between 16
threads). Here one thread drives every connection with ``selectors``: each
connection sends the same prepared bytes, reads the answer's head, then exactly
``Content-Length`` (or chunked) body bytes, and sends again at once. What it
costs is measured (:attr:`LoadResult.cpu_seconds`, this process's CPU time
over the run) so that a benchmark can report it beside the server's.

    result = run_load("127.0.0.1", 8000, request_bytes, concurrency=16, seconds=20)
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field

import numpy as np


def post_request(host: str, path: str, body: bytes, content_type: str) -> bytes:
    """Return the bytes of one keep-alive HTTP/1.1 POST."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode("latin-1") + body


@dataclass
class LoadResult:
    """What one run measured: latencies (seconds) of the 2xx answers, the errors, wall and CPU seconds."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (user + system) while it ran: the generator's own cost
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Answered (2xx) requests per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the 2xx latencies, in milliseconds (NaN without any)."""
        return float(np.percentile(np.asarray(self.latencies) * 1000, q)) if self.latencies else float("nan")


class _Connection:
    """One client connection: its socket, what is left to send, what has been read, when the request left."""

    def __init__(self, address: tuple[str, int], request: bytes):
        self.address, self.request = address, request
        self.sock: socket.socket | None = None
        self.out = memoryview(b"")
        self.buffer = bytearray()
        self.started = 0.0
        self.need: int | None = None  # bytes of head + body once the head is parsed
        self.status = 0
        self.close_after = False
        self.chunked = False

    def open(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        return sock

    def begin(self) -> None:
        self.out = memoryview(self.request)
        self.buffer.clear()
        self.need, self.status, self.close_after, self.chunked = None, 0, False, False
        self.started = time.perf_counter()

    def parse_head(self) -> None:
        """Parse the status line and headers once they are in (sets ``need``)."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value == "close":
                self.close_after = True
            elif name == "transfer-encoding" and "chunked" in value:
                self.chunked = True
        self.need = end + 4 + length

    def complete(self) -> bool:
        """True once the whole answer has been read."""
        if self.need is None:
            self.parse_head()
            if self.need is None:
                return False
        if self.chunked:
            return self.buffer.endswith(b"0\r\n\r\n")
        return len(self.buffer) >= self.need


def run_load(host: str, port: int, request: bytes, concurrency: int, seconds: float,
             max_requests: int = 0) -> LoadResult:
    """Send ``request`` over ``concurrency`` keep-alive connections, each sending again as soon as answered.

    Stops sending after ``seconds`` (or ``max_requests`` sent, 0: no limit) and waits for the answers in
    flight (at most 60 s more). A connection the server closes is reopened; a failed one counts an error.
    """
    result = LoadResult(concurrency)
    selector = selectors.DefaultSelector()
    connections = [_Connection((host, port), request) for _ in range(concurrency)]
    sent = 0
    cpu0, started = time.process_time(), time.perf_counter()
    stop_at = started + seconds

    def fail(connection: _Connection, why: str) -> None:
        result.errors += 1
        result.first_error = result.first_error or why
        if connection.sock is not None:
            selector.unregister(connection.sock)
            connection.sock.close()
            connection.sock = None

    def send_next(connection: _Connection) -> bool:
        nonlocal sent
        if time.perf_counter() >= stop_at or (max_requests and sent >= max_requests):
            if connection.sock is not None:  # done: it must not read the server's later close as an error
                selector.unregister(connection.sock)
                connection.sock.close()
                connection.sock = None
            return False
        try:
            if connection.sock is None:
                selector.register(connection.open(), selectors.EVENT_WRITE, connection)
            else:
                selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        except OSError as exc:
            fail(connection, f"connect: {exc}")
            return False
        connection.begin()
        sent += 1
        return True

    active = sum(send_next(c) for c in connections)
    hard_stop = stop_at + 60
    while active and time.perf_counter() < hard_stop:
        for key, events in selector.select(timeout=1.0):
            connection: _Connection = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    n = connection.sock.send(connection.out)
                    connection.out = connection.out[n:]
                    if not connection.out:
                        selector.modify(connection.sock, selectors.EVENT_READ, connection)
                    continue
                data = connection.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                fail(connection, f"{type(exc).__name__}: {exc}")
                active -= 1
                active += send_next(connection)
                continue
            if not data:
                fail(connection, "the server closed the connection before answering")
                active -= 1
                active += send_next(connection)
                continue
            connection.buffer += data
            if not connection.complete():
                continue
            took = time.perf_counter() - connection.started
            result.statuses[connection.status] = result.statuses.get(connection.status, 0) + 1
            if 200 <= connection.status < 300:
                result.latencies.append(took)
            else:
                result.errors += 1
                result.first_error = result.first_error or bytes(connection.buffer[:300]).decode("latin-1")
            if connection.close_after:
                selector.unregister(connection.sock)
                connection.sock.close()
                connection.sock = None
            if not send_next(connection):
                active -= 1
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu0
    for connection in connections:
        if connection.sock is not None:
            connection.sock.close()
    selector.close()
    return result
