"""API keys on the routes: 401 alike for missing, wrong and out-of-scope keys; open probes; counters; 429."""

import io

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgclf.service import create_app
from imgclf.service.access.api_keys import key_line

API_KEY, OTHER_KEY, METRICS_KEY = "imgclf_api-key-one", "imgclf_api-key-two", "imgclf_scraper-key"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text("# test keys\n" + "\n".join([key_line("ci", API_KEY), key_line("web", OTHER_KEY),
                                                 key_line("prom", METRICS_KEY)]) + "\n\n")
    return path


@pytest.fixture(scope="module")
def app(keys_file, tmp_path_factory):
    app = create_app({"model_repository": tmp_path_factory.mktemp("empty"), "load_in_background": False,
                      "api_keys_file": str(keys_file), "metrics_keys": "prom"})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"X-API-Key": API_KEY + "x"}, {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": "Bearer " + METRICS_KEY},  # a /metrics key opens /metrics only
    {"Authorization": f"Bearer {API_KEY}", "X-API-Key": OTHER_KEY},  # two different keys
], ids=["none", "wrong", "wrong-header", "basic", "metrics-key", "two-keys"])
def test_refused_requests_get_one_and_the_same_401(client, headers):
    response = client.get("/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="imgclf"'
    assert response.get_json() == {"error": "an API key is required: send Authorization: Bearer <key> or "
                                            "X-API-Key: <key>"}


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {API_KEY}"}, {"authorization": f"bearer  {API_KEY}"},
                                     {"X-API-Key": OTHER_KEY},
                                     {"Authorization": f"Bearer {API_KEY}", "X-API-Key": API_KEY}])
def test_a_valid_key_opens_the_api(client, headers):
    response = client.get("/v1/models", headers=headers)
    assert response.status_code == 200 and response.get_json() == {"models": []}


def test_probes_and_the_page_stay_open_and_unknown_routes_need_a_key(client):
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/static/app.js"):
        assert client.get(path).status_code == 200, path
    for path in ("/v2", "/openapi.json", "/v1/models/x/metadata", "/no/such/route"):
        assert client.get(path).status_code == 401, path
    assert client.post("/predict", data=b"x" * 1000, content_type="image/png").status_code == 401


def test_metrics_need_their_own_key_and_count_requests_by_key_name(client):
    assert client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 401
    client.get("/v1/models", headers={"X-API-Key": OTHER_KEY})
    client.get("/v1/models", headers={"X-API-Key": OTHER_KEY})
    client.get("/v1/models", headers={"X-API-Key": "nope"})
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    samples = {(s.labels["key"], s.labels["status"]): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "imgclf_api_key_requests_total"}
    assert samples[("web", "200")] >= 2 and samples[("-", "401")] >= 1
    for key in (API_KEY, OTHER_KEY, METRICS_KEY):
        assert key not in text


def test_without_a_keys_file_nothing_needs_a_key(tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False})
    try:
        client = app.test_client()
        assert client.get("/v1/models").status_code == 200 and client.get("/metrics").status_code == 200
        assert "imgclf_api_key_requests" not in client.get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["imgclf.models"].close()


def test_rate_limit_per_key_answers_429_with_retry_after(keys_file, tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False, "api_keys_file": str(keys_file),
                      "rate_limit": "2/min"})
    try:
        client = app.test_client()
        ci, web = {"X-API-Key": API_KEY}, {"X-API-Key": OTHER_KEY}
        assert [client.get("/v1/models", headers=ci).status_code for _ in range(2)] == [200, 200]
        refused = client.get("/v1/models", headers=ci)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
        assert "at most 2 per 60 s" in refused.get_json()["error"]
        assert client.get("/v1/models", headers=web).status_code == 200  # another key has its own bucket
        assert client.get("/healthz").status_code == 200  # probes are not limited
    finally:
        app.extensions["imgclf.models"].close()


def test_a_refused_request_has_its_body_left_unread(client):
    class Unreadable(io.BytesIO):
        def read(self, *args):
            raise AssertionError("the body was read")

        readline = read

    response = client.post("/predict", input_stream=Unreadable(), content_type="image/png",
                           headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 401


def test_the_api_description_documents_the_key_answers(client):
    spec = client.get("/openapi.json", headers={"X-API-Key": API_KEY}).get_json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"401", "403", "429"} <= set(predict["responses"]) and {} in predict["security"]
    assert "401" not in spec["paths"]["/healthz"]["get"]["responses"]
    assert set(spec["components"]["securitySchemes"]) == {"bearerKey", "headerKey"}
