"""The front's channels to gunicorn's workers, against workers written here frame by frame (well and badly behaved)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from imgclf.service.front.upstream import Answer, Upstream, UpstreamError
from imgclf.service.server.frames import CONTROL, FrameReader, frame, hello


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


class FrameWorker:
    """A worker that answers each request frame with ``answer(id, head, body)``; it takes one connection only."""

    def __init__(self, answer, threads: int = 2) -> None:
        self.answer, self.threads = answer, threads
        self.requests: list[tuple[int, bytes, bytes]] = []
        self.server: asyncio.Server | None = None

    async def listen(self, path: str) -> None:
        self.server = await asyncio.start_unix_server(self.handle, path)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.server.is_serving():
            self.server.close()  # as a worker: one connection (the front's next one waits for nobody here)
        else:
            writer.close()
            return
        writer.write(hello(4242, self.threads))
        frames = FrameReader()
        while data := await reader.read(65536):
            for request in frames.feed(data):
                self.requests.append(request)
                reply = self.answer(*request)
                if reply is not None:
                    writer.write(reply)
        writer.close()


def test_nobody_listening_fails_at_once(tmp_path):
    async def go():
        upstream = Upstream(str(tmp_path / "none.sock"), timeout=5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamError, match="gunicorn is not listening") as e:
            await upstream.forward(b"GET", b"/", [(b"host", b"a")], b"")
        upstream.close()
        return loop.time() - started, e.value.__cause__

    took, cause = run(go())
    assert took < 0.5 and isinstance(cause, FileNotFoundError)


def test_answers_come_back_to_their_requests_whatever_their_order(tmp_path):
    held: list[tuple[int, bytes]] = []

    def answer(request_id, head, body):  # answers the second request first
        held.append((request_id, head.split(b"\r\n")[0]))
        if len(held) < 2:
            return None
        return b"".join(frame(i, b"HTTP/1.1 200 OK\r\n", line) for i, line in reversed(held))

    async def go():
        path = str(tmp_path / "w.sock")
        worker = FrameWorker(answer)
        await worker.listen(path)
        upstream = Upstream(path, timeout=5)
        answers = await asyncio.gather(upstream.forward(b"GET", b"/1", [], b""),
                                       upstream.forward(b"POST", b"/2", [(b"content-length", b"3")], b"abc"))
        upstream.close()
        return answers, worker.requests

    answers, requests = run(go())
    assert [a.body for a in answers] == [b"GET /1", b"POST /2"] and {a.status for a in answers} == {200}
    assert requests[1][2] == b"abc"


@pytest.mark.parametrize("reply", [
    lambda i: frame(i + 1000, b"HTTP/1.1 200 OK\r\n"),  # an answer to a request it never got
    lambda i: frame(CONTROL, b"hello 1 2"),  # a second hello
    lambda i: b"\xff" * 12,  # a frame over the bounds
])
def test_a_worker_breaking_the_channel_fails_its_requests_and_loses_its_channel(tmp_path, reply):
    async def go():
        path = str(tmp_path / "w.sock")
        worker = FrameWorker(lambda i, head, body: reply(i))
        await worker.listen(path)
        upstream = Upstream(path, timeout=5)
        with pytest.raises(UpstreamError, match="closed its channel"):
            await upstream.forward(b"GET", b"/", [], b"")
        await asyncio.sleep(0.05)
        channels = len(upstream.channels)
        upstream.close()
        return channels

    assert run(go()) == 0


def test_the_front_keeps_one_connection_waiting_for_the_next_worker(tmp_path):
    async def go():
        path = str(tmp_path / "w.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(8)
        listener.setblocking(False)
        upstream = Upstream(path, timeout=5)
        upstream.start()
        await asyncio.sleep(0.2)
        waiting = []
        while True:  # what the front opened: a worker takes them one at a time
            try:
                waiting.append(listener.accept()[0])
            except BlockingIOError:
                break
        waiting[0].sendall(hello(1, 2))  # a worker takes the first: the front opens the next one
        await asyncio.sleep(0.2)
        after = []
        while True:
            try:
                after.append(listener.accept()[0])
            except BlockingIOError:
                break
        channels = [(c.pid, c.capacity) for c in upstream.channels]
        upstream.close()
        for s in waiting + after:
            s.close()
        listener.close()
        return len(waiting), len(after), channels

    assert run(go()) == (1, 1, [(1, 2)])


def test_the_fronts_own_answer_to_head_has_no_body():
    assert Answer.of(503, b"Service Unavailable", [], b"{}", head_only=True) == \
        Answer(503, b"HTTP/1.1 503 Service Unavailable\r\nServer: imgclf\r\n", b"")
    assert Answer.of(503, b"Service Unavailable", [(b"Retry-After", b"1")], b"{}").head.endswith(
        b"Retry-After: 1\r\nServer: imgclf\r\nContent-Length: 2\r\n")


def test_large_bodies_sent_at_once_arrive_whole_and_in_their_own_frames(tmp_path):
    import hashlib

    def answer(request_id, head, body):
        return frame(request_id, b"HTTP/1.1 200 OK\r\n", hashlib.sha256(body).hexdigest().encode())

    bodies = [bytes([i]) * (1_000_000 + i) for i in range(4)] + [b"small"]

    async def go():
        path = str(tmp_path / "w.sock")
        worker = FrameWorker(answer, threads=8)
        await worker.listen(path)
        upstream = Upstream(path, timeout=10)
        answers = await asyncio.gather(*(upstream.forward(b"POST", b"/%d" % i, [], body)
                                         for i, body in enumerate(bodies)))
        upstream.close()
        return [a.body.decode() for a in answers]

    assert run(go()) == [hashlib.sha256(body).hexdigest() for body in bodies]
