"""The front: an asyncio HTTP/1.1 server that reads whole requests under deadlines, then hands them to gunicorn.

gunicorn's gthread workers hold a thread for every connection whose request they are still reading, so a
few dozen clients that send a header one byte every two seconds (or a body at 10 bytes/s, or nothing)
take every thread and the service answers nobody. The front accepts on the public port instead: a slow
client costs it one coroutine and a few kB, and only complete requests reach gunicorn (over a private
unix socket, :mod:`imgclf.service.front.upstream`). Parsing is h11's (strict: no obs-fold, one
Content-Length, no Content-Length beside chunked, bounded header and chunk-size lines).

The limits, each an ``IMGCLF_*`` variable (:class:`~imgclf.service.front.settings.FrontSettings`):

* the request head must be complete within ``IMGCLF_HEADER_TIMEOUT`` seconds of the connection's
  opening (or of the first byte of a keep-alive request), else 408 (or a silent close if nothing came);
* the body within ``IMGCLF_BODY_TIMEOUT`` seconds, and at ``IMGCLF_MIN_BODY_RATE`` bytes/s at least on
  average once it has been arriving for ``BODY_RATE_GRACE_S`` seconds, else 408;
* a keep-alive connection idle for ``IMGCLF_KEEPALIVE_TIMEOUT`` seconds is closed;
* at most ``IMGCLF_MAX_CLIENT_CONNECTIONS`` open connections from one client address (by default a
  quarter of the total, at least 32; 429 beyond) and ``IMGCLF_MAX_CONNECTIONS`` in all: beyond, a
  connection holding no request makes room (the longest-idle keep-alive one, else the longest-silent
  new one of the address holding the most; :mod:`imgclf.service.front.slots`), else 503;
* a head over ``IMGCLF_MAX_HEADER_BYTES`` or with more than ``MAX_HEADER_FIELDS`` fields is a 431; a
  body over ``IMGCLF_MAX_UPLOAD_BYTES`` (the service's own limit, a server setting) is a 413 as soon as its
  Content-Length or a chunk-size line says so, before the bytes arrive; a malformed request is a 400;
* the bodies held at once (being read, or waiting for gunicorn) reserve at most
  ``IMGCLF_MAX_BUFFERED_BYTES`` in all (256 MiB), so the front's memory is bounded: a body that would pass
  it is a 503 with ``Retry-After``;
* the answer must be taken by the client within ``IMGCLF_BODY_TIMEOUT`` seconds, else the connection is
  dropped (gunicorn is done with it long before: the answer is buffered here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from http import HTTPStatus

import h11

from imgclf.service.front.settings import FrontSettings
from imgclf.service.front.slots import Slots
from imgclf.service.front.upstream import Answer, Upstream, UpstreamError
from imgclf.service.server import frames
from imgclf.service.server.settings import ServerSettings

log = logging.getLogger("imgclf.front")
access_log = logging.getLogger("imgclf.front.access")

READ_CHUNK = 64 * 1024
MAX_HEADER_FIELDS = 100
LINGER_S = 0.5  # after an error answer, what the client still sends is read (and dropped) this long at most
HOP_BY_HOP = {name.encode() for name in frames.HOP_BY_HOP}  # h11 gives field names in lower case
FORWARDED = {b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip", b"forwarded"}  # set by the front only
NOT_FORWARDED = HOP_BY_HOP | FORWARDED
CLOSE = b"Connection: close\r\n"


class Refused(Exception):
    """The request cannot go on: answer ``status`` with ``message`` (if anything was received) and close."""

    def __init__(self, status: int, message: str, answer: bool = True, retry_after: bool = False) -> None:
        super().__init__(message)
        self.status, self.answer = status, answer
        self.extra = (("Retry-After", "1"),) if retry_after else ()


def error_bytes(status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """Return a whole HTTP/1.1 answer (JSON ``{"error": message}``, Connection: close), for any parser state."""
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close", "Server: imgclf",
            "X-Content-Type-Options: nosniff", "Cache-Control: no-store", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def answer_bytes(answer: Answer, closing: bool) -> bytes:
    """Return the whole HTTP/1.1 answer: the worker's head (framed already), ``Connection: close`` if ``closing``."""
    return b"".join((answer.head, CLOSE if closing else b"", b"\r\n", answer.body))


def head_size(request: h11.Request) -> int:
    """Return the bytes of ``request``'s head as sent (request line, fields, line ends)."""
    return len(request.method) + len(request.target) + 12 + sum(len(k) + len(v) + 4 for k, v in request.headers)


def pending_chunk_bytes(http: h11.Connection) -> int:
    """Return how many bytes the chunk being read still declares (h11 keeps it privately; 0 if unknown)."""
    return getattr(getattr(http, "_reader", None), "_bytes_in_chunk", 0) or 0


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close after an error answer and drop what the client still sends, briefly.

    Closing a socket with unread bytes in it makes the kernel send a reset, which can destroy the answer
    before the client reads it; reading on for ``LINGER_S`` lets the client see the 4xx.
    """
    deadline = time.monotonic() + LINGER_S
    try:
        await asyncio.wait_for(writer.drain(), LINGER_S)
        if writer.can_write_eof():
            writer.write_eof()
        while (left := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(reader.read(READ_CHUNK), left):
                return
    except (TimeoutError, ConnectionError, OSError):
        pass


class Front:
    """Accept client connections, read requests under the limits, forward them through ``upstream``.

    ``server`` gives the upload limit and whether to write the access log.
    """

    def __init__(self, limits: FrontSettings, upstream: Upstream, server: ServerSettings = ServerSettings()) -> None:
        self.limits, self.upstream = limits, upstream
        self.access, self.max_body_bytes = server.access_log, server.max_upload_bytes
        self.connections: set[asyncio.Task] = set()
        self.slots = Slots(limits.max_connections, limits.client_limit)
        self.busy = 0  # connections with a request being forwarded or answered
        self.buffered = 0  # bytes reserved by the bodies being read or forwarded
        self.closing = False
        self.stats = {"accepted": 0, "refused": 0, "timed_out": 0, "bad": 0, "forwarded": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection until it closes, idles out, breaks a limit or the front stops."""
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "-"
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            if not self._take_slot(client, writer):
                await linger(reader, writer)
                return
            try:
                self.stats["accepted"] += 1
                await self._serve(reader, writer, client)
            finally:
                self.slots.release(writer)
        except Refused as e:
            self.stats["timed_out" if e.status == 408 else "bad"] += 1
            log.debug("%s: %s %s", client, e.status, e)
            if e.answer:
                writer.write(error_bytes(e.status, str(e), e.extra))
                await linger(reader, writer)
        except (TimeoutError, ConnectionError):
            pass  # the client went away, or would not take its answer
        except Exception:  # a bug of the front: say so, answer this client, keep serving the others
            log.exception("front: unexpected error serving %s", client)
            writer.write(error_bytes(502, "the front failed on this request"))
        finally:
            self.connections.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    def _take_slot(self, client: str, writer: asyncio.StreamWriter) -> bool:
        """Give a new connection a slot (:class:`~imgclf.service.front.slots.Slots`), or write its refusal."""
        status = self.slots.take(client, writer)
        if status:
            self.stats["refused"] += 1
            message = "too many connections from this address" if status == 429 else "too many connections"
            writer.write(error_bytes(status, message + "; retry later", (("Retry-After", "1"),)))
        return not status

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        """Serve the requests of one connection: each one's head and body are h11's to parse, its answer ours.

        h11 never sees the answers (checking each field again cost as much as parsing the request): the
        next request of a keep-alive connection gets a fresh parser, given what came after this one.
        """
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        first = True
        while not self.closing:
            request = await self._read_head(http, reader, writer, first)
            if request is None:
                return
            first = False
            started = time.monotonic()
            self.busy += 1  # a graceful stop waits for it from here on
            reserved = [0]  # bytes of IMGCLF_MAX_BUFFERED_BYTES this request's body holds
            try:
                body = await self._read_body(http, reader, writer, request, reserved)
                answer = await self._forward(request, body, client)
                # the client asked to close (Connection: close, HTTP/1.0), or the front is stopping
                closing = self.closing or http.their_state is not h11.DONE
                writer.write(answer_bytes(answer, closing))
                if writer.transport.get_write_buffer_size():  # the client has not taken it all yet
                    async with asyncio.timeout(self.limits.body_timeout):
                        await writer.drain()
            finally:
                self.busy -= 1
                self.buffered -= reserved[0]
            if self.access:
                self._log_access(client, request, answer, started)
            if closing:
                return
            following, closed = http.trailing_data  # a pipelined request, or the client's half-close
            http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
            if following:
                http.receive_data(following)
            if closed:
                http.receive_data(b"")

    async def _receive(self, http: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> bool:
        """Read once, within ``timeout`` seconds, into ``http``; return False on timeout."""
        if timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):  # not wait_for: that costs a task per read
                data = await reader.read(READ_CHUNK)
        except TimeoutError:
            return False
        http.receive_data(data)  # b"" = the client closed its side
        return True

    async def _read_head(self, http: h11.Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, first: bool) -> h11.Request | None:
        """Return the next request's head, or None when the client closed or idled out between requests."""
        limits = self.limits
        deadline = None
        if first:  # a new connection waits (without a request: it can be evicted) until its first byte
            deadline = time.monotonic() + limits.header_timeout
        else:  # keep-alive: idle until a first byte, then the header deadline runs
            self.slots.idle(writer)
            if not http.trailing_data[0] and not await self._receive(http, reader, limits.keepalive_timeout):
                return None
            self.slots.working(writer)
            deadline = time.monotonic() + limits.header_timeout
        received = bool(http.trailing_data[0]) or not first
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as e:
                if e.error_status_hint == 431:
                    raise Refused(431, f"request head over {limits.max_header_bytes} bytes") from None
                raise Refused(e.error_status_hint, f"malformed request: {e}") from None
            if isinstance(event, h11.Request):
                if len(event.headers) > MAX_HEADER_FIELDS:
                    raise Refused(431, f"more than {MAX_HEADER_FIELDS} header fields")
                if head_size(event) > limits.max_header_bytes:
                    raise Refused(431, f"request head over {limits.max_header_bytes} bytes")
                names = {name for name, _ in event.headers}  # h11 gives them in lower case
                if b"content-length" in names and b"transfer-encoding" in names:  # RFC 9112 6.1: smuggling
                    raise Refused(400, "malformed request: both Content-Length and Transfer-Encoding")
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if not await self._receive(http, reader, deadline - time.monotonic()):
                raise Refused(408, f"request head not received within {limits.header_timeout:g} s",
                              answer=received or bool(http.trailing_data[0]))
            received = True
            self.slots.working(writer)  # request bytes in hand: never closed to make room

    async def _read_body(self, http: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         request: h11.Request, reserved: list[int]) -> bytearray:
        """Return the whole body of ``request``, or raise Refused when it breaks a limit.

        The body's bytes are reserved in ``reserved`` (against ``IMGCLF_MAX_BUFFERED_BYTES``, all bodies together)
        before they arrive: the whole Content-Length at once, a chunked body as its chunk-size lines declare.
        """
        limits = self.limits

        def reserve(total: int) -> None:
            extra = total - reserved[0]
            if extra > 0:
                if self.buffered + extra > limits.max_buffered_bytes:
                    raise Refused(503, "too many uploads at once; retry later", retry_after=True)
                self.buffered += extra
                reserved[0] = total

        length = dict(request.headers).get(b"content-length")
        if length is not None and int(length) > self.max_body_bytes:
            raise Refused(413, f"request body of {int(length)} bytes is over the limit of {self.max_body_bytes}")
        reserve(int(length or 0))
        if http.they_are_waiting_for_100_continue:
            writer.write(http.send(h11.InformationalResponse(status_code=100, headers=[])))
        started = time.monotonic()
        deadline = started + limits.body_timeout
        body = bytearray()  # grown in place: a list of chunks joined at the end held the body twice
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, f"malformed request body: {e}") from None
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return body
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("client closed mid-body")
            size = len(body)
            if size + pending_chunk_bytes(http) > self.max_body_bytes:
                raise Refused(413, f"request body over the limit of {self.max_body_bytes} bytes")
            reserve(size + pending_chunk_bytes(http))
            if event is not h11.NEED_DATA:
                continue
            now = time.monotonic()
            if now >= deadline:
                raise Refused(408, f"request body not received within {limits.body_timeout:g} s")
            elapsed = now - started
            if limits.min_body_rate and elapsed > limits.body_rate_grace \
                    and size < limits.min_body_rate * (elapsed - limits.body_rate_grace):
                raise Refused(408, f"request body arriving slower than {limits.min_body_rate} bytes/s")
            # wake up in time for whichever limit comes first
            wait = deadline - now
            if limits.min_body_rate:
                wait = min(wait, max(0.05, limits.body_rate_grace + size / limits.min_body_rate - elapsed + 0.01))
            if not await self._receive(http, reader, wait) and time.monotonic() >= deadline:
                raise Refused(408, f"request body not received within {limits.body_timeout:g} s")

    async def _forward(self, request: h11.Request, body: bytearray, client: str) -> Answer:
        address = client.encode()
        headers = [field for field in request.headers if field[0] not in NOT_FORWARDED]  # h11: names in lower case
        if not any(name == b"host" for name, _ in headers):
            headers.append((b"host", b"imgclf"))
        headers += [(b"content-length", b"%d" % len(body)), (b"x-forwarded-for", address),
                    (b"x-real-ip", address), (b"x-forwarded-proto", b"http")]
        self.stats["forwarded"] += 1
        try:
            return await self.upstream.forward(request.method, request.target, headers, body)
        except UpstreamError as e:
            starting = isinstance(e.__cause__, (FileNotFoundError, ConnectionRefusedError))  # not listening yet
            log.log(logging.DEBUG if starting else logging.WARNING, "gunicorn did not answer %s %s: %s",
                    request.method.decode(), request.target.decode(), e)
            message = b'{"error": "the service is not answering; retry later"}'
            return Answer.of(503, b"Service Unavailable", [(b"Content-Type", b"application/json"),
                                                           (b"Retry-After", b"1")], message,
                             head_only=request.method == b"HEAD")

    def _log_access(self, client: str, request: h11.Request, answer: Answer, started: float) -> None:
        headers = dict(request.headers)
        access_log.info('%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s" %.1fms', client,
                        time.strftime("%d/%b/%Y:%H:%M:%S %z"), request.method.decode(), request.target.decode(),
                        request.http_version.decode(), answer.status, len(answer.body),
                        headers.get(b"referer", b"-").decode("latin-1"),
                        headers.get(b"user-agent", b"-").decode("latin-1"), (time.monotonic() - started) * 1e3)

    def close_idle(self) -> None:
        """Stop reusing connections and close those that idle between requests (a graceful stop)."""
        self.closing = True
        for writer in self.slots.idle_connections():
            writer.close()
