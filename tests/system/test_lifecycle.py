"""Versions without restarts: the real gunicorn (2 workers) polls its repository and swaps under load.

A version published while clients keep predicting is loaded and warmed up in
each worker beside the serving one, becomes the default in every worker at
once (the workers agree through the server's worker-state folder), and the old
version is unloaded: no answer but 200, and no client that has seen the new
version sees the old one afterwards. Request latency before and during the swap
is printed (benchmarks, not tests, judge speed). Then five more publish/unload
cycles without load: each worker's RSS after them stays within 10 % of its RSS
after the first cycle.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from bench import soak
from tests.support.images import jpeg
from tests.support.versions import publish_copy

MODEL = "shapes"
CLIENTS = 4
SWAP_WITHIN_S = 90
MEMORY_CYCLES = 5

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def worker_views(server: soak.Server) -> dict[int, dict]:
    """Return what each live worker published about ``MODEL``: its default and the state of each version."""
    (folder,) = server.tmp.glob("imgclf-workers-*")
    views = {}
    for pid in server.worker_pids():
        try:
            views[pid] = json.loads((folder / f"versions-{pid}.json").read_text())["models"][MODEL]
        except (OSError, ValueError, KeyError):
            views[pid] = {}
    return views


def wait_for_swap(server: soak.Server, new: int, old: int) -> float:
    """Wait until every worker has ``new`` as its default and ``old`` unloaded; return how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < SWAP_WITHIN_S:
        assert server.process.poll() is None, server.log_tail()
        views = worker_views(server)
        if len(views) == server.workers and all(
                v.get("default") == new and v.get("states", {}).get(str(old)) in ("END", None) for v in views.values()):
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"version {new} not the default everywhere with {old} unloaded within {SWAP_WITHIN_S} s: "
                f"{worker_views(server)}\n{server.log_tail()}")


class Load:
    """CLIENTS threads predicting (new connection each time) and asking the metadata's version, until stopped."""

    def __init__(self, url: str, image: bytes):
        self.url, self.stop = url, threading.Event()
        self.body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
        self.results: list[tuple[float, float, str, int]] = []  # started, ended, what, status or version
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def _run(self, index: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                if (index + n) % 2:
                    r = requests.post(f"{self.url}/v1/models/{MODEL}:predict", json=self.body, timeout=60,
                                      headers={"Connection": "close"})
                    ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
                    self.results.append((started, time.monotonic(), "predict", r.status_code if ok else -1))
                else:
                    r = requests.get(f"{self.url}/v1/models/{MODEL}/metadata", timeout=60,
                                     headers={"Connection": "close"})
                    if r.status_code != 200:
                        self.errors.append(f"metadata {r.status_code}: {r.text[:200]}")
                        continue
                    self.results.append((started, time.monotonic(), "version", int(r.json()["model_spec"]["version"])))
                if r.status_code != 200:
                    self.errors.append(f"predict {r.status_code}: {r.text[:200]}")
            except requests.RequestException as exc:
                self.errors.append(f"no answer: {type(exc).__name__}")

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)


def percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "no requests"
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return f"{len(latencies)} requests, p50 {p50:.0f} ms, p99 {p99:.0f} ms"


def test_publish_under_load_swaps_every_worker_and_unloading_returns_the_memory(model_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(model_repo / MODEL / "1", repo / MODEL / "1")
    server = soak.Server(repo, workers=2, threads=4, tmp=tmp_path / "server",
                         extra_env={"IMGCLF_POLL_SECONDS": "1", "IMGCLF_BATCH_MAX_WAIT_MS": "2"})
    try:
        server.wait_ready()
        load = Load(server.url, jpeg(3, size=(64, 48)))
        time.sleep(3)
        published_at = time.monotonic()
        assert publish_copy(repo, repo / MODEL / "1").name == "2"
        swap_s = wait_for_swap(server, new=2, old=1)
        swapped_at = time.monotonic()
        time.sleep(2)
        load.finish()

        statuses = [r[3] for r in load.results if r[2] == "predict"]
        assert not load.errors and statuses and set(statuses) == {200}, (load.errors[:5], server.log_tail())
        versions = sorted((r for r in load.results if r[2] == "version"), key=lambda r: r[0])
        first_new = min((r[1] for r in versions if r[3] == 2), default=None)
        assert first_new is not None, "no client saw version 2"
        flipped_back = [r for r in versions if r[0] > first_new and r[3] != 2]
        assert not flipped_back, f"{len(flipped_back)} requests saw version 1 after a client had seen version 2"
        assert {r[3] for r in versions if r[0] > swapped_at} == {2}
        before = [r[1] - r[0] for r in load.results if r[2] == "predict" and r[1] < published_at]
        during = [r[1] - r[0] for r in load.results if r[2] == "predict" and published_at <= r[0] < swapped_at]
        print(f"swap: publish -> every worker serves v2 with v1 unloaded in {swap_s:.1f} s; "
              f"before: {percentiles(before)}; during the swap: {percentiles(during)}")

        rss = {}
        for cycle in range(1, MEMORY_CYCLES + 2):  # cycle 1 is the warm-up baseline, then five more
            new = int(publish_copy(repo, repo / MODEL / "1").name)
            wait_for_swap(server, new=new, old=new - 1)
            rss[cycle] = {pid: rss_bytes(pid) for pid in server.worker_pids()}
        growth = {pid: rss[MEMORY_CYCLES + 1][pid] / rss[1][pid] - 1 for pid in rss[1]}
        print("RSS per worker (MB) after each cycle: " + "; ".join(
            f"{pid}: " + ", ".join(f"{rss[c][pid] / 2**20:.0f}" for c in sorted(rss)) for pid in rss[1]))
        assert all(g < 0.10 for g in growth.values()), f"RSS growth after {MEMORY_CYCLES} cycles: {growth}"
        status = requests.get(f"{server.url}/v1/models/{MODEL}", timeout=10).json()["model_version_status"]
        assert status[0]["version"] == str(MEMORY_CYCLES + 3) and status[0]["state"] == "AVAILABLE"
        assert all(s["state"] == "END" for s in status[1:])
        assert server.process.poll() is None
    finally:
        server.stop()
