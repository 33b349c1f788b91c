"""Slow and stalled clients against the real `imgclf serve` (the front and gunicorn, real processes).

200 connections send a request head one byte every 2 s, 50 send a body at 10 bytes/s and 300 send
nothing; meanwhile 50 normal POST /predict requests must each answer 200 within 1 s. Then every slow
connection must be closed by the server within its deadline (short ones here, set by the IMGCLF_*
variables), a chunked request with a huge chunk-size line gets a 400 at once, and neither the front nor
gunicorn logs a worker timeout or a crash. gunicorn's early 404 for a 5 MB body and its own 414 and 431
reach the client as JSON. Last, the front is SIGKILLed: gunicorn must stop with it.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from imgclf.service.cli import serve as serve_cli
from tests.support.processes import children_of, free_port

READY_WITHIN_S = 90
HEADER_TIMEOUT = 8.0
BODY_RATE = 100  # bytes/s at least after the grace (front.BODY_RATE_GRACE_S = 5 s); the slow bodies send 10
BODY_GRACE = 5.0
SLOW_HEADERS, SLOW_BODIES, IDLE, NORMAL = 200, 50, 300, 50
SLACK_S = 2.0  # how late after its deadline a close may be seen (a loaded 2-core machine)
BAD_LOG_WORDS = ("WORKER TIMEOUT", "Traceback", "Worker exited", "CRITICAL", "ERROR", "was sent SIGKILL")


@dataclass
class Slow:
    kind: str
    opened: float = 0.0
    closed: float | None = None  # when the server closed it (read gave EOF or a reset)
    answer: bytes = b""
    sent: int = 0
    errors: list = field(default_factory=list)


async def _slow_client(port: int, slow: Slow, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slow.opened = time.monotonic()

    async def read_until_closed():
        try:
            while chunk := await reader.read(65536):
                slow.answer += chunk
        except ConnectionError:
            pass
        slow.closed = time.monotonic()

    reading = asyncio.ensure_future(read_until_closed())
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    try:
        if slow.kind == "header":  # one byte every 2 s: the head is never complete
            for byte in head:
                if reading.done() or stop.is_set():
                    break
                writer.write(bytes([byte]))
                slow.sent += 1
                await asyncio.wait([reading], timeout=2.0)
        elif slow.kind == "body":  # 10 bytes/s of a 100 kB body
            writer.write(head + b"Content-Length: 100000\r\n\r\n")
            while not reading.done() and not stop.is_set():
                writer.write(b"x" * 10)
                slow.sent += 10
                await asyncio.wait([reading], timeout=1.0)
        await asyncio.wait([reading], timeout=None if not stop.is_set() else 0)
    except ConnectionError as e:
        slow.errors.append(repr(e))
    finally:
        writer.close()
        if not reading.done():
            reading.cancel()


def attack(port: int, slows: list[Slow], started: threading.Event, stop_after: float) -> None:
    """Open every connection of ``slows`` and play its part (in this thread's own event loop)."""
    async def main():
        stop = asyncio.Event()
        tasks = []
        for slow in slows:
            tasks.append(asyncio.ensure_future(_slow_client(port, slow, stop)))
            await asyncio.sleep(0)  # spread the connects a little
        while any(s.opened == 0 for s in slows) and not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        started.set()
        await asyncio.wait(tasks, timeout=stop_after)
        stop.set()
        await asyncio.wait(tasks, timeout=5)

    asyncio.run(main())


@pytest.fixture
def front(model_repo, tmp_path):
    """`imgclf serve`'s command (the front, gunicorn behind it) with short deadlines; yields (process, url, log)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SLOW_HEADERS + SLOW_BODIES + IDLE + NORMAL + 200
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"the open-file hard limit ({hard}) is below the {want} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    port = free_port()
    env = serve_cli.serve_env(model_repo, bind=f"127.0.0.1:{port}", workers=2, threads=4)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(TMPDIR=str(tmp_path), IMGCLF_HEADER_TIMEOUT=str(HEADER_TIMEOUT), IMGCLF_MIN_BODY_RATE=str(BODY_RATE),
               IMGCLF_BODY_TIMEOUT="30", IMGCLF_KEEPALIVE_TIMEOUT="5", IMGCLF_BATCH_MAX_WAIT_MS="2",
               IMGCLF_GRACEFUL_TIMEOUT="5",
               IMGCLF_MAX_CLIENT_CONNECTIONS="1000")  # the slow clients, all from 127.0.0.1, stand for many
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_cli.front_argv(), env=env, cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            assert process.poll() is None, f"serve exited early:\n{log.read_text()}"
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or its workers still importing (busy machine)
                pass
            assert time.monotonic() < deadline, f"not ready within {READY_WITHIN_S} s:\n{log.read_text()}"
            time.sleep(0.3)
        yield process, url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slow_and_stalled_clients_do_not_starve_normal_requests(front, model_repo):
    process, url, log = front
    port = int(url.rsplit(":", 1)[1])
    image = sorted((model_repo.parent / "images" / "sunsets").glob("*.jpg"))[0].read_bytes()
    slows = [Slow("header") for _ in range(SLOW_HEADERS)] + [Slow("body") for _ in range(SLOW_BODIES)] \
        + [Slow("idle") for _ in range(IDLE)]
    started = threading.Event()
    attacker = threading.Thread(target=attack, args=(port, slows, started, HEADER_TIMEOUT + 3 * SLACK_S), daemon=True)
    attacker.start()
    assert started.wait(30), "the slow connections could not all be opened"
    opened = time.monotonic()

    def predict(_):
        t0 = time.monotonic()
        response = requests.post(url + "/predict", files={"image": ("a.jpg", image, "image/jpeg")}, timeout=10)
        return response.status_code, time.monotonic() - t0

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(predict, range(NORMAL)))
    normal_done = time.monotonic()
    still_open = sum(1 for s in slows if s.closed is None)

    # a huge chunk-size line: refused at once, not held for as long as the client likes
    t0 = time.monotonic()
    chunked = _raw(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"F" * 64 + b"\r\nxx")
    chunked_s = time.monotonic() - t0

    attacker.join(HEADER_TIMEOUT + 4 * SLACK_S + 10)
    assert not attacker.is_alive()

    assert [code for code, _ in results] == [200] * NORMAL
    slowest = max(seconds for _, seconds in results)
    assert slowest < 1.0, sorted(round(s, 3) for _, s in results)[-5:]
    # the slow connections were all still open while the normal requests ran
    assert normal_done - opened < BODY_GRACE and still_open == len(slows), (normal_done - opened, still_open)
    assert chunked.startswith(b"HTTP/1.1 400 ") and chunked_s < 1.0, chunked

    for kind, deadline, answer in (("header", HEADER_TIMEOUT, b"HTTP/1.1 408 "),
                                   ("idle", HEADER_TIMEOUT, b""),
                                   ("body", BODY_GRACE + 1.5, b"HTTP/1.1 408 ")):
        mine = [s for s in slows if s.kind == kind]
        never = [s for s in mine if s.closed is None]
        assert not never, f"{len(never)} {kind} connections never closed by the server"
        lifetimes = sorted(s.closed - s.opened for s in mine)
        assert lifetimes[-1] < deadline + SLACK_S, (kind, lifetimes[-5:])
        assert lifetimes[0] > min(deadline, HEADER_TIMEOUT) * 0.5, (kind, lifetimes[:5])  # not dropped at once
        assert all(s.answer.startswith(answer) for s in mine), (kind, {s.answer[:40] for s in mine})

    # gunicorn's own answers pass through the front as sent, and as JSON: an early 404 (gunicorn answers
    # before it reads the 5 MB body, and closes), and its 414 and 431 (its limits are below the front's)
    early = requests.post(url + "/v1/models/nobody:predict", data=b"x" * 5_000_000, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert early.status_code == 404 and "nobody" in early.json()["error"], early.text
    long_url = requests.get(url + "/v1/models/" + "x" * 5000, timeout=10)
    assert long_url.status_code == 414 and "Request Line is too large" in long_url.json()["error"], long_url.text
    big_field = requests.get(url + "/healthz", headers={"X-Big": "y" * 9000}, timeout=10)
    assert big_field.status_code == 431 and big_field.json()["error"], big_field.text

    text = log.read_text(errors="replace")
    assert not [w for w in BAD_LOG_WORDS if w in text], text[-5000:]

    # the front dying (even by SIGKILL) stops gunicorn: no orphan master keeps the socket
    masters = children_of(process.pid)
    assert len(masters) == 1, masters
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    deadline = time.monotonic() + 30
    while _alive(masters[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(masters[0]), "gunicorn outlived the front"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
