"""The front against a fake gunicorn (echo workers on the front's channel), over real sockets, with short limits."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
import tracemalloc
from dataclasses import fields, replace

import h11
import pytest

from imgclf.core.errors import UsageError
from imgclf.service.front.proxy import Front, error_bytes, pending_chunk_bytes
from imgclf.service.front.settings import FrontSettings
from imgclf.service.front.upstream import Upstream
from imgclf.service.server.settings import ServerSettings
from tests.support.fake_upstream import Echo

LIMITS = FrontSettings(header_timeout=0.5, body_timeout=2.0, min_body_rate=100, keepalive_timeout=0.4,
                       max_connections=20, max_client_connections=0, max_header_bytes=2048, body_rate_grace=0.3)
SERVER = ServerSettings(max_upload_bytes=1000)  # the upload limit the front enforces is the service's own


STARTED: list[Echo] = []


@pytest.fixture(autouse=True)
def _stop_fake_workers():
    yield
    while STARTED:  # the test's event loop is gone: nobody would close a stopping worker's channel
        STARTED.pop().stop(graceful=False)


async def start(tmp_path, limits=LIMITS, echo=None, upstream_up=True, server=SERVER, workers=1, threads=4,
                timeout=5.0):
    """Start the fake gunicorn (unless not ``upstream_up``) and the front on 127.0.0.1; return (front, port, echo)."""
    echo = echo or Echo()
    path = str(tmp_path / "up.sock")
    if upstream_up:
        echo.serve(path, workers, threads)
        STARTED.append(echo)
    front = Front(limits, Upstream(path, timeout=timeout), server)
    listener = await asyncio.start_server(front.handle, "127.0.0.1", 0)
    return front, listener.sockets[0].getsockname()[1], echo


async def exchange(port, data: bytes, read_until_close=True, timeout=5.0) -> tuple[bytes, float]:
    """Send ``data``; return everything read until the server closes, and the seconds that took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(data)
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
    finally:
        writer.close()
    return out, time.monotonic() - started


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


def body_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_a_request_is_forwarded_whole_with_the_real_client_address(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path)
        answer, _ = await exchange(port, b"POST /predict?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                         b"X-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\nhello")
        return answer, echo

    answer, echo = run(go())
    assert status_of(answer) == 200
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert b"\r\nserver: imgclf\r\n" in head and b"gunicorn" not in head  # no server name or version of gunicorn
    seen = body_of(answer)
    assert seen["method"] == "POST" and seen["target"] == "/predict?x=1" and seen["body"] == "hello"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-real-ip"] == "127.0.0.1"  # the client's lie dropped
    assert headers["content-length"] == "5" and "connection" not in headers


def test_a_chunked_body_reaches_gunicorn_with_a_content_length(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path)
        return await exchange(port, b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                                    b"Connection: close\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n")

    answer, _ = run(go())
    seen = body_of(answer)
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert seen["body"] == "abcde" and headers["content-length"] == "5" and "transfer-encoding" not in headers


def test_keep_alive_serves_several_requests_then_closes_an_idle_connection(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for i in range(3):
            writer.write(f"GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int([line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0]
                         .split(b":")[1])
            answers.append(json.loads(await reader.readexactly(length))["target"])
        idle = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 5)
        return answers, rest, time.monotonic() - idle, len(echo.requests)

    answers, rest, idled, reached = run(go())
    assert answers == ["/0", "/1", "/2"] and reached == 3
    assert rest == b"" and LIMITS.keepalive_timeout <= idled < LIMITS.keepalive_timeout + 1.0  # closed, no answer


def test_a_slow_header_gets_408_within_the_header_deadline(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        out = b""
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\n":  # one byte every 0.1 s: never complete in time
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
            if reader.at_eof() or reader._buffer:  # the server answered and closed
                break
        out = await asyncio.wait_for(reader.read(), 5)
        return out, time.monotonic() - started, echo, front

    out, took, echo, front = run(go())
    assert status_of(out) == 408 and "request head not received within 0.5 s" in body_of(out)["error"]
    assert LIMITS.header_timeout <= took < LIMITS.header_timeout + 1.0 and echo.requests == []
    assert front.stats["timed_out"] == 1


def test_a_connection_that_sends_nothing_is_closed_silently_at_the_header_deadline(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path)
        return await exchange(port, b"")

    out, took = run(go())
    assert out == b"" and LIMITS.header_timeout <= took < LIMITS.header_timeout + 1.0


def test_a_body_below_the_minimum_rate_gets_408_after_the_grace(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 900\r\n\r\n")
        for _ in range(40):  # 10 bytes every 0.1 s = 100 bytes/s... minus the pauses: below the minimum
            if reader.at_eof() or reader._buffer:
                break
            writer.write(b"x" * 5)
            await asyncio.sleep(0.1)
        out = await asyncio.wait_for(reader.read(), 5)
        return out, time.monotonic() - started, echo

    out, took, echo = run(go())
    assert status_of(out) == 408 and "slower than 100 bytes/s" in body_of(out)["error"]
    assert took < LIMITS.body_rate_grace + 1.5 and echo.requests == []


def test_the_body_deadline_holds_even_at_a_good_rate(tmp_path):
    limits = replace(LIMITS, body_timeout=0.6, min_body_rate=0)

    async def go():
        front, port, echo = await start(tmp_path, limits)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 900\r\n\r\nabc")
        out = await asyncio.wait_for(reader.read(), 5)
        return out, time.monotonic() - started

    out, took = run(go())
    assert status_of(out) == 408 and 0.6 <= took < 1.6


@pytest.mark.parametrize("request_bytes, status, message", [
    # a chunk-size line too long to be a number h11 reads: malformed
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"F" * 40 + b"\r\nabc", 400,
     "illegal chunk header"),
    # a chunk that declares more than the body limit: refused before its bytes come
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFF\r\nabc", 413, "over the limit"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3E8\r\n" + b"x" * 1000 + b"\r\n1\r\n", 413,
     "over the limit"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413, "1001 bytes is over the limit of 1000"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "malformed"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, "malformed"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 3000 + b"\r\n\r\n", 431, "request head over 2048 bytes"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 3000, 431, "request head over 2048 bytes"),  # unfinished
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431,
     "more than 100 header fields"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "malformed"),  # HTTP/1.1 without Host
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400, "malformed"),  # TLS to a plain port
])
def test_bad_requests_are_refused_quickly_and_never_reach_gunicorn(tmp_path, request_bytes, status, message):
    async def go():
        front, port, echo = await start(tmp_path)
        out, took = await exchange(port, request_bytes)
        return out, took, echo

    out, took, echo = run(go())
    assert status_of(out) == status and message in body_of(out)["error"], out
    assert took < 0.4 and echo.requests == []  # well before any deadline


def test_pending_chunk_bytes_reads_what_h11_declares():
    # h11 keeps the declared chunk size privately; if it moves, this fails (and the 413 above with it)
    http = h11.Connection(h11.SERVER)
    http.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1F4\r\nab")
    assert isinstance(http.next_event(), h11.Request)
    assert bytes(http.next_event().data) == b"ab"
    assert pending_chunk_bytes(http) == 0x1F4 - 2


def test_expect_100_continue_is_answered_then_the_body_is_read(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
                     b"Connection: close\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"abc")
        return interim, await asyncio.wait_for(reader.read(), 5)

    interim, out = run(go())
    assert interim.startswith(b"HTTP/1.1 100 ") and status_of(out) == 200 and body_of(out)["body"] == "abc"
    assert "expect" not in {k.lower() for k, _ in body_of(out)["headers"]}


def test_connections_over_the_limits_are_refused(tmp_path):
    async def go(limits):
        front, port, echo = await start(tmp_path, limits)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in held:  # each has a request in hand (its head half sent): none can be evicted
            writer.write(b"GET / HTTP/1.1\r\n")
        deadline = time.monotonic() + 10  # until the front has read each half head (a loaded machine is slow)
        while (front.slots.open < 3 or front.slots.idle_connections()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert front.slots.open == 3 and not front.slots.idle_connections()
        out, _ = await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        for _, writer in held:
            writer.close()
        return out

    out = run(go(replace(LIMITS, max_connections=3)))
    assert status_of(out) == 503 and b"Retry-After: 1" in out
    (tmp_path / "up.sock").unlink()
    out = run(go(replace(LIMITS, max_client_connections=3)))
    assert status_of(out) == 429 and "from this address" in body_of(out)["error"]


def test_gunicorn_down_is_a_503_not_a_hang(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path, upstream_up=False)
        return await exchange(port, b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")

    out, took = run(go())
    assert status_of(out) == 503 and b"Retry-After: 1" in out and took < 1


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path.encode()


def test_requests_go_to_the_worker_with_the_most_free_threads_never_beyond_its_threads(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path, echo=Echo(delay_s=0.05), workers=2, threads=3)
        answers = await asyncio.gather(*(exchange(port, get(f"/{i}")) for i in range(18)))  # 20 connections at most
        return [a for a, _ in answers], echo, front

    answers, echo, front = run(go())
    assert [status_of(a) for a in answers] == [200] * 18
    per_worker = {w: sum(r["worker"] == w for r in echo.requests) for w in ("w0", "w1")}
    assert echo.most_in_hand == {"w0": 3, "w1": 3}, echo.most_in_hand  # both busy, never more than 3 threads
    assert min(per_worker.values()) >= 6, per_worker
    assert sorted(body_of(a)["target"] for a in answers) == sorted(f"/{i}" for i in range(18))


def test_a_worker_that_dies_fails_its_requests_with_503_and_the_others_go_on(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path, echo=Echo(delay_s=0.3), workers=2, threads=1)
        first = [asyncio.ensure_future(exchange(port, get(f"/{i}"))) for i in range(2)]
        await asyncio.sleep(0.1)  # one request in each worker's only thread
        echo.workers[0].die()
        lost = [a for a, _ in await asyncio.gather(*first)]
        later = [a for a, _ in await asyncio.gather(*(exchange(port, get(f"/later{i}")) for i in range(3)))]
        return lost, later, echo

    lost, later, echo = run(go())
    assert sorted(status_of(a) for a in lost) == [200, 503]
    assert [status_of(a) for a in later] == [200] * 3
    assert {r["worker"] for r in echo.requests if r["target"].startswith("/later")} == {"w1"}


def test_a_new_worker_takes_the_waiting_connection_and_a_stopping_one_finishes_its_requests(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path, echo=Echo(delay_s=0.3), workers=1, threads=2)
        in_flight = [asyncio.ensure_future(exchange(port, get(f"/old{i}"))) for i in range(2)]
        await asyncio.sleep(0.1)
        echo.workers[0].stop()  # as SIGTERM in a reload: bye, and it answers what it has
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(exchange(port, get(f"/new{i}"))) for i in range(2)]
        await asyncio.sleep(0.4)  # they wait in the front: no worker takes requests now
        nothing_yet = [t.done() for t in waiting]
        echo.add_worker(echo.listener, threads=2)  # the replacement, on the same listening socket
        done = [a for a, _ in await asyncio.gather(*in_flight, *waiting)]
        return done, nothing_yet, echo

    done, nothing_yet, echo = run(go())
    assert [status_of(a) for a in done] == [200] * 4 and nothing_yet == [False, False]
    workers = {r["target"]: r["worker"] for r in echo.requests}
    assert workers == {"/old0": "w0", "/old1": "w0", "/new0": "w1", "/new1": "w1"}, workers


def test_an_answer_slower_than_the_timeout_is_a_503_and_its_thread_stays_busy(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path, echo=Echo(delay_s=1.0), threads=1, timeout=0.3)
        slow, took = await exchange(port, get("/slow"))
        channel = front.upstream.channels[0]
        busy_after = channel.busy
        queued, queued_took = await exchange(port, get("/queued"))  # waits for the thread, gives up after 0.3 s
        await asyncio.sleep(1.0)
        return slow, took, busy_after, queued, queued_took, channel.busy, echo

    slow, took, busy_after, queued, queued_took, busy_later, echo = run(go())
    assert status_of(slow) == 503 and 0.3 <= took < 0.9 and busy_after == 1
    assert status_of(queued) == 503 and queued_took < 0.9 and busy_later == 0
    assert [r["target"] for r in echo.requests] == ["/slow"]  # the one that gave up waiting never reached it


def test_error_answers_are_whole_http_answers():
    answer = error_bytes(408, "too slow")
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    http.receive_data(answer)
    response = http.next_event()
    assert response.status_code == 408 and (b"connection", b"close") in response.headers
    assert json.loads(http.next_event().data) == {"error": "too slow"}


def test_settings_from_the_environment():
    limits = FrontSettings.from_env({"IMGCLF_HEADER_TIMEOUT": "2.5", "IMGCLF_MIN_BODY_RATE": "0",
                                     "IMGCLF_MAX_CONNECTIONS": "50", "IMGCLF_FRONT": "off"})
    assert (limits.header_timeout, limits.min_body_rate, limits.max_connections, limits.enabled) == (2.5, 0, 50, False)
    assert FrontSettings.from_env({}) == FrontSettings()
    assert {f.name for f in fields(FrontSettings)} >= {"header_timeout", "body_timeout", "keepalive_timeout"}


@pytest.mark.parametrize("env, message", [
    ({"IMGCLF_HEADER_TIMEOUT": "0"}, "IMGCLF_HEADER_TIMEOUT must be between 0.1 and 3600; received 0.0"),
    ({"IMGCLF_MAX_CONNECTIONS": "many"}, "IMGCLF_MAX_CONNECTIONS='many' is not a valid int"),
    ({"IMGCLF_FRONT": "2"}, "IMGCLF_FRONT='2' is not a yes or a no"),
    ({"IMGCLF_MAX_HEADER_BYTES": "10"}, "IMGCLF_MAX_HEADER_BYTES must be between 1024 and 1048576"),
])
def test_bad_settings_are_named(env, message):
    with pytest.raises(UsageError, match=message):
        FrontSettings.from_env(env)


def test_the_body_limit_is_the_services_own(tmp_path):
    upstream = Upstream(str(tmp_path / "up.sock"), timeout=5)
    assert Front(LIMITS, upstream).max_body_bytes == ServerSettings().max_upload_bytes == 20 * 1024 * 1024
    assert Front(LIMITS, upstream, ServerSettings.from_env({"IMGCLF_MAX_UPLOAD_BYTES": "77"})).max_body_bytes == 77



def test_the_access_log_names_the_real_client(tmp_path, caplog):
    async def go():
        echo = Echo()
        path = str(tmp_path / "up.sock")
        echo.serve(path)
        STARTED.append(echo)
        front = Front(LIMITS, Upstream(path, timeout=5), replace(SERVER, access_log=True))
        server = await asyncio.start_server(front.handle, "127.0.0.1", 0)
        return await exchange(server.sockets[0].getsockname()[1],
                              b"GET /v1/models/x?y=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: probe/1\r\n"
                              b"Connection: close\r\n\r\n")

    with caplog.at_level("INFO", logger="imgclf.front.access"):
        answer, _ = run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "imgclf.front.access"]
    assert len(lines) == 1 and lines[0].startswith("127.0.0.1 - - [")
    assert '"GET /v1/models/x?y=1 HTTP/1.1" 200 ' in lines[0] and '"probe/1"' in lines[0]


def test_bodies_held_at_once_are_bounded_and_released(tmp_path):
    limits = replace(LIMITS, max_buffered_bytes=1000, min_body_rate=0)

    async def go():
        front, port, echo = await start(tmp_path, limits)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 800\r\nConnection: close\r\n\r\nxx")
        await asyncio.sleep(0.1)  # its 800 bytes are reserved now, though 2 came
        refused, _ = await exchange(port, b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 300\r\n\r\n" + b"y" * 300)
        chunked, _ = await exchange(port, b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                          b"12C\r\n" + b"z" * 300 + b"\r\n0\r\n\r\n")
        writer.write(b"x" * 798)
        first = await asyncio.wait_for(reader.read(), 5)
        after, _ = await exchange(port, b"POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 300\r\n"
                                        b"Connection: close\r\n\r\n" + b"y" * 300)
        return refused, chunked, first, after, front.buffered

    refused, chunked, first, after, buffered = run(go())
    assert status_of(refused) == 503 and b"Retry-After: 1" in refused and "uploads at once" in body_of(refused)["error"]
    assert status_of(chunked) == 503  # a chunked body reserves what its chunk-size lines declare
    assert status_of(first) == 200 and len(body_of(first)["body"]) == 800
    assert status_of(after) == 200 and buffered == 0  # released once answered


def test_an_idle_keep_alive_connection_makes_room_for_a_new_one(tmp_path):
    async def go():
        front, port, echo = await start(tmp_path, replace(LIMITS, max_connections=2, keepalive_timeout=30))
        idle = []
        for i in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            idle.append((reader, writer))
        await asyncio.sleep(0.05)
        out, _ = await exchange(port, b"GET /new HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        closed = []
        for reader, _ in idle:  # read the rest of the answer: EOF after it = closed by the server
            try:
                await asyncio.wait_for(reader.read(), 0.5)
                closed.append(True)
            except TimeoutError:
                closed.append(False)
        return out, closed

    out, closed = run(go())
    assert status_of(out) == 200 and body_of(out)["target"] == "/new"
    assert sorted(closed) == [False, True]  # one idle connection was closed for it, the other lives


@pytest.mark.parametrize("status", [404, 401, 415])
def test_an_error_answer_to_a_large_body_reaches_the_client_and_the_connection_lives_on(tmp_path, status):
    size = 5_000_000  # far over the socket's buffers

    async def go():
        front, port, _ = await start(tmp_path, replace(LIMITS, min_body_rate=0, body_timeout=10),
                                     Echo(f"{status} Nope", echo_body=False),
                                     server=replace(SERVER, max_upload_bytes=size))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/models/nobody:predict HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.write(b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")  # the connection lives on
        again = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return head, body, again, front

    head, body, again, front = run(go())
    assert status_of(head) == status and json.loads(body)["body"] == size
    assert b"retry-after" not in head.lower() and status_of(again) == status and front.buffered == 0


def loopback_alias_or_skip(address: str = "127.0.0.2") -> str:
    """Return another loopback address to connect from (another client, still this machine), or skip."""
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError as e:
        pytest.skip(f"cannot connect from {address} here ({e}): the test needs a second client address")
    return address


def test_a_client_holding_every_slot_with_silent_connections_locks_nobody_out(tmp_path):
    hog_address = loopback_alias_or_skip()
    limits = replace(LIMITS, max_connections=20, header_timeout=5)  # 20 slots, all of them for one address

    async def go():
        front, port, echo = await start(tmp_path, limits)
        stop = asyncio.Event()

        async def hog():  # 30 connections that send nothing, each reopened as soon as the front closes it
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(hog_address, 0))
                    refused = await asyncio.wait_for(reader.read(), 2)  # a 503, or b"" once closed to make room
                    writer.close()
                    await asyncio.sleep(0.05 if refused else 0)
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.01)

        hogs = [asyncio.ensure_future(hog()) for _ in range(30)]
        await asyncio.sleep(0.3)
        held = front.slots.per_client.get(hog_address, 0)
        answers = [(await exchange(port, b"GET /%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % i))[0]
                   for i in range(20)]
        stop.set()
        for task in hogs:
            task.cancel()
        await asyncio.wait(hogs, timeout=3)
        return held, answers, front

    held, answers, front = run(go())
    assert held == 20  # the hog had every slot
    assert [status_of(a) for a in answers] == [200] * 20 and front.slots.evicted >= 1


def test_one_address_holds_a_quarter_of_the_slots_by_default(tmp_path):
    limits = replace(LIMITS, max_connections=200, max_client_connections=0)

    async def go():
        front, port, echo = await start(tmp_path, limits)
        held = []
        for _ in range(60):  # every one has a request in hand: none makes room for a later one
            held.append(await asyncio.open_connection("127.0.0.1", port))
            held[-1][1].write(b"GET / HTTP/1.1\r\n")
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
        answers = await asyncio.gather(*(asyncio.wait_for(reader.read(), 3) for reader, _ in held[50:]))
        for _, writer in held:
            writer.close()
        return answers, front.slots.open

    answers, still_open = run(go())
    assert {status_of(a) for a in answers} == {429} and still_open == 50  # 200 // 4; the other 150 for the rest


@pytest.mark.parametrize("total, per_client, limit", [
    (1000, 0, 250), (200, 0, 50), (100, 0, 32), (10, 0, 10), (1000, 7, 7), (1000, 1000, 1000)])
def test_the_per_address_limit(total, per_client, limit):
    assert FrontSettings(max_connections=total, max_client_connections=per_client).client_limit == limit
    assert FrontSettings().client_limit == 250


@pytest.mark.parametrize("status", [404, 200])
def test_no_body_outlives_its_answer(tmp_path, status):
    # With the garbage collector off, a body held by a reference cycle (an exception's traceback, say)
    # would stay: every one must be freed by the time its answer is sent, early answers included.
    size = 1_000_000

    async def go():
        front, port, _ = await start(tmp_path, replace(LIMITS, min_body_rate=0, body_timeout=10),
                                     Echo(f"{status} X", echo_body=False),
                                     server=replace(SERVER, max_upload_bytes=size))

        async def one() -> int:
            answer, _ = await exchange(port, b"POST /v1/models/m:predict HTTP/1.1\r\nHost: a\r\n"
                                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (size, b"x" * size))
            return status_of(answer)

        await one()  # the first one sets up what stays (the pooled connection, caches)
        tracemalloc.start()
        statuses = [await one() for _ in range(8)]
        await asyncio.sleep(0.05)
        grown = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return statuses, grown

    gc.collect()
    gc.disable()
    try:
        statuses, grown = run(go())
    finally:
        gc.enable()
    assert set(statuses) == {status}
    assert grown < size // 2, grown  # eight bodies of 1 MB came and went
