"""The front's pool towards gunicorn: bounded concurrency, connection reuse, stale connections retried once."""

from __future__ import annotations

import asyncio
import json

import pytest

from imgclf.service.front.upstream import Upstream, UpstreamError
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
