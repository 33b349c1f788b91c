"""Readiness that holds: after ``/readyz`` said 200, no worker answers a model request with 503.

The real gunicorn runs 2 workers behind the front (`imgclf serve`: the workers on the front's channel)
and 4 workers alone on the port, on the test repository. A client polls
``/readyz`` until 200 and then at once sends a burst of 200 concurrent requests
(``GET /v1/models/shapes`` and ``POST /predict`` with a small JPEG), each on a
new connection so that any worker may take it; every answer must be a 200.
The same burst follows a SIGKILLed worker's replacement and runs during a
reload (SIGHUP: every worker is replaced), and again once the reload is over.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from bench import soak
from tests.support.images import jpeg

BURST = 200
CONCURRENCY = 50
THREADS = 2  # per worker: 4 workers x 2 threads on a small machine
READY_WITHIN_S = 90
REQUEST_TIMEOUT_S = 90  # a request during a reload may wait (in the backlog, or the front) while new workers load
MODEL = "shapes"

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def poll_ready(server: soak.Server, timeout: float = READY_WITHIN_S) -> float:
    """Poll ``/readyz`` (new connections, 20 per second) until it answers 200; return how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert server.process.poll() is None, f"gunicorn exited:\n{server.log_tail()}"
        try:
            if requests.get(server.url + "/readyz", timeout=5, headers={"Connection": "close"}).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.05)
    pytest.fail(f"/readyz not 200 within {timeout:.0f} s:\n{server.log_tail()}")


def burst(url: str, image: bytes) -> collections.Counter:
    """Send BURST concurrent model requests, half GET /v1/models/NAME, half POST /predict; count the outcomes."""

    def one(i: int) -> str:
        try:
            if i % 2:
                response = requests.get(f"{url}/v1/models/{MODEL}", timeout=REQUEST_TIMEOUT_S,
                                        headers={"Connection": "close"})
                ok = response.status_code == 200 and \
                    response.json()["model_version_status"][0]["state"] == "AVAILABLE"
            else:
                response = requests.post(url + "/predict", files={"image": ("a.jpg", image, "image/jpeg")},
                                         timeout=REQUEST_TIMEOUT_S, headers={"Connection": "close"})
                ok = response.status_code == 200 and bool(response.json()["predictions"])
        except requests.RequestException as exc:
            return f"no answer ({type(exc).__name__})"
        return str(response.status_code) if ok or response.status_code != 200 else "200 with a wrong body"

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return collections.Counter(pool.map(one, range(BURST)))


def wait_for_workers(server: soak.Server, workers: int, gone: set[int], timeout: float = READY_WITHIN_S) -> list[int]:
    """Wait until the master has ``workers`` workers, none of them in ``gone``; return their pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if len(pids) == workers and not gone & set(pids):
            return pids
        time.sleep(0.1)
    pytest.fail(f"workers {sorted(gone)} not replaced within {timeout:.0f} s (now {server.worker_pids()}):\n"
                f"{server.log_tail()}")


@pytest.mark.parametrize("workers, front", [(2, True), (4, False)])
def test_no_503_after_readyz_at_start_after_a_kill_and_during_a_reload(model_repo, tmp_path, workers, front):
    image = jpeg(3, size=(64, 48))
    server = soak.Server(model_repo, workers=workers, threads=THREADS, tmp=tmp_path / "server",
                         extra_env={"IMGCLF_BATCH_MAX_WAIT_MS": "2", "IMGCLF_GRACEFUL_TIMEOUT": "10"}, front=front)
    counts, took = {}, {}
    try:
        took["ready"] = poll_ready(server)
        t = time.monotonic()
        counts["start"] = burst(server.url, image)
        took["burst"] = time.monotonic() - t

        before = wait_for_workers(server, workers, gone=set())
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic()
        wait_for_workers(server, workers, gone={victim})
        took["replaced"] = time.monotonic() - t
        took["ready after the kill"] = poll_ready(server)
        counts["after a kill"] = burst(server.url, image)

        old = set(server.worker_pids())
        t = time.monotonic()
        server.process.send_signal(signal.SIGHUP)
        counts["during a reload"] = burst(server.url, image)
        took["burst during the reload"] = time.monotonic() - t
        wait_for_workers(server, workers, gone=old)
        took["reloaded"] = time.monotonic() - t
        took["ready after the reload"] = poll_ready(server)
        counts["after a reload"] = burst(server.url, image)
        assert server.process.poll() is None, server.log_tail()
    finally:
        server.stop()

    summary = f"{workers} workers{', behind the front' if front else ''}: " + "; ".join(
        f"{phase}: {counts[phase]['503']} x 503 of {sum(counts[phase].values())} ({dict(counts[phase])})"
        for phase in counts) + "; seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in took.items())
    print(summary)
    assert all(c["503"] == 0 for c in counts.values()), summary
    assert all(c["200"] == BURST for c in counts.values()), summary
