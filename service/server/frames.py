"""The channel between the front and gunicorn's workers: framed requests and answers, one connection per worker.

The front reads and checks each client request whole (:mod:`imgclf.service.front.proxy`); what it hands a
worker needs no second HTTP parse. Each worker behind the front (:mod:`imgclf.service.server.channel`)
accepts one connection from the front on the private unix socket and keeps it; requests and answers
travel on it as frames, as many at once as the worker has threads:

    frame  = id (u32) | head length (u32) | body length (u32) | head | body     (network byte order)

* a request's head is ``METHOD SP target`` then one ``name: value`` line per field, each line ending in
  CRLF (the fields h11 parsed, names in lower case, the front's ``X-Forwarded-*`` among them); its body is
  the request's whole body;
* an answer (same id) carries the HTTP/1.1 status line and fields as the front sends them, each line
  ending in CRLF, without the empty line that ends a head: the front adds ``Connection: close`` when
  it closes the client's connection, then the empty line and the body;
* id 0 is the worker's word to the front: ``hello PID THREADS`` when it takes a connection (the front
  sends it at most THREADS requests at a time), ``bye`` when it stops (the front sends it nothing more
  and closes the connection once its answers are in).

Standard library only: the front and gunicorn's workers both import it.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!III")
CONTROL = 0  # the id of the worker's hello and bye
BYE = b"bye"
MAX_HEAD_BYTES = 1 << 20  # the front's heads are at most 64 KiB (IMGCLF_MAX_HEADER_BYTES); answers' a few hundred
MAX_BODY_BYTES = 1 << 31
SERVER = b"imgclf"  # every answer's Server field, the front's own and the workers'
BEHIND_FRONT_ENV = "IMGCLF_FRONT_CHANNEL"  # set by the front for gunicorn: its workers serve this channel
# Hop-by-hop fields (RFC 9110 7.6.1) and the framing: the front never forwards them in a request, and a worker
# never puts the app's in an answer (each side frames the message itself). In lower case.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "expect", "content-length"})


class FrameError(ValueError):
    """The bytes on the channel are not frames: the connection is broken."""


def request_frame(request_id: int, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                  body_length: int) -> bytes:
    """Return a request frame's header and head; the body (``body_length`` bytes) follows it on the channel."""
    head = b"".join([method, b" ", target, b"\r\n", *[b"%s: %s\r\n" % field for field in headers]])
    return HEADER.pack(request_id, len(head), body_length) + head


def frame(frame_id: int, head: bytes, body: bytes = b"") -> bytes:
    """Return a whole frame."""
    return HEADER.pack(frame_id, len(head), len(body)) + head + body


def hello(pid: int, threads: int) -> bytes:
    """Return the frame a worker sends first on a connection it took."""
    return frame(CONTROL, b"hello %d %d" % (pid, threads))


def parse_hello(head: bytes) -> tuple[int, int]:
    """Return the pid and threads of a hello frame's head.

    Raises:
        FrameError: it is not a hello.
    """
    word, *numbers = head.split(b" ")
    if word != b"hello" or len(numbers) != 2 or not all(n.isdigit() for n in numbers) or int(numbers[1]) < 1:
        raise FrameError(f"expected a hello, received {head[:40]!r}")
    return int(numbers[0]), int(numbers[1])


class FrameReader:
    """Cut the bytes read from a channel into frames ``(id, head, body)``.

    Raises :class:`FrameError` from :meth:`feed` when a frame declares more than the bounds allow.
    """

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.max_head_bytes, self.max_body_bytes = max_head_bytes, max_body_bytes
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        """Add ``data``; return the frames it completed, in order."""
        if self.buffer:
            self.buffer += data
            data = self.buffer
        frames, position, size = [], 0, len(data)
        while size - position >= HEADER.size:
            frame_id, head_length, body_length = HEADER.unpack_from(data, position)
            if head_length > self.max_head_bytes or body_length > self.max_body_bytes:
                raise FrameError(f"frame of {head_length} + {body_length} bytes is over the bounds")
            start = position + HEADER.size
            end = start + head_length + body_length
            if end > size:
                break
            frames.append((frame_id, bytes(data[start:start + head_length]), bytes(data[start + head_length:end])))
            position = end
        if data is self.buffer:
            if position == size:
                self.buffer = bytearray()  # a large frame's room goes with it
            else:
                del self.buffer[:position]
        elif position < size:
            self.buffer += data[position:]
        return frames
