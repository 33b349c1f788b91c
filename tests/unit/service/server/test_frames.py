"""The channel's frames: cut right whatever the reads' sizes, bounded, and the hello read back."""

from __future__ import annotations

import random
import struct

import pytest

from imgclf.service.server.frames import (
    HEADER,
    FrameError,
    FrameReader,
    frame,
    hello,
    parse_hello,
    request_frame,
)

FRAMES = [(1, b"GET /a\r\nhost: x\r\n", b""), (2, b"POST /p\r\ncontent-length: 5\r\n", b"hello"),
          (0, b"bye", b""), (7, b"", b"\x00" * 70_000), (4294967295, b"h", b"b")]


def wire() -> bytes:
    return b"".join(frame(i, head, body) for i, head, body in FRAMES)


def test_every_split_of_the_bytes_gives_the_same_frames():
    data = wire()
    for cut in [*range(0, 40), *range(len(data) - 40, len(data) + 1), 70_000]:
        reader = FrameReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert got == FRAMES, cut
        assert reader.buffer == b""


def test_random_reads_give_the_same_frames():
    data = wire()
    rng = random.Random(3)
    for _ in range(50):
        reader, got, position = FrameReader(), [], 0
        while position < len(data):
            size = rng.choice([1, 2, 7, 100, 5000, 100_000])
            got += reader.feed(data[position:position + size])
            position += size
        assert got == FRAMES


def test_a_request_frame_is_its_head_then_the_body_declared():
    head = request_frame(9, b"POST", b"/x?y=1", [(b"host", b"a"), (b"content-length", b"3")], 3)
    assert HEADER.unpack_from(head) == (9, len(head) - HEADER.size, 3)
    assert head[HEADER.size:] == b"POST /x?y=1\r\nhost: a\r\ncontent-length: 3\r\n"
    assert FrameReader().feed(head + b"abc") == [(9, head[HEADER.size:], b"abc")]


def test_a_frame_over_the_bounds_is_an_error_before_its_bytes_arrive():
    reader = FrameReader(max_head_bytes=100, max_body_bytes=1000)
    with pytest.raises(FrameError, match="over the bounds"):
        reader.feed(struct.pack("!III", 1, 101, 0))
    with pytest.raises(FrameError, match="over the bounds"):
        FrameReader(max_head_bytes=100, max_body_bytes=1000).feed(struct.pack("!III", 1, 10, 1001))


def test_hello_is_read_back_and_anything_else_is_refused():
    assert parse_hello(FrameReader().feed(hello(1234, 8))[0][1]) == (1234, 8)
    for head in (b"bye", b"hello 12", b"hello 12 0", b"hello x 8", b"hola 1 2"):
        with pytest.raises(FrameError, match="expected a hello"):
            parse_hello(head)
