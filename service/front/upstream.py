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

The request head is written as bytes (its fields come from the client's request, already parsed and
checked by h11 in :mod:`imgclf.service.front.proxy`) and the answer is read by :class:`AnswerParser`, a
small strict parser: gunicorn is our own process, so this side needs no general HTTP library, and each
exchange runs from the event loop's reader and writer callbacks (no task, no timer per read), which is
where the front used to spend a third of its CPU per request.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass

READ_CHUNK = 256 * 1024
POOL_IDLE_S = 20.0  # a pooled connection idle longer is closed (gunicorn's own keep-alive on the socket is longer)
MAX_ANSWER_HEAD_BYTES = 64 * 1024  # gunicorn's heads are a few hundred bytes: a larger one is a fault
MAX_CHUNK_LINE_BYTES = 1024  # a chunk-size line (hex size and extensions)
# RFC 9112: "HTTP/1.x" SP 3DIGIT SP reason (visible characters, spaces, tabs; possibly empty)
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")


class UpstreamError(Exception):
    """gunicorn could not be reached, or failed mid-answer."""


class AnswerError(ValueError):
    """gunicorn's answer is not HTTP/1.1 as this parser accepts it."""


@dataclass
class Answer:
    """gunicorn's whole answer to one request."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # names as gunicorn spelled them
    body: bytes


def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Return the bytes of an HTTP/1.1 request head (the fields must be valid already: h11 parsed them)."""
    return b"".join([method, b" ", target, b" HTTP/1.1\r\n",
                     *[b"%s: %s\r\n" % field for field in headers], b"\r\n"])


class AnswerParser:
    """Read one answer from the bytes fed to it: a status line, fields, then a Content-Length or chunked body.

    Strict, for an upstream of our own: no obs-fold, one Content-Length (digits), ``chunked`` the only
    transfer coding and never beside a Content-Length; an answer with neither (a body until the close)
    is refused, as are heads and chunk-size lines over their bounds. Interim (1xx) answers are skipped.
    ``head_only``: the request was HEAD (the answer has no body, whatever it declares).
    """

    def __init__(self, head_only: bool = False) -> None:
        self.head_only = head_only
        self.buffer = bytearray()
        self.answer: Answer | None = None  # set once the answer is whole
        self.keep_alive = False  # the connection can carry another request after this answer
        self.extra = False  # bytes came after the answer
        self._head: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        self._length = -1  # the body's Content-Length, or -1: chunked
        self._body = bytearray()
        self._position = 0  # in ``buffer``: what is parsed already
        self._trailers = False

    def feed(self, data: bytes) -> bool:
        """Add ``data`` (what the socket gave); return True once the answer is whole.

        Raises:
            AnswerError: the bytes are not an answer this parser accepts.
        """
        if self.answer is not None:
            self.extra = self.extra or bool(data)
            return True
        self.buffer += data
        while self._head is None:
            if not self._parse_head():
                return False
        if self._length >= 0:
            if len(self.buffer) < self._length:
                return False
            self._finish(bytes(self.buffer[:self._length]), len(self.buffer) > self._length)
            return True
        return self._parse_chunks()

    def _parse_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_ANSWER_HEAD_BYTES:
                raise AnswerError(f"answer head over {MAX_ANSWER_HEAD_BYTES} bytes")
            return False
        if end > MAX_ANSWER_HEAD_BYTES:
            raise AnswerError(f"answer head over {MAX_ANSWER_HEAD_BYTES} bytes")
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        del self.buffer[:end + 4]
        status_line = STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise AnswerError(f"bad status line {lines[0][:100]!r}")
        status, reason = int(status_line[1]), status_line[2] or b""
        headers, length, chunked, close = [], None, False, lines[0].startswith(b"HTTP/1.0")
        for line in lines[1:]:
            field = FIELD.fullmatch(line)
            if field is None:
                raise AnswerError(f"bad header field {line[:100]!r}")
            name, value = field[1], field[2]
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit() or len(value) > 18 or (length is not None and int(value) != length):
                    raise AnswerError(f"bad Content-Length {value[:30]!r}")
                length = int(value)
            elif lower == b"transfer-encoding":
                if value.lower() != b"chunked" or chunked:
                    raise AnswerError(f"unsupported Transfer-Encoding {value[:30]!r}")
                chunked = True
            elif lower == b"connection":
                close = close or b"close" in value.lower()
            headers.append((name, value))
        if 100 <= status < 200:
            if status == 101:
                raise AnswerError("101 Switching Protocols was not asked for")
            return True  # an interim answer: the real one follows
        if chunked and length is not None:
            raise AnswerError("both Content-Length and Transfer-Encoding")
        self._head = (status, reason, headers)
        self.keep_alive = not close
        if self.head_only or status in (204, 304):
            self._length = 0
        elif length is not None:
            self._length = length
        elif not chunked:
            raise AnswerError("answer without Content-Length or chunked framing")
        return True

    def _parse_chunks(self) -> bool:
        buffer = self.buffer
        while True:
            position = self._position
            end = buffer.find(b"\r\n", position)
            if end < 0:
                if len(buffer) - position > MAX_CHUNK_LINE_BYTES:
                    raise AnswerError("chunk-size line too long")
                return False
            if self._trailers:  # fields after the last chunk: dropped; an empty line ends the answer
                self._position = end + 2
                if end == position:
                    self._finish(bytes(self._body), end + 2 < len(buffer))
                    return True
                continue
            if end - position > MAX_CHUNK_LINE_BYTES:
                raise AnswerError("chunk-size line too long")
            size_line = CHUNK_SIZE.fullmatch(buffer, position, end)
            if size_line is None:
                raise AnswerError(f"bad chunk-size line {bytes(buffer[position:end])[:30]!r}")
            size = int(size_line[1], 16)
            if size == 0:
                self._trailers = True
                self._position = end + 2
                continue
            if len(buffer) < end + 2 + size + 2:
                return False
            if buffer[end + 2 + size:end + 4 + size] != b"\r\n":
                raise AnswerError("chunk not followed by CRLF")
            self._body += buffer[end + 2:end + 2 + size]
            del buffer[:end + 4 + size]  # parsed chunks are dropped: the buffer holds one chunk at most
            self._position = 0

    def _finish(self, body: bytes, extra: bool) -> None:
        status, reason, headers = self._head
        self.answer = Answer(status, reason, headers, body)
        self.extra = extra
        self.buffer, self._body = bytearray(), bytearray()


class _Exchange:
    """Write a request and read its answer on a non-blocking socket, from the event loop's callbacks.

    Not a task: stopping it cancels nothing and keeps no exception (a cancelled or failed task keeps its
    traceback, whose frames hold the body, in a reference cycle that only the garbage collector breaks).
    The request's bytes are sent as they are, without a copy; what the socket takes at once (usually all
    of it: a unix socket's buffer holds a whole image) is written before any callback is registered.
    The answer must progress at least every ``timeout`` seconds (one timer per exchange, moved on as bytes
    arrive), else it fails with TimeoutError.
    """

    def __init__(self, sock: socket.socket, pieces: list, parser: AnswerParser, timeout: float) -> None:
        self.sock, self.parser, self.timeout = sock, parser, timeout
        self.views = [memoryview(piece) for piece in pieces if len(piece)]
        self.failed = False  # not every byte of the request was written
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self.done: asyncio.Future = self._loop.create_future()
        self._writing = False
        self._write()
        if self.views and not self.failed:
            self._loop.add_writer(self._fd, self._write)
            self._writing = True
        self._reading = True
        self._loop.add_reader(self._fd, self._read)
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + timeout, self._check_time)

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
            self.views, self.failed = [], True
        self._stop_writing()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(type(e)(e.errno, e.strerror))  # a fresh one: no traceback holding this frame
            return
        self._last = self._loop.time()
        try:
            whole = self.parser.feed(data)
        except AnswerError as e:
            self._fail(AnswerError(str(e)))
            return
        if whole:
            if not self.done.done():
                self.done.set_result(self.parser.answer)
            self.stop()
        elif not data:
            started = self.parser._head is not None or bool(self.parser.buffer)
            self._fail(ConnectionResetError("gunicorn closed the connection " +
                                            ("mid-answer" if started else "before answering")))

    def _check_time(self) -> None:
        due = self._last + self.timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_time)
        else:
            self._fail(TimeoutError(f"gunicorn silent for {self.timeout:g} s"))

    def _fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        self.stop()

    def _stop_writing(self) -> None:
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def stop(self) -> None:
        """Stop writing and reading (done, failed, or given up); drop what is left unwritten."""
        self._stop_writing()
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
            self._timer.cancel()
        if self.views:  # what is left is dropped: not all was sent
            self.views, self.failed = [], True


class _Connection:
    """One connection to gunicorn, on a non-blocking socket (not a stream: a failed write must not end the reads)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
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

    async def exchange(self, head: bytes, body: bytes | bytearray, head_only: bool,
                       timeout: float) -> tuple[Answer, bool]:
        """Send one request and read its answer; return it and whether the connection can be reused.

        The body is written while the answer is read: gunicorn may answer before it has read the body (an
        unknown model, 401, 405, 415, ...) and close the socket, and that answer is what the client gets,
        not the broken pipe of the write. Once the answer is whole, whatever is left unwritten is dropped
        (and the connection with it).
        """
        exchange = _Exchange(self.sock, [head, body], AnswerParser(head_only), timeout)
        try:
            answer = await exchange.done
        finally:
            exchange.stop()
        parser = exchange.parser
        reusable = exchange.sent and parser.keep_alive and not parser.extra
        if reusable:
            self.idle_since = time.monotonic()
        return answer, reusable


class Upstream:
    """Forward complete requests to gunicorn on the unix socket ``path``, at most ``max_connections`` at a time."""

    def __init__(self, path: str, max_connections: int, timeout: float) -> None:
        self.path = path
        self.timeout = timeout  # gunicorn silent this long (not answering, or mid-answer) is a failure
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                sock.connect(self.path)  # a unix socket connects at once while gunicorn's backlog has room
            except BlockingIOError:
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

    async def forward(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes | bytearray) -> Answer:
        """Return gunicorn's answer to the request (its ``headers`` frame ``body`` by Content-Length).

        Raises:
            UpstreamError: gunicorn is not listening, or failed before its answer was complete.
        """
        if self._slots.locked():  # a request waits for a free gunicorn thread at most as long as for an answer
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise UpstreamError(f"no gunicorn thread free within {self.timeout:g} s") from None
        else:
            await self._slots.acquire()  # free: taken at once, without suspending
        head = request_head(method, target, headers)
        try:
            for attempt in (0, 1):
                connection = self._take_idle() if attempt == 0 else None
                reused = connection is not None
                try:
                    if connection is None:
                        connection = await self._connect()
                    answer, reusable = await connection.exchange(head, body, method == b"HEAD", self.timeout)
                except (TimeoutError, OSError, EOFError, AnswerError) as e:
                    if connection is not None:
                        connection.close()
                    if reused and isinstance(e, ConnectionError):
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
