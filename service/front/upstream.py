"""The front's side towards gunicorn: one framed channel per worker, requests to the worker with the most free threads.

A request reaches this module only once the front has read all of it, so gunicorn's threads never wait
for a client. Each gunicorn worker behind the front (:mod:`imgclf.service.server.channel`) takes one
connection from the front on the private unix socket and keeps it; requests and answers travel on it as
frames (:mod:`imgclf.service.server.frames`), so no request costs a connection, an accept or a second
HTTP parse. A worker says how many threads it has (its hello); :class:`Upstream` sends it at most that many
requests at a time, each to the worker with the fewest in hand, and the others wait here in arrival order,
where waiting costs a future and not a thread: a free thread takes the next request.

Workers come and go (a crash, a reload, ``max_requests``): the front always keeps one more connection
open, waiting in the socket's backlog, for the next worker to take (a worker with a connection takes no
other). A worker that stops says ``bye`` and gets no more requests; its connection is closed once its
answers are in. A worker that dies fails the requests it had (503 to their clients); the waiting ones go
to the other workers.

A request that waits longer than ``timeout`` for a free thread, or whose answer takes longer, fails with
:class:`UpstreamError`; its thread counts as busy until its late answer arrives (and is dropped).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from imgclf.service.server.frames import (
    BYE,
    CONTROL,
    SERVER,
    FrameError,
    FrameReader,
    parse_hello,
    request_frame,
)

log = logging.getLogger("imgclf.front")

RETRY_S = (0.02, 0.5)  # reconnect to a socket nobody listens on yet: first after 20 ms, at most every 0.5 s
MAX_ID = 2 ** 32 - 1
# A body larger than this is written a slice at a time as the worker reads it: asyncio's transports copy
# what the socket does not take at once, which held every large body twice.
WRITE_SLICE = 256 * 1024


class UpstreamError(Exception):
    """gunicorn could not be reached, or failed before its answer was complete."""


@dataclass
class Answer:
    """A worker's whole answer: the status, the head (status line and fields, each line ending CRLF), the body."""

    status: int
    head: bytes
    body: bytes

    @classmethod
    def of(cls, status: int, reason: bytes, fields: list[tuple[bytes, bytes]], body: bytes,
           head_only: bool = False) -> Answer:
        """Return the front's own answer, framed by Content-Length (no body and no length to a HEAD request)."""
        framing = b"" if head_only else b"Content-Length: %d\r\n" % len(body)
        head = b"".join([b"HTTP/1.1 %d %s\r\n" % (status, reason), *[b"%s: %s\r\n" % f for f in fields],
                         b"Server: " + SERVER + b"\r\n", framing])
        return cls(status, head, b"" if head_only else body)


class _Channel(asyncio.Protocol):
    """One connection to a gunicorn worker: request frames out, answer frames in."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.pid, self.capacity = 0, 0  # from the worker's hello; capacity 0: not taken by a worker yet
        self.busy = 0  # requests sent and not answered (abandoned ones included: their thread still works)
        self.pending: dict[int, asyncio.Future | None] = {}  # None: abandoned, its answer is dropped
        self.draining = False  # the worker said bye
        self.lost = False
        self._out: deque = deque()  # what waits to be written, in order (a large body in slices)
        self._paused = False  # the transport's buffer is full

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
            for frame_id, head, body in frames:
                if frame_id == CONTROL:
                    self._control(head)
                    continue
                if frame_id not in self.pending:
                    raise FrameError(f"an answer to request {frame_id}, which this channel did not send")
                waiter = self.pending.pop(frame_id)
                self.busy -= 1
                if waiter is not None and not waiter.done():
                    waiter.set_result(Answer(int(head[9:12]), head, body))
                self.upstream._freed(self)
        except (FrameError, ValueError) as e:
            log.error("gunicorn worker %s: broken channel (%s); closing it", self.pid, e)
            self.transport.abort()

    def _control(self, head: bytes) -> None:
        if head == BYE:
            self.draining = True
            self.upstream._freed(self)
        elif not self.capacity:
            self.pid, self.capacity = parse_hello(head)
            self.upstream._opened(self)
        else:
            raise FrameError(f"unexpected control frame {head[:40]!r}")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._out.clear()
        for waiter in self.pending.values():
            if waiter is not None and not waiter.done():
                waiter.set_exception(UpstreamError(f"gunicorn worker {self.pid} closed its channel mid-request"))
        self.pending.clear()
        self.busy = 0
        self.upstream._lost(self)

    def send(self, request_id: int, head: bytes, body: bytes | bytearray) -> asyncio.Future:
        """Write a request frame (its head, then its body) after those before it; return its answer's future."""
        waiter = asyncio.get_running_loop().create_future()
        self.pending[request_id] = waiter
        if not self._out and not self._paused and len(body) <= WRITE_SLICE:
            self.transport.write(head + body if body else head)  # the common case: one write, nothing queued
        else:
            self._out.append(head)
            if body:
                self._out.append(memoryview(body))
            self._write_out()
        return waiter

    def _write_out(self) -> None:
        """Write what is queued, a slice at a time, while the transport takes it (no copy of a whole body)."""
        out = self._out
        while out and not self._paused and not self.lost:
            piece = out[0]
            if len(piece) <= WRITE_SLICE:
                out.popleft()
                self.transport.write(piece)
            else:
                out[0] = piece[WRITE_SLICE:]
                self.transport.write(piece[:WRITE_SLICE])

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._write_out()


class Upstream:
    """Forward complete requests to gunicorn's workers through the unix socket ``path``."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout  # how long a request may wait for a free thread, and then for its answer
        self.channels: list[_Channel] = []  # taken by a worker, not lost
        self._waiting: deque[asyncio.Future] = deque()  # requests waiting for a free thread, in arrival order
        self._spare: _Channel | None = None  # connected, not taken by a worker yet
        self._spare_gone: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._connecting: asyncio.Lock | None = None
        self._last_id = 0
        self.closed = False
        self.connect_error: OSError | None = None  # why the last connection attempt failed (None: it did not)

    def start(self) -> None:
        """Begin connecting (a task of the running loop: it retries until gunicorn listens)."""
        if self._task is None and not self.closed:
            self._spare_gone, self._connecting = asyncio.Event(), asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._keep_a_spare())

    async def _connect(self) -> bool:
        """Open the spare connection unless one is open; return False if the socket cannot be reached."""
        async with self._connecting:
            if self._spare is not None:
                return True
            try:
                _, self._spare = await asyncio.get_running_loop().create_unix_connection(lambda: _Channel(self),
                                                                                         self.path)
            except OSError as e:
                self.connect_error = e
                return False
            self.connect_error = None
            return True

    async def _keep_a_spare(self) -> None:
        delay = RETRY_S[0]
        while not self.closed:
            if not await self._connect():
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
                continue
            self._spare_gone.clear()
            await self._spare_gone.wait()
            delay = RETRY_S[0]

    def _opened(self, channel: _Channel) -> None:
        if channel is self._spare:
            self._spare = None
            self._spare_gone.set()
        self.channels.append(channel)
        log.debug("gunicorn worker %d took a channel (%d threads)", channel.pid, channel.capacity)
        self._freed(channel)

    def _lost(self, channel: _Channel) -> None:
        if channel is self._spare:  # closed before a worker took it (gunicorn stopping, or a worker died)
            self._spare = None
            if self._spare_gone is not None:
                asyncio.get_running_loop().call_later(RETRY_S[0], self._spare_gone.set)
        elif channel in self.channels:
            self.channels.remove(channel)

    def _freed(self, channel: _Channel) -> None:
        """A thread of ``channel``'s worker is free (or the worker stops): hand waiting requests on."""
        if channel.draining and not channel.busy and not channel.lost:
            channel.transport.close()
        waiting = self._waiting
        while waiting:
            free = self._free_channel()
            if free is None:
                return
            waiter = waiting.popleft()
            if not waiter.done():
                free.busy += 1
                waiter.set_result(free)

    def _free_channel(self) -> _Channel | None:
        best = None
        for channel in self.channels:
            if channel.busy < channel.capacity and not channel.draining and (best is None or channel.busy < best.busy):
                best = channel
        return best

    async def _take_thread(self) -> _Channel:
        channel = None if self._waiting else self._free_channel()
        if channel is not None:
            channel.busy += 1
            return channel
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed a thread just as it gave up: give it back
                channel = waiter.result()
                channel.busy -= 1
                self._freed(channel)
            else:
                waiter.cancel()
            raise

    async def forward(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes | bytearray) -> Answer:
        """Return gunicorn's answer to the request (``headers`` as the worker gets them; the body whole).

        Raises:
            UpstreamError: no worker had a free thread within the timeout, or the answer did not come.
        """
        self.start()
        if not self.channels and self._spare is None and not await self._connect() and not self.channels:
            # nobody listens (and no worker took a channel meanwhile): at once, not after the timeout
            raise UpstreamError(f"gunicorn is not listening: {self.connect_error}") from self.connect_error
        try:
            channel = await self._take_thread()
        except TimeoutError:
            reason = "no gunicorn thread free" if self.channels else "no gunicorn worker answering"
            raise UpstreamError(f"{reason} within {self.timeout:g} s") from None
        self._last_id = self._last_id % MAX_ID + 1
        request_id = self._last_id
        answer = channel.send(request_id, request_frame(request_id, method, target, headers, len(body)), body)
        try:
            async with asyncio.timeout(self.timeout):
                return await answer
        except BaseException as e:
            if request_id in channel.pending:
                channel.pending[request_id] = None  # abandoned: its thread is busy until the answer comes
            if isinstance(e, TimeoutError):
                raise UpstreamError(f"gunicorn worker {channel.pid} silent for {self.timeout:g} s") from None
            raise

    def close(self) -> None:
        """Stop connecting; close every channel."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
        for channel in [*self.channels, *([self._spare] if self._spare else [])]:
            if channel.transport is not None:
                channel.transport.close()
