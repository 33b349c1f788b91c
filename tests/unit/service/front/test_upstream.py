"""The front's side towards gunicorn: its answer parser (checked against h11 reading the same bytes, fed in every
split) and its pool (bounded concurrency, connection reuse, stale connections retried once)."""

from __future__ import annotations

import asyncio
import json

import h11
import pytest

from imgclf.service.front.proxy import answer_bytes
from imgclf.service.front.upstream import (
    MAX_ANSWER_HEAD_BYTES,
    Answer,
    AnswerError,
    AnswerParser,
    Upstream,
    UpstreamError,
    request_head,
)
from tests.support.fake_upstream import Echo


def _request(target: str) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    return b"POST", target.encode(), [(b"host", b"a"), (b"content-length", b"2")]


class Counting(Echo):
    """An echo that takes 0.1 s per answer and records how many connections it had open at once."""

    def __init__(self) -> None:
        super().__init__()
        self.open = self.most = self.accepted = 0

    async def handle(self, reader, writer):
        self.open += 1
        self.accepted += 1
        self.most = max(self.most, self.open)
        try:
            await asyncio.sleep(0.1)
            await super().handle(reader, writer)
        finally:
            self.open -= 1


def test_at_most_max_connections_exchanges_at_once_and_connections_are_reused(tmp_path):
    async def go():
        echo = Counting()
        path = str(tmp_path / "up.sock")
        await asyncio.start_unix_server(echo.handle, path)
        upstream = Upstream(path, 2, timeout=5)
        answers = await asyncio.gather(*(upstream.forward(*_request(f"/{i}"), b"hi") for i in range(6)))
        again = await upstream.forward(*_request("/again"), b"hi")
        upstream.close()
        return echo, answers, again

    echo, answers, again = asyncio.run(asyncio.wait_for(go(), 20))
    assert [a.status for a in answers] == [200] * 6 and again.status == 200
    assert sorted(eval_target(a.body) for a in answers) == sorted(f"/{i}" for i in range(6))
    assert echo.most == 2 and echo.accepted == 2  # two connections, each reused for the later requests


def eval_target(body: bytes) -> str:
    return json.loads(body)["target"]


def test_no_gunicorn_is_an_upstream_error(tmp_path):
    upstream = Upstream(str(tmp_path / "nobody.sock"), 2, timeout=1)
    with pytest.raises(UpstreamError, match="FileNotFoundError"):
        asyncio.run(upstream.forward(*_request("/"), b"hi"))


def test_a_silent_gunicorn_times_out(tmp_path):
    async def go():
        async def silent(reader, writer):
            await asyncio.sleep(5)

        path = str(tmp_path / "up.sock")
        await asyncio.start_unix_server(silent, path)
        await Upstream(path, 2, timeout=0.3).forward(*_request("/"), b"hi")

    with pytest.raises(UpstreamError, match="TimeoutError"):
        asyncio.run(asyncio.wait_for(go(), 10))


def test_waiting_for_a_free_thread_is_bounded(tmp_path):
    async def go():
        upstream = Upstream(str(tmp_path / "up.sock"), 1, timeout=0.3)
        await upstream._slots.acquire()  # the only gunicorn thread is taken (by a request that hangs)
        await upstream.forward(*_request("/"), b"hi")

    with pytest.raises(UpstreamError, match="no gunicorn thread free within 0.3 s"):
        asyncio.run(asyncio.wait_for(go(), 10))

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nDate: x\r\n\r\n{\"a\": [1, 2]}",
    b"HTTP/1.1 404 NOT FOUND\r\nConnection: close\r\ncontent-length:2\r\nX-Empty:\r\nX-Pad:  a b  \r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;name=\"v\"\r\n,\r\nA  \r\n0123456789\r\n"
    b"0\r\nX-Trailer: t\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 \r\nX-A: b\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
]


def h11_reads(data: bytes, method: bytes = b"GET") -> tuple[Answer, bool]:
    """Return the answer h11 reads from ``data`` and whether h11 would keep the connection."""
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    http.send(h11.EndOfMessage())
    http.receive_data(data)
    head, body = None, b""
    while True:
        event = http.next_event()
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
    return Answer(head.status_code, head.reason, list(head.headers.raw_items()), body), \
        http.our_state is h11.DONE and http.their_state is h11.DONE


def fields(answer: Answer) -> list[tuple[bytes, bytes]]:
    """Return the fields less Content-Length (h11 keeps one of equal duplicates)."""
    return [(name.lower(), value) for name, value in answer.headers if name.lower() != b"content-length"]


def ours(pieces: list[bytes], method: bytes = b"GET") -> AnswerParser:
    parser = AnswerParser(head_only=method == b"HEAD")
    whole = [parser.feed(piece) for piece in pieces]
    assert whole[-1] and not any(whole[:-1])  # whole with the last piece, not before
    return parser


@pytest.mark.parametrize("data", ANSWERS)
def test_answers_read_as_h11_reads_them_in_any_split(data):
    expected, keep_alive = h11_reads(data)
    for pieces in ([data], [bytes([b]) for b in data], [data[:i] for i in (len(data) // 3,)] +
                   [data[len(data) // 3:]]):
        parser = ours(pieces)
        answer = parser.answer
        assert (answer.status, answer.reason, answer.body) == (expected.status, expected.reason, expected.body)
        assert fields(answer) == fields(expected)
        assert parser.keep_alive == keep_alive and not parser.extra


def test_the_answer_to_head_has_no_body_whatever_it_declares():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"
    expected, _ = h11_reads(data, b"HEAD")
    parser = ours([data], b"HEAD")
    assert parser.answer.body == expected.body == b"" and parser.keep_alive


def test_bytes_after_the_answer_make_the_connection_unusable():
    parser = AnswerParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabHTTP/1.1 200")
    assert parser.answer.body == b"ab" and parser.extra


@pytest.mark.parametrize("data, message", [
    (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n", "bad header field"),
    (b"HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 0\r\n\r\n", "bad header field"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\nContent-Length: 0\r\n\r\n", "bad header field"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\x00\r\nContent-Length: 0\r\n\r\n", "bad header field"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", "both Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close", "without Content-Length"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "101"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk-size line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "chunk not followed by CRLF"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000, "chunk-size line too long"),
    (b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * MAX_ANSWER_HEAD_BYTES, "answer head over"),
])
def test_answers_outside_what_we_accept_are_refused(data, message):
    with pytest.raises(AnswerError, match=message):
        AnswerParser().feed(data)


def test_the_request_head_is_what_h11_would_write():
    headers = [(b"host", b"imgclf"), (b"content-length", b"5"), (b"x-forwarded-for", b"10.0.0.1")]
    http = h11.Connection(h11.CLIENT)
    expected = http.send(h11.Request(method=b"POST", target=b"/predict?top_k=1", headers=headers))
    assert request_head(b"POST", b"/predict?top_k=1", headers) == expected


@pytest.mark.parametrize("method, status, closing", [(b"GET", 200, False), (b"HEAD", 200, False),
                                                     (b"GET", 204, True), (b"POST", 404, True)])
def test_the_clients_answer_reads_back_through_h11(method, status, closing):
    answer = Answer(status, b"Whatever", [(b"Content-Type", b"application/json"), (b"Server", b"gunicorn"),
                                          (b"Connection", b"keep-alive"), (b"Content-Length", b"999"),
                                          (b"X-Request-Id", b"7")], b"" if status == 204 else b'{"a": 1}')
    expected, keep_alive = h11_reads(answer_bytes(method, answer, closing), method)
    sent = dict(expected.headers)
    assert expected.status == status and expected.reason == b"Whatever" and keep_alive != closing
    assert expected.body == (b"" if method == b"HEAD" else answer.body)
    assert sent[b"Server"] == b"imgclf" and sent[b"X-Request-Id"] == b"7" and sent.get(b"Connection") == \
        (b"close" if closing else None)
    assert sent.get(b"Content-Length") == (None if method == b"HEAD" or status == 204 else b"8")
