"""Security headers: nosniff, no-store and a deny-all CSP on API answers; the page keeps its CSP."""

import pytest

from imgclf.service import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app({"model_repository": tmp_path_factory.mktemp("empty"), "load_in_background": False})
    yield app.test_client()
    app.extensions["imgclf.models"].close()


@pytest.mark.parametrize("method, path, status", [
    ("get", "/v1/models", 200), ("get", "/healthz", 200), ("get", "/metrics", 200), ("get", "/nope", 404),
    ("post", "/predict", 404), ("delete", "/v1/models", 405),
])
def test_api_answers(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "Server" not in headers
    assert "/tmp" not in response.get_data(as_text=True)  # "no model is served: <model repository> holds none"


def test_the_page_keeps_its_own_policy(client):
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff" and "no-store" not in \
        response.headers.get("Cache-Control", "")
