"""Cross-site requests: refused from other origins (403), CORS for allowed ones, non-browser clients unaffected."""

import io

import pytest

from imgclf.service import create_app
from tests.support.images import jpeg

ALLOWED = "https://app.example.com"
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = create_app({"model_repository": tmp_path_factory.mktemp("empty"), "load_in_background": False,
                      "cors_origins": ALLOWED + ", http://localhost:3000"})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.mark.parametrize("headers", [
    {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
    {"Origin": EVIL},  # an older browser: no Sec-Fetch-Site
    {"Origin": "null"},  # a sandboxed frame or file:// page
    {"Sec-Fetch-Site": "cross-site"},  # <img src=...> of another site: no Origin
    {"Origin": "http://localhost:8000", "Sec-Fetch-Site": "same-site"},  # another port is another origin
], ids=["cross-site", "origin-only", "null", "no-origin", "same-site"])
@pytest.mark.parametrize("request_kind", ["text-plain-tfserving", "multipart-predict", "get-metrics"])
def test_foreign_browser_requests_are_refused_before_any_work(client, headers, request_kind):
    if request_kind == "text-plain-tfserving":  # what a page can send without a preflight
        response = client.post("/v1/models/shapes:predict", data='{"instances": []}', content_type="text/plain",
                               headers=headers)
    elif request_kind == "multipart-predict":
        response = client.post("/predict", data={"image": (io.BytesIO(jpeg(1)), "a.jpg")},
                               headers=headers)
    else:
        response = client.get("/metrics", headers=headers)
    assert response.status_code == 403
    assert "not allowed" in response.get_json()["error"]
    assert "Access-Control-Allow-Origin" not in response.headers


def test_clients_without_origin_and_same_origin_pages_pass(client):
    assert client.get("/v1/models").status_code == 200  # curl, SDKs: no Origin, no Sec-Fetch-Site
    assert client.get("/v1/models", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert client.get("/v1/models", headers={"Origin": "http://localhost"}).status_code == 200  # Host: localhost
    assert client.get("/v1/models", headers={"Sec-Fetch-Site": "none"}).status_code == 200  # typed in the bar


def test_a_link_from_another_site_still_opens_the_page(client):
    headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert client.get("/", headers=headers).status_code == 200
    assert client.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}).status_code == 403


def test_allowed_origin_gets_cors_answers_and_preflights(client):
    response = client.get("/v1/models", headers={"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED and "Origin" in response.headers["Vary"]
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
    preflight = client.options("/v1/models/shapes:predict", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type", "Sec-Fetch-Site": "cross-site"})
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert {"Authorization", "Content-Type"} <= set(preflight.headers["Access-Control-Allow-Headers"].split(", "))
    refused = client.options("/v1/models/shapes:predict", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST", "Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers


def test_any_origin(tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False, "cors_origins": "*"})
    try:
        response = app.test_client().get("/v1/models", headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
        assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        app.extensions["imgclf.models"].close()
