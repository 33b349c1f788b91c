"""A gunicorn worker SIGKILLed under load: gunicorn replaces it and clients lose only what was in flight there.

gunicorn runs two workers on the test repository; eight closed-loop clients send
valid predictions (multipart, raw body, JSON base64, TF-Serving route), each on a
new connection so that either worker may take it. One worker, chosen by a seeded
RNG after a seeded delay, is SIGKILLed. ``IMGCLF_CRASH_SEED`` picks other points.
"""

from __future__ import annotations

import glob
import os
import random
import signal
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector

from bench import soak
from imgclf.core.repository import resolve

SEED = int(os.environ.get("IMGCLF_CRASH_SEED", "7"))
CONCURRENCY = 8
THREADS = 4  # per worker
READY_WITHIN_S = 90
REPLACED_WITHIN_S = 90  # the replacement imports TensorFlow and loads the models under the clients' load
AFTER_READY_S = 1.5  # load kept on after the replacement is ready

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def predictions_by_pid(metrics_dir: Path) -> dict[int, float]:
    """Return {worker pid: prediction requests it answered}, from each worker's own metrics file."""
    counts = {}
    for path in glob.glob(str(metrics_dir / "counter_*.db")):
        samples = [s for m in MultiProcessCollector.merge([path]) for s in m.samples]
        counts[int(Path(path).stem.split("_")[1])] = sum(
            s.value for s in samples
            if s.name == "imgclf_requests_total" and s.labels.get("route", "").endswith("predict"))
    return counts


def wait_for_replacement(server: soak.Server, before: list[int], victim: int, deadline: float) -> tuple[int, float]:
    """Return (pid of the worker that replaced ``victim``, when it had loaded its models)."""
    replacement = None
    while time.monotonic() < deadline and server.process.poll() is None:
        pids = server.worker_pids()
        if replacement is None and victim not in pids and len(pids) == 2:
            (replacement,) = set(pids) - set(before)
        if replacement is not None:
            try:
                if replacement in soak.loaded_worker_pids(server.url):
                    return replacement, time.monotonic()
            except (requests.RequestException, ValueError):  # a scrape that failed: try again
                pass
        time.sleep(0.1)
    pytest.fail(f"worker {victim} not replaced by a ready worker within {REPLACED_WITHIN_S} s "
                f"(workers now {server.worker_pids()}):\n{server.log_tail()}")


def test_a_worker_killed_under_load_is_replaced_and_only_its_requests_fail(model_repo, tmp_path):
    rng = random.Random(SEED)
    images = soak.sample_images(model_repo.parent / "images")
    references = soak.reference_predictions(resolve(model_repo / "shapes"), images)
    server = soak.Server(model_repo, workers=2, threads=THREADS, tmp=tmp_path / "server",
                         extra_env={"IMGCLF_BATCH_MAX_WAIT_MS": "2"})
    load = None
    try:
        server.wait_ready(READY_WITHIN_S)
        before = server.worker_pids()
        assert len(before) == 2, before
        victim, kill_after = rng.choice(before), rng.uniform(0.5, 2.0)
        point = f"seed {SEED}: SIGKILL worker {victim} of {before} after {kill_after:.2f} s of load"
        load = soak.Load(server.url, "shapes", images, references, soak.VALID_KINDS, CONCURRENCY, seed=SEED,
                         close_connections=True).start()
        time.sleep(kill_after)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replacement, ready_at = wait_for_replacement(server, before, victim, killed_at + REPLACED_WITHIN_S)
        time.sleep(AFTER_READY_S)
        outcomes = load.stop()
        load = None
        assert server.process.poll() is None, f"the master died ({point}):\n{server.log_tail()}"
        served = predictions_by_pid(server.metrics_dir())
    finally:
        if load is not None:
            load.stop()
        server.stop()

    failed = [o for o in outcomes if o.problem]
    in_flight = [o for o in outcomes if o.started <= killed_at < o.ended]
    after_ready = [o for o in outcomes if o.started >= ready_at]
    summary = (f"{point}; replaced by {replacement} ready {ready_at - killed_at:.1f} s later; "
               f"{len(outcomes)} requests, {len(in_flight)} in flight at the kill, {len(failed)} failed: "
               + "; ".join(f"{o.kind} at {o.started - killed_at:+.3f} s: {o.problem[:120]}" for o in failed[:5]))
    assert replacement != victim and victim not in server.worker_pids(), summary
    # Only requests sent before the kill may fail, only by losing their connection, and no more than were
    # in flight then (at most the concurrency).
    assert all(o.started < killed_at and o.status is None for o in failed), summary
    assert len(failed) <= len(in_flight) <= CONCURRENCY, summary
    # Every other answer was right (the same top label and score as the reference), the replacement's too.
    assert len(after_ready) >= 2 * CONCURRENCY, summary
    assert served.get(replacement, 0) > 0, f"{summary}; predictions by worker: {served}"
    print(summary)

