"""The metrics extension: each app records into its own metrics, whichever app was created last."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from imgclf.service import create_app
from imgclf.service.lifecycle.extension import current_models
from imgclf.service.metrics import current_metrics
from imgclf.service.servables import image as servable_image
from tests.support.images import jpeg


def scrape(app) -> dict[tuple[str, tuple], float]:
    """Return {(sample name, sorted labels): value} from the app's GET /metrics."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}


BATCHES = ("imgclf_batch_size_count", (("model", "shapes"),))
LOAD = ("imgclf_model_load_seconds", (("model", "shapes"),))
MAX_SIZE = ("imgclf_batch_max_size", ())


def test_two_apps_in_one_process_keep_their_metrics_apart(model_repo, monkeypatch):
    # Both apps exist before either loads its models: a callback bound to "the app created last"
    # would send the first app's batches and load time to the second.
    release = threading.Event()
    real_load = servable_image.load_model

    def gated_load(*args, **kwargs):
        assert release.wait(60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(servable_image, "load_model", gated_load)
    first = create_app({"model_repository": model_repo, "batch_max_size": 5})
    second = create_app({"model_repository": model_repo, "batch_max_size": 7})
    release.set()
    try:
        assert current_models(first).wait(60) and current_models(second).wait(60)
        assert current_metrics(first) is not current_metrics(second)
        before_first, before_second = scrape(first), scrape(second)
        for samples, app in ((before_first, first), (before_second, second)):
            assert samples[LOAD] == current_models(app).models["shapes"].load_seconds > 0
            assert samples[BATCHES] == 1  # its own warm-up, nobody else's
        assert (before_first[MAX_SIZE], before_second[MAX_SIZE]) == (5, 7)

        response = first.test_client().post("/predict", data=jpeg(1), content_type="image/jpeg")
        assert response.status_code == 200, response.get_json()
        after_first, after_second = scrape(first), scrape(second)
        assert after_first[BATCHES] == 2
        assert after_second[BATCHES] == 1
        requests = [key for key in after_second if key[0] == "imgclf_requests_total"
                    and dict(key[1]).get("route") == "/predict"]
        assert not requests, "the second app counted the first app's request"
    finally:
        release.set()
        for app in (first, second):
            current_models(app).wait(60)
            current_models(app).close()
