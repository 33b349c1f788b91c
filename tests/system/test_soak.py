"""bench/soak.py's soak, short: gunicorn with two workers under mixed valid and invalid requests.

The same code as ``python -m bench.soak`` (which runs 60 s at concurrency 16 and
is the one to report), here for 8 s at concurrency 8 on the test repository:
no 5xx, no connection error, every valid answer carries the reference's top
label and score, every invalid request gets its 4xx, no worker replaced. The
memory criterion (each worker's RSS grows < 10 % from the first 20 s to the last
20 s) needs the long run: 8 s is too short to tell growth from warm-up, so here
the samples are only checked to exist.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak
from imgclf.core.repository import resolve

SECONDS = 8.0
CONCURRENCY = 8

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def test_a_short_soak_has_no_server_errors_and_only_right_answers(model_repo, tmp_path):
    images = soak.sample_images(model_repo.parent / "images")
    references = soak.reference_predictions(resolve(model_repo / "shapes"), images)
    server = soak.Server(model_repo, workers=2, threads=8, tmp=tmp_path / "server")
    try:
        server.wait_ready(90)
        result = soak.soak(server, images, references, SECONDS, CONCURRENCY, "shapes", warmup=0.0)
    finally:
        server.stop()
    report = result.report()
    assert result.failures(check_memory=False) == [], f"{report}\n{server.log_tail()}"
    kinds = {o.kind for o in result.outcomes}
    assert kinds == {*soak.VALID_KINDS, *soak.INVALID_KINDS}, report  # every kind was sent
    assert len(result.rss) == 2 and all(len(s) >= SECONDS - 2 for s in result.rss.values()), report
    print(report)
