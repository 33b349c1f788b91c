"""GET /metrics in one process: counters and histograms move with requests, labels stay bounded."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgclf.service import create_app


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Return {(sample name, sorted labels): value} from GET /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    """Return the sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and labels.items() <= dict(lab).items())


@pytest.fixture()
def app(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False,
                      "batch_max_size": 7, "batch_max_wait_ms": 3.0})

    @app.get("/things/<int:number>")  # a parametrised rule of the test's own
    def thing(number):
        return {"number": number}

    yield app
    app.extensions["imgclf.models"].close()


def test_requests_are_counted_by_rule_method_and_status(app):
    client = app.test_client()
    for number in (1, 2, 3):
        assert client.get(f"/things/{number}").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/page").status_code == 404
    assert client.post("/healthz").status_code == 405
    assert client.open("/healthz", method="BREW").status_code == 405
    samples = scrape(client)
    assert value(samples, "imgclf_requests_total", route="/things/<int:number>", method="GET", status="200") == 3
    assert value(samples, "imgclf_requests_total", route="/healthz", method="GET", status="200") == 1
    assert value(samples, "imgclf_requests_total", route="unmatched", status="404") == 1
    assert value(samples, "imgclf_requests_total", route="unmatched", method="POST", status="405") == 1
    assert value(samples, "imgclf_requests_total", route="unmatched", method="other", status="405") == 1
    routes = {dict(lab).get("route") for (name, lab) in samples if name == "imgclf_requests_total"}
    assert not any(route.startswith("/things/1") or route == "/no/such/page" for route in routes), routes
    # the latency histogram counts the same requests, per rule
    assert value(samples, "imgclf_request_seconds_count", route="/things/<int:number>") == 3
    assert value(samples, "imgclf_request_seconds_bucket", route="/things/<int:number>", le="+Inf") == 3
    assert value(samples, "imgclf_request_seconds_sum", route="/things/<int:number>") > 0
    # the scrape itself is counted from the next scrape on
    assert value(scrape(client), "imgclf_requests_total", route="/metrics") == 1


def test_batches_and_load_time_are_recorded_per_model(app):
    client = app.test_client()
    served = app.extensions["imgclf.models"].get("shapes")
    before = scrape(client)
    assert value(before, "imgclf_batch_size_count", model="shapes") == 1  # the warm-up call
    assert value(before, "imgclf_model_load_seconds", model="shapes") > 0
    size = int(served.model.card["featurizer"]["contract"]["input_size"])
    served.predict(np.zeros((3, size, size, 3), np.float32), served.signature())
    after = scrape(client)
    assert value(after, "imgclf_batch_size_count", model="shapes") == 2
    assert value(after, "imgclf_batch_size_sum", model="shapes") == 1 + 3
    assert value(after, "imgclf_batch_size_bucket", model="shapes", le="2.0") == 1  # the warm-up's 1 image
    assert value(after, "imgclf_batch_seconds_count", model="shapes") == 2
    assert value(after, "imgclf_batch_seconds_sum", model="shapes") > value(before, "imgclf_batch_seconds_sum")


def test_gauges_show_the_batching_config(app):
    samples = scrape(app.test_client())
    assert value(samples, "imgclf_batch_max_size") == 7
    assert value(samples, "imgclf_batch_max_wait_seconds") == pytest.approx(0.003)


def test_every_app_starts_from_zero(app, model_repo):
    client = app.test_client()
    client.get("/healthz")
    client.get("/healthz")
    other = create_app({"model_repository": model_repo / "nothing-here", "load_in_background": False})
    samples = scrape(other.test_client())
    assert value(samples, "imgclf_requests_total", route="/healthz") == 0
    assert value(samples, "imgclf_batch_max_size") == 32  # its own config, not the first app's
    assert value(scrape(client), "imgclf_requests_total", route="/healthz") == 2


def test_openmetrics_is_served_when_asked_for(app):
    response = app.test_client().get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200 and response.mimetype == "application/openmetrics-text"
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")
