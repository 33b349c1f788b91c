"""API keys under the real gunicorn: 401 without a key, per-key counters in /metrics, SIGHUP re-reads."""

from __future__ import annotations

import signal
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from imgclf.service.access.api_keys import key_line
from tests.support.gunicorn_server import gunicorn

FIRST, SECOND = "imgclf_first-key", "imgclf_second-key"


def wait_for(check, seconds: float, what: str, log):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening, or the reload's new workers load
            pass
        time.sleep(0.3)
    pytest.fail(f"{what} not within {seconds} s:\n{log.read_text()}")


def test_keys_are_required_counted_and_reread_on_sighup(model_repo, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(key_line("first", FIRST) + "\n")
    env = {"IMGCLF_API_KEYS_FILE": str(keys), "IMGCLF_GRACEFUL_TIMEOUT": "5"}
    with gunicorn(model_repo, tmp_path, workers=1, threads=4, env=env) as server:  # /readyz needs no key
        url, log = server.url, server.log
        first, second = {"Authorization": f"Bearer {FIRST}"}, {"X-API-Key": SECOND}
        for _ in range(6):
            assert requests.get(url + "/v1/models", headers={"Connection": "close"}, timeout=10).status_code == 401
            answer = requests.get(url + "/v1/models", headers={**first, "Connection": "close"}, timeout=10)
            assert answer.status_code == 200 and answer.json()["models"][0]["name"] == "shapes"
        assert requests.get(url + "/v1/models", headers=second, timeout=10).status_code == 401
        metrics = requests.get(url + "/metrics", headers=first, timeout=10).text
        counted = {(s.labels["key"], s.labels["status"]): s.value for f in text_string_to_metric_families(metrics)
                   for s in f.samples if s.name == "imgclf_api_key_requests_total"}
        assert counted[("first", "200")] == 6 and counted[("-", "401")] == 7, counted
        assert FIRST not in metrics

        keys.write_text(keys.read_text() + key_line("second", SECOND) + "\n")
        server.process.send_signal(signal.SIGHUP)  # new workers read the file; the old ones finish and stop
        wait_for(lambda: requests.get(url + "/v1/models", headers={**second, "Connection": "close"},
                                      timeout=60).status_code == 200, 120, "the second key accepted", log)
        assert requests.get(url + "/v1/models", headers=first, timeout=10).status_code == 200
        assert "Traceback" not in log.read_text()
