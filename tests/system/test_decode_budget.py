"""A real gunicorn worker under 8 concurrent worst-case requests: its memory stays under the decode ceiling.

Each heavy request is at the request budget: 2 PNGs of 200 KB that decode to
7000×7000 (49 MP each). The worker's decode gate admits 60 MP at a time, so
one such image is decoded at once and small images fit beside it. The worker's
peak RSS (``VmHWM`` after resetting it, and samples every 20 ms) must stay
within ``BYTES_PER_PIXEL`` × the gate (+ the bodies) above its idle RSS, while small
``/predict`` requests keep being answered; a request of 64 such images (3.1
Gpx: 47 s of CPU before budgets) is a 413. Without the gate the same load grew
the worker by 2.6 GB (measured once: +2628 MB; with the gate +631 MB).
"""

from __future__ import annotations

import base64
import io
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from imgclf.service.cli import serve as serve_cli
from tests.support.images import jpeg
from tests.support.processes import children_of, free_port

REQUEST_PIXELS = 100_000_000
GATE_PIXELS = 60_000_000
BYTES_PER_PIXEL = 12  # docs/guides/security.md: a decode holds about 11 bytes per pixel at its peak (Pillow + numpy)
BODIES_MB = 128  # and the worker holds the request bodies (the 64-image one: 18 MB, parsed and decoded)
HEAVY_REQUESTS = 8


def bomb_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (7000, 7000), (200, 30, 40)).save(out, "PNG", optimize=True)
    return out.getvalue()


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture()
def server(model_repo, tmp_path, request):
    port = free_port()
    env = serve_cli.serve_env(model_repo, bind=f"127.0.0.1:{port}", workers=1, threads=16)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(TMPDIR=str(tmp_path), IMGCLF_BATCH_MAX_WAIT_MS="2", IMGCLF_MAX_REQUEST_PIXELS=str(REQUEST_PIXELS),
               IMGCLF_MAX_DECODE_PIXELS_IN_FLIGHT=str(getattr(request, "param", GATE_PIXELS)),
               # the 16 heavy decodes pass the gate one at a time: on a loaded machine the last waits longer than
               # the default 30 s and would get its 503 (tests/unit/service/dataplane/test_budget.py checks that answer)
               IMGCLF_DECODE_WAIT_SECONDS="110")
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_cli.gunicorn_argv(), env=env, cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("not ready in 90 s:\n" + log.read_text())
        workers = children_of(process.pid)
        assert len(workers) == 1, workers
        yield url, workers[0], log
    finally:
        process.kill()
        process.wait(10)


def test_eight_worst_case_requests_stay_under_the_ceiling_and_small_ones_are_answered(server):
    url, worker, log = server
    small = jpeg(3)
    for _ in range(5):  # warm: the first requests allocate what every later one reuses
        assert requests.post(url + "/predict", data=small, headers={"Content-Type": "image/jpeg"},
                             timeout=30).status_code == 200
    time.sleep(1.5)  # the worker's malloc_trim hands the warm-up's freed memory back
    idle = rss_kb(worker)
    reset = True
    try:
        Path(f"/proc/{worker}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    bomb = {"b64": base64.b64encode(bomb_png()).decode()}
    peak, done, smalls = [idle], threading.Event(), []

    def sample():
        while not done.is_set():
            peak.append(rss_kb(worker))
            time.sleep(0.02)

    def small_requests():
        while not done.is_set():
            started = time.monotonic()
            response = requests.post(url + "/predict", data=small, headers={"Content-Type": "image/jpeg"}, timeout=60)
            smalls.append((response.status_code, time.monotonic() - started, done.is_set()))
            time.sleep(0.2)

    def heavy(_):
        return requests.post(url + "/v1/models/shapes:predict", json={"instances": [bomb, bomb]}, timeout=120)

    threads = [threading.Thread(target=sample), threading.Thread(target=small_requests)]
    for thread in threads:
        thread.start()
    try:
        too_big = requests.post(url + "/v1/models/shapes:predict", json={"instances": [bomb] * 64}, timeout=60)
        with ThreadPoolExecutor(HEAVY_REQUESTS) as pool:
            answers = list(pool.map(heavy, range(HEAVY_REQUESTS)))
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
    if reset:
        peak.append(rss_kb(worker, "VmHWM"))
    grew_mb = (max(peak) - idle) / 1024
    ceiling_mb = BYTES_PER_PIXEL * GATE_PIXELS / 2**20 + BODIES_MB
    print(f"idle RSS {idle / 1024:.0f} MB, peak +{grew_mb:.0f} MB (ceiling +{ceiling_mb:.0f} MB); "
          f"small requests during the load: {len(smalls)}, slowest {max(s[1] for s in smalls):.2f} s")
    assert too_big.status_code == 413 and "3,136,000,000 pixels" in too_big.json()["error"]
    assert [a.status_code for a in answers] == [200] * HEAVY_REQUESTS, [a.text[:200] for a in answers]
    assert all(len(a.json()["predictions"]) == 2 for a in answers)
    answered_meanwhile = [s for s in smalls if not s[2]]
    assert len(answered_meanwhile) >= 3 and all(s[0] == 200 for s in smalls), smalls
    assert grew_mb < ceiling_mb, f"worker RSS grew by {grew_mb:.0f} MB"
    assert "WORKER TIMEOUT" not in log.read_text()
