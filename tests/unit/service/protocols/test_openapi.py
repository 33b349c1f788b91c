"""The OpenAPI document: valid OpenAPI 3, complete, and true of the app's real responses."""

import base64
import io
import re

import pytest
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

from imgclf.service import create_app
from imgclf.service.protocols import openapi
from imgclf.service.protocols.openapi import document


@pytest.fixture(scope="module")
def app(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False, "max_instances": 4})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def loading_app(tmp_path_factory):
    """An app whose registry says it is still loading: every model route answers 503."""
    app = create_app({"model_repository": tmp_path_factory.mktemp("empty"), "load_in_background": False})
    app.extensions["imgclf.models"].state = "loading"
    return app


@pytest.fixture(scope="module")
def spec(app):
    return app.test_client().get("/openapi.json").get_json()


@pytest.fixture(scope="module")
def image_b64(model_repo):
    path = sorted((model_repo.parent / "images").glob("*/*.jpg"))[0]
    return base64.b64encode(path.read_bytes()).decode()


def openapi_path(rule: str) -> str:
    """Return the OpenAPI path of a Flask rule: ``/v1/models/<segment:name>`` → ``/v1/models/{name}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def schema_validator(spec: dict, schema: dict) -> OAS30Validator:
    """Return a validator for one schema of ``spec``, its #/components references resolvable."""
    return OAS30Validator({**schema, "components": spec["components"]})


def check_response(spec: dict, path: str, method: str, response) -> None:
    """Assert that ``response`` has a documented status and media type, and matches its documented schema."""
    operation = spec["paths"][path][method]
    documented = operation["responses"]
    assert str(response.status_code) in documented, f"{method.upper()} {path}: {response.status_code} undocumented"
    content = documented[str(response.status_code)]["content"]
    media_type = response.mimetype
    assert media_type in content, f"{method.upper()} {path}: {media_type} not in {sorted(content)}"
    if media_type == "application/json":
        schema_validator(spec, content[media_type]["schema"]).validate(response.get_json())


def test_the_served_document_is_valid_openapi(spec, app):
    validate_spec(spec)
    assert spec["openapi"].startswith("3.0")
    assert spec == document(["shapes"], max_instances=4)
    name = spec["paths"]["/v1/models/{name}:predict"]["parameters"][0]
    assert name["example"] == "shapes"  # a served model, so examples reach a real one


def test_two_parts_may_not_describe_the_same_path(monkeypatch):
    monkeypatch.setattr(openapi, "PARTS", openapi.PARTS + openapi.PARTS[:1])
    with pytest.raises(ValueError, match="the path '/predict'"):
        document()


def test_the_document_of_a_loading_app_is_valid_too(loading_app):
    validate_spec(loading_app.test_client().get("/openapi.json").get_json())


def test_every_route_is_documented(app, spec):
    rules = {openapi_path(r.rule): r for r in app.url_map.iter_rules() if not r.rule.startswith("/static/")}
    undocumented = sorted(set(rules) - set(spec["paths"]))
    assert not undocumented, f"routes missing from the document: {undocumented}"
    for path, rule in rules.items():
        methods = {m.lower() for m in rule.methods} - {"head", "options"}
        assert methods <= set(spec["paths"][path]), f"{path}: {methods} vs {sorted(spec['paths'][path])}"
    missing = sorted(set(spec["paths"]) - set(rules))
    assert not missing, f"documented but not routed: {missing}"


def test_every_4xx_and_503_answers_the_error_schema(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if status.startswith("4") or (status == "503" and path != "/readyz"):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}, (path, method, status)


def test_request_examples_match_their_schemas_and_succeed(app, spec):
    client = app.test_client()
    for path, method in (("/v1/models/{name}:predict", "post"), ("/v1/models/{name}/versions/{version}:predict",
                                                                  "post")):
        media = spec["paths"][path][method]["requestBody"]["content"]["application/json"]
        for example in media["examples"].values():
            schema_validator(spec, media["schema"]).validate(example["value"])
            url = path.replace("{name}", "shapes").replace("{version}", "1")
            response = client.post(url, json=example["value"])
            assert response.status_code == 200, response.get_json()
            check_response(spec, path, method, response)


@pytest.mark.parametrize("schema, instance", [
    ("TFServingPredictRequest", {"instances": [{"b64": "x"}], "inputs": [{"b64": "x"}]}),
    ("TFServingPredictRequest", {"signature_name": "serving_default"}),
    ("TFServingPredictRequest", {"instances": [{"b64": "x", "extra": 1}]}),
    ("Error", {"message": "no"}),
    ("ModelStatus", {"model_version_status": [{"version": 1, "state": "AVAILABLE",
                                               "status": {"error_code": "OK", "error_message": ""}}]}),
])
def test_schemas_refuse_what_the_api_refuses(spec, schema, instance):
    with pytest.raises(ValidationError):
        schema_validator(spec, {"$ref": f"#/components/schemas/{schema}"}).validate(instance)


def _tfserving_requests(image_b64: str) -> list:
    good = {"b64": image_b64}
    return [
        ("get", "/v1/models", "/v1/models", None, 200),
        ("get", "/v1/models/{name}", "/v1/models/shapes", None, 200),
        ("get", "/v1/models/{name}", "/v1/models/other", None, 404),
        ("get", "/v1/models/{name}/versions/{version}", "/v1/models/shapes/versions/1", None, 200),
        ("get", "/v1/models/{name}/versions/{version}", "/v1/models/shapes/versions/2", None, 404),
        ("get", "/v1/models/{name}/versions/{version}", "/v1/models/shapes/versions/x", None, 400),
        ("get", "/v1/models/{name}/metadata", "/v1/models/shapes/metadata", None, 200),
        ("get", "/v1/models/{name}/versions/{version}/metadata", "/v1/models/shapes/versions/1/metadata", None, 200),
        ("get", "/v1/models/{name}/versions/{version}/metadata", "/v1/models/shapes/versions/3/metadata", None, 404),
        ("post", "/v1/models/{name}:predict", "/v1/models/shapes:predict", {"instances": [good, good]}, 200),
        ("post", "/v1/models/{name}:predict", "/v1/models/shapes:predict", {"inputs": [good]}, 200),
        ("post", "/v1/models/{name}:predict", "/v1/models/shapes:predict",
         {"signature_name": "bottleneck", "inputs": {"bottleneck": [[0.1] * 2048]}}, 200),
        ("post", "/v1/models/{name}:predict", "/v1/models/shapes:predict", {"instances": [[0.1] * 3]}, 400),
        ("post", "/v1/models/{name}:predict", "/v1/models/shapes:predict", {"instances": [good] * 5}, 400),
        ("post", "/v1/models/{name}:predict", "/v1/models/shapes:predict",
         {"instances": [{"b64": base64.b64encode(b"II*\x00" + bytes(64)).decode()}]}, 400),
        ("post", "/v1/models/{name}:predict", "/v1/models/nope:predict", {"instances": [good]}, 404),
        ("post", "/v1/models/{name}/versions/{version}:predict", "/v1/models/shapes/versions/1:predict",
         {"instances": [{"image_bytes": good}]}, 200),
        ("post", "/v1/models/{name}/versions/{version}:predict", "/v1/models/shapes/versions/7:predict",
         {"instances": [good]}, 404),
    ]


def _service_requests(image_b64: str) -> list:
    image = base64.b64decode(image_b64)
    return [
        ("get", "/healthz", "/healthz", None, 200),
        ("get", "/readyz", "/readyz", None, 200),
        ("get", "/openapi.json", "/openapi.json", None, 200),
        ("get", "/", "/", None, 200),
        ("get", "/metrics", "/metrics", None, 200),
        ("post", "/predict", "/predict", {"b64": image_b64}, 200),
        ("post", "/predict", "/predict?top_k=2&annotate=true", {"b64": image_b64}, 200),
        ("post", "/predict", "/predict", {"file": image}, 200),
        ("post", "/predict", "/predict", {"raw": image, "content_type": "image/jpeg"}, 200),
        ("post", "/predict", "/predict", {"raw": image, "content_type": "image/jpeg",
                                          "headers": {"Accept": "image/jpeg"}}, 200),
        ("post", "/predict", "/predict?top_k=99", {"b64": image_b64}, 400),
        ("post", "/predict", "/predict?model=nope", {"b64": image_b64}, 404),
        ("post", "/predict", "/predict", {"raw": b"x", "content_type": "text/plain"}, 415),
    ]


def _send(client, method: str, url: str, body):
    if body is None:
        return client.open(url, method=method.upper())
    if "raw" in body:
        return client.open(url, method=method.upper(), data=body["raw"], content_type=body["content_type"],
                           headers=body.get("headers"))
    if "file" in body:
        return client.open(url, method=method.upper(), data={"image": (io.BytesIO(body["file"]), "photo.jpg")},
                           content_type="multipart/form-data")
    return client.open(url, method=method.upper(), json=body)


def test_tfserving_responses_match_the_document(app, spec, image_b64):
    client = app.test_client()
    for method, path, url, body, status in _tfserving_requests(image_b64):
        response = _send(client, method, url, body)
        assert response.status_code == status, (url, response.get_data(as_text=True)[:200])
        check_response(spec, path, method, response)


def test_405_is_json(app):
    response = app.test_client().get("/v1/models/shapes:predict")
    assert response.status_code == 405 and "error" in response.get_json()


def test_service_responses_match_the_document(app, spec, image_b64):
    routed = {openapi_path(r.rule) for r in app.url_map.iter_rules()}
    client = app.test_client()
    for method, path, url, body, status in _service_requests(image_b64):
        assert path in routed, f"{method.upper()} {path} is documented but not routed"
        response = _send(client, method, url, body)
        assert response.status_code == status, (url, response.get_data(as_text=True)[:200])
        check_response(spec, path, method, response)


def test_503_responses_match_the_document(loading_app, image_b64):
    client = loading_app.test_client()
    spec = client.get("/openapi.json").get_json()
    requests = [("get", "/readyz", "/readyz", None), ("get", "/v1/models", "/v1/models", None),
                ("get", "/v1/models/{name}", "/v1/models/shapes", None),
                ("get", "/v1/models/{name}/versions/{version}/metadata", "/v1/models/shapes/versions/1/metadata",
                 None),
                ("post", "/v1/models/{name}:predict", "/v1/models/shapes:predict",
                 {"instances": [{"b64": image_b64}]})]
    requests.append(("post", "/predict", "/predict", {"b64": image_b64}))
    for method, path, url, body in requests:
        response = _send(client, method, url, body)
        assert response.status_code == 503, url
        check_response(spec, path, method, response)
