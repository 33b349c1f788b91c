"""The front's side towards gunicorn: HTTP/1.1 connections over a private unix socket, kept alive if it lets them.

A request reaches this module only once the front has read all of it, so gunicorn's threads never wait
for a client: each exchange writes the whole request and reads the whole answer at the same time (gunicorn
answers over a local socket, fast, and sometimes before it has read the body: that answer is the one
the client gets). At most ``max_connections`` exchanges run at a time (``IMGCLF_WORKERS`` ×
``IMGCLF_THREADS``: one per gunicorn thread); the others wait here, in the front, where waiting costs a
coroutine and not a thread.

gunicorn behind the front answers one request per connection and accepts a connection only while a
worker has a free thread (:mod:`imgclf.service.server.gunicorn_conf`), so requests go to whichever worker is
free first; a pooled keep-alive connection would stay with the worker that accepted it. The pool serves
an upstream that keeps connections alive. A pooled connection that the upstream closed while it was
idle (its keep-alive ran out, a worker restarted) fails before any answer arrives: the exchange is then
retried once on a fresh connection. A failure after the answer began, or on a fresh connection, is an
:class:`UpstreamError`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

import h11

READ_CHUNK = 256 * 1024
POOL_IDLE_S = 20.0  # a pooled connection idle longer is closed (gunicorn's own keep-alive on the socket is longer)


class UpstreamError(Exception):
    """gunicorn could not be reached, or failed mid-answer."""


@dataclass
class Answer:
    """gunicorn's whole answer to one request."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Sender:
    """Write ``pieces`` to a non-blocking socket from the event loop's writer callback, as the socket takes them.

    Not a task: stopping it cancels nothing and keeps no exception (a cancelled or failed task keeps its
    traceback, whose frames hold the body, in a reference cycle that only the garbage collector breaks).
    The bytes are sent as they are, without a copy.
    """

    def __init__(self, sock: socket.socket, pieces: list) -> None:
        self.sock, self.views = sock, [memoryview(piece) for piece in pieces if len(piece)]
        self.failed = False
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._loop.add_writer(self._fd, self._write)

    @property
    def sent(self) -> bool:
        """Return whether every byte was written."""
        return not self.failed and not self.views

    def _write(self) -> None:
        try:
            while self.views:
                n = self.sock.send(self.views[0])
                if n < len(self.views[0]):
                    self.views[0] = self.views[0][n:]
                    return  # the socket is full: called again once it takes more
                self.views.pop(0)
        except BlockingIOError:
            return
        except OSError:  # gunicorn closed its side: its answer (an early one) may still be there to read
            self.failed = True
        self.stop()

    def stop(self) -> None:
        """Stop writing (done, failed, or the answer came first); drop what is left."""
        if self._fd >= 0:
            self._loop.remove_writer(self._fd)
            self._fd = -1
        if self.views:  # what is left is dropped: not all was sent
            self.views, self.failed = [], True


class _Connection:
    """One connection to gunicorn, on a non-blocking socket (not a stream: a failed write must not end the reads)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.sock.close()

    def closed_by_peer(self) -> bool:
        """Return whether gunicorn has closed its side (or sent something unasked) while this one was idle."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)  # b"": closed; a byte: an answer nobody asked for
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    async def exchange(self, request: h11.Request, body: bytes | bytearray, timeout: float) -> tuple[Answer, bool]:
        """Send one request and read its answer; return it and whether the connection can be reused.

        The body is written while the answer is read: gunicorn may answer before it has read the body (an
        unknown model, 401, 405, 415, ...) and close the socket, and that answer is what the client gets,
        not the broken pipe of the write. Once the answer is whole, whatever is left unwritten is dropped
        (and the connection with it).
        """
        pieces = self.http.send_with_data_passthrough(request) + \
            self.http.send_with_data_passthrough(h11.Data(data=body)) + \
            self.http.send_with_data_passthrough(h11.EndOfMessage())
        sending = _Sender(self.sock, pieces)
        try:
            answer = await self._read_answer(timeout)
        finally:
            sending.stop()
        reusable = sending.sent and self.http.our_state is h11.DONE and self.http.their_state is h11.DONE
        if reusable:
            self.http.start_next_cycle()
            self.idle_since = time.monotonic()
        return answer, reusable

    async def _read_answer(self, timeout: float) -> Answer:
        head, body = None, bytearray()
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, READ_CHUNK), timeout)
                if not chunk and head is None:
                    raise ConnectionResetError("gunicorn closed the connection before answering")
                self.http.receive_data(chunk)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Answer(head.status_code, bytes(head.reason), list(head.headers), bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("gunicorn closed the connection mid-answer")


class Upstream:
    """Forward complete requests to gunicorn on the unix socket ``path``, at most ``max_connections`` at a time."""

    def __init__(self, path: str, max_connections: int, timeout: float) -> None:
        self.path = path
        self.timeout = timeout  # per read or write on the socket: covers gunicorn's slowest answer
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.path)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < POOL_IDLE_S and not connection.closed_by_peer():
                return connection
            connection.close()
        return None

    async def forward(self, request: h11.Request, body: bytes | bytearray) -> Answer:
        """Return gunicorn's answer to ``request`` with ``body`` (already framed by Content-Length).

        Raises:
            UpstreamError: gunicorn is not listening, or failed before its answer was complete.
        """
        try:  # a request waits for a free gunicorn thread at most as long as for gunicorn's answer
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except TimeoutError:
            raise UpstreamError(f"no gunicorn thread free within {self.timeout:g} s") from None
        try:
            for attempt in (0, 1):
                connection = self._take_idle() if attempt == 0 else None
                reused = connection is not None
                try:
                    if connection is None:
                        connection = await self._connect()
                    answer, reusable = await connection.exchange(request, body, self.timeout)
                except (TimeoutError, OSError, EOFError, h11.ProtocolError) as e:
                    if connection is not None:
                        connection.close()
                    if reused and isinstance(e, (ConnectionError, h11.ProtocolError, BrokenPipeError)):
                        continue  # the pooled connection had gone stale: once more on a new one
                    raise UpstreamError(f"{type(e).__name__}: {e}") from e
                if reusable:
                    self._idle.append(connection)
                else:
                    connection.close()
                return answer
        finally:
            self._slots.release()
        raise AssertionError("not reached")

    def close(self) -> None:
        """Close the idle pooled connections."""
        while self._idle:
            self._idle.pop().close()
