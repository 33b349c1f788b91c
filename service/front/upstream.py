"""The front's side towards gunicorn: HTTP/1.1 connections over a private unix socket, kept alive if it lets them.

A request reaches this module only once the front has read all of it, so gunicorn's threads never wait
for a client: each exchange writes the whole request at once and reads the whole answer (gunicorn answers
over a local socket, fast). At most ``max_connections`` exchanges run at a time (``IMGCLF_WORKERS`` ×
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


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, request: h11.Request, body: bytes, timeout: float) -> tuple[Answer, bool]:
        """Send one request and read its answer; return it and whether the connection can be reused."""
        data = self.http.send(request) + self.http.send(h11.Data(data=body)) + self.http.send(h11.EndOfMessage())
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), timeout)
        head, parts = None, []
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                chunk = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
                if not chunk and head is None:
                    raise ConnectionResetError("gunicorn closed the connection before answering")
                self.http.receive_data(chunk)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("gunicorn closed the connection mid-answer")
        reusable = self.http.our_state is h11.DONE and self.http.their_state is h11.DONE
        if reusable:
            self.http.start_next_cycle()
            self.idle_since = time.monotonic()
        return Answer(head.status_code, bytes(head.reason), list(head.headers), b"".join(parts)), reusable


class Upstream:
    """Forward complete requests to gunicorn on the unix socket ``path``, at most ``max_connections`` at a time."""

    def __init__(self, path: str, max_connections: int, timeout: float) -> None:
        self.path = path
        self.timeout = timeout  # per read or write on the socket: covers gunicorn's slowest answer
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=READ_CHUNK)
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < POOL_IDLE_S and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    async def forward(self, request: h11.Request, body: bytes) -> Answer:
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
