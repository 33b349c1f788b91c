"""The Host header: no redirect is ever built from it, and IMGCLF_ALLOWED_HOSTS refuses others (DNS rebinding)."""

import pytest

from imgclf.core.errors import UsageError
from imgclf.service import create_app
from imgclf.service.access.hosts import host_allowed, split_host
from imgclf.service.access.settings import parse_hosts


@pytest.fixture(scope="module")
def empty_repo(tmp_path_factory):
    return tmp_path_factory.mktemp("no-models")


def app_with(repo, **settings):
    return create_app({"model_repository": repo, "load_in_background": False, "poll_seconds": 0, **settings})


@pytest.mark.parametrize("path, status", [
    ("/v1//models", 404), ("/v2//health/live", 404), ("/v1/models//x/metadata", 404),
    ("//v1/models", 200), ("//readyz", 200),  # the router drops leading slashes itself, without a redirect
])
def test_no_path_is_redirected_to_a_location_built_from_the_host_header(empty_repo, path, status):
    client = app_with(empty_repo).test_client()
    # PATH_INFO as a server passes it: the test client would read "//x" as a host.
    response = client.get("/", headers={"Host": "evil.example"}, environ_overrides={"PATH_INFO": path})
    assert response.status_code == status and "Location" not in response.headers
    assert response.is_json


def test_no_route_ends_in_a_slash_but_the_page_so_the_router_never_adds_one(empty_repo):
    rules = [rule.rule for rule in app_with(empty_repo).url_map.iter_rules()]
    assert [rule for rule in rules if rule.endswith("/")] == ["/"]


def test_without_an_allow_list_any_host_is_answered(empty_repo):
    client = app_with(empty_repo).test_client()
    assert client.get("/v1/models", headers={"Host": "rebound.example"}).status_code == 200


def test_the_allow_list_refuses_other_hosts_with_json_and_leaves_the_probes_open(empty_repo):
    client = app_with(empty_repo, allowed_hosts="api.example.com, localhost:8000, [::1]").test_client()
    for host in ("api.example.com", "API.Example.com:443", "api.example.com.", "localhost:8000", "[::1]:8000"):
        assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "localhost", "localhost:8001", "api.example.com.evil.example", "", "[::2]"):
        response = client.get("/v1/models", headers={"Host": host})
        assert response.status_code == 400, host
        assert "is not one this service answers to (IMGCLF_ALLOWED_HOSTS)" in response.get_json()["error"]
    refused = client.post("/v1/models/x:predict", data=b"{}", headers={"Host": "evil.example"})
    assert refused.status_code == 400  # before the route: not the 404 of an unknown model
    for probe in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):  # kubelet sends the pod's IP
        assert client.get(probe, headers={"Host": "10.1.2.3:8000"}).status_code == 200, probe


@pytest.mark.parametrize("header, expected", [
    ("Example.com:80", ("example.com", "80")), ("example.com", ("example.com", "")),
    ("[::1]:8000", ("[::1]", "8000")), ("[::1]", ("[::1]", "")), ("example.com.:1", ("example.com", "1")),
])
def test_split_host(header, expected):
    assert split_host(header) == expected


def test_host_allowed_matches_a_port_only_when_the_entry_names_one():
    allowed = parse_hosts("a.example, b.example:8000")
    assert host_allowed("a.example:1234", allowed) and host_allowed("b.example:8000", allowed)
    assert not host_allowed("b.example:8001", allowed) and not host_allowed("b.example", allowed)


@pytest.mark.parametrize("raw", ["https://a.example", "a.example/path", "a.example:port", "*", "a b"])
def test_a_malformed_allow_list_entry_is_refused_naming_the_variable(raw):
    with pytest.raises(UsageError, match="IMGCLF_ALLOWED_HOSTS entries are host names"):
        parse_hosts(raw)
