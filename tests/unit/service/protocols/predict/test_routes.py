"""POST /predict: the three input forms, top_k, annotation, and every bad input's status."""

import base64
import io
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from imgclf.core.errors import BadRequest
from imgclf.service import create_app
from imgclf.service.protocols.predict.request import decode_b64, parse_bool, parse_top_k
from tests.support.images import encode, jpeg, photo_like

LABELS = ["bubbles", "checkers", "stripes", "sunsets"]


@pytest.fixture(scope="module")
def app(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def reference(model_repo):
    """The same export loaded on its own: probabilities computed without the service."""
    from imgclf.training.classifier import load_model

    model = load_model(model_repo / "shapes" / "1")

    def probabilities(data: bytes) -> dict[str, float]:
        return dict(zip(model.labels, model.predict_rgb([model.decode(data)])[0].tolist()))

    return probabilities


@pytest.fixture(scope="module")
def images(model_repo) -> dict[str, bytes]:
    root = model_repo.parent / "images"
    return {label: sorted((root / label).glob("*.jpg"))[0].read_bytes() for label in LABELS}


def _post(client, form: str, data: bytes, query: str = "", **json_fields):
    url = "/predict" + (f"?{query}" if query else "")
    if form == "multipart":
        return client.post(url, data={"image": (io.BytesIO(data), "photo.jpg")}, content_type="multipart/form-data")
    if form == "raw":
        return client.post(url, data=data, content_type="image/jpeg")
    return client.post(url, json={"b64": base64.b64encode(data).decode(), **json_fields})


@pytest.mark.parametrize("form", ["multipart", "raw", "json"])
def test_each_input_form_matches_the_model_computed_directly(client, images, reference, form):
    for data in images.values():
        response = _post(client, form, data, "top_k=4")
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert (body["model"], body["version"]) == ("shapes", 1)
        assert set(body["timing_ms"]) == {"decode", "predict", "total"}
        assert body["timing_ms"]["total"] >= body["timing_ms"]["predict"] >= 0
        scores = [p["score"] for p in body["predictions"]]
        assert scores == sorted(scores, reverse=True) and "annotated_image" not in body
        expected = reference(data)
        got = {p["label"]: p["score"] for p in body["predictions"]}
        assert got.keys() == expected.keys()
        np.testing.assert_allclose([got[k] for k in LABELS], [expected[k] for k in LABELS], rtol=1e-5, atol=1e-7)


def test_top_k_defaults_to_the_config_cut_to_the_label_count(client, images):
    response = _post(client, "raw", images["stripes"])
    assert len(response.get_json()["predictions"]) == 4  # default 5, 4 labels


@pytest.mark.parametrize("query, fields, expected", [
    ("top_k=1", {}, 1),
    ("", {"top_k": 2}, 2),
    ("top_k=3", {"top_k": 1}, 3),  # the query string wins over the JSON body
    ("", {"top_k": "4"}, 4),
])
def test_top_k_from_query_or_json(client, images, query, fields, expected):
    response = _post(client, "json", images["sunsets"], query, **fields)
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == expected


@pytest.mark.parametrize("query, fields", [("annotate=true", {}), ("annotate=1", {}), ("", {"annotate": True}),
                                           ("annotate=TRUE", {"annotate": False})])
def test_annotate_adds_a_base64_jpeg(client, images, query, fields):
    body = _post(client, "json", images["checkers"], query, **fields).get_json()
    image = Image.open(io.BytesIO(base64.b64decode(body["annotated_image"])))
    assert image.format == "JPEG" and min(image.size) >= 256


@pytest.mark.parametrize("query, fields", [("annotate=false", {"annotate": True}), ("annotate=0", {}),
                                           ("", {"annotate": False})])
def test_annotate_false_adds_nothing(client, images, query, fields):
    body = _post(client, "json", images["checkers"], query, **fields).get_json()
    assert "annotated_image" not in body and body["predictions"]


def test_only_an_annotated_answer_keeps_the_decoded_picture(client, images, monkeypatch):
    from imgclf.training.classifier import LoadedModel

    kept = []
    real = LoadedModel.preprocess
    monkeypatch.setattr(LoadedModel, "preprocess", lambda self, data: kept.append(1) or real(self, data))
    plain = _post(client, "multipart", images["stripes"]).get_json()
    assert not kept and plain["predictions"]  # no RGB copy: the network input alone (preprocess_input)
    annotated = _post(client, "multipart", images["stripes"], "annotate=1").get_json()
    assert kept and annotated["predictions"] == plain["predictions"] and annotated["annotated_image"]


def test_accept_image_jpeg_answers_the_annotated_image(client, images):
    response = client.post("/predict", data=images["bubbles"], content_type="image/jpeg",
                           headers={"Accept": "image/jpeg"})
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert "Accept" in response.headers["Vary"]
    assert Image.open(io.BytesIO(response.data)).format == "JPEG"
    browser = client.post("/predict", data=images["bubbles"], content_type="image/jpeg",
                          headers={"Accept": "text/html,image/webp,*/*;q=0.8"})
    assert browser.mimetype == "application/json"  # a wildcard is not a request for the image


TIFF = encode(photo_like(1, (64, 48)), "TIFF")
# A 1-bit PNG of 8000×7000 = 56 M pixels (over the 50 M default) compresses to a few kB.
HUGE = encode(Image.new("1", (8000, 7000)), "PNG")
OVER_LIMIT = bytes(20 * 1024 * 1024 + 1)  # the default IMGCLF_MAX_UPLOAD_BYTES is 20 MiB


def many_parts(count: int) -> bytes:
    """A multipart body (boundary B) of a small JPEG file field "image", then text fields: ``count`` parts."""
    head = (b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + jpeg(1, size=(16, 16)) + b"\r\n")
    fields = b"".join(b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(count - 1))
    return head + fields + b"--B--\r\n"


PARTS_LIMIT = "the multipart body holds more than 100 parts (IMGCLF_MAX_FORM_PARTS)"


@pytest.mark.parametrize("kwargs, status, message", [
    ({"data": {"photo": (io.BytesIO(b"x"), "a.jpg"), "note": "hi"}, "content_type": "multipart/form-data"},
     400, "received fields: note, photo"),
    ({"data": {"image": "photo.jpg"}, "content_type": "multipart/form-data"}, 400, "is text, not a file"),
    ({"data": {}, "content_type": "multipart/form-data"}, 400, "received fields: none"),
    ({"data": b"", "content_type": "image/jpeg"}, 400, "empty body"),
    ({"data": b""}, 400, "empty body"),
    ({"data": b"", "content_type": "application/json"}, 400, "empty body"),
    ({"data": b'{"b64": ', "content_type": "application/json"}, 400, "malformed JSON"),
    ({"data": b"\xff\xfe\x00", "content_type": "application/json"}, 400, "malformed JSON"),
    ({"json": [1, 2]}, 400, "must be an object"),
    ({"json": "abc"}, 400, "must be an object"),
    ({"json": {"image": "abc"}}, 400, 'needs a "b64" field'),
    ({"json": {"b64": "!!not base64!!"}}, 400, "not valid base64"),
    ({"json": {"b64": "abcde"}}, 400, "not valid base64"),
    ({"json": {"b64": 12}}, 400, "must be a string"),
    ({"json": {"b64": ""}}, 400, "b64 is empty"),
    ({"json": {"b64": base64.b64encode(b"hello, not an image").decode()}}, 400, "not an image"),
    ({"data": jpeg(2)[:3000], "content_type": "image/jpeg"}, 400, "corrupt"),
    ({"data": b"some text", "content_type": "text/plain"}, 415, "unsupported content type 'text/plain'"),
    ({"data": b"a=b", "content_type": "application/x-www-form-urlencoded"}, 415, "unsupported content type"),
    ({"data": b"\xff\xd8\xff"}, 415, "no Content-Type"),
    ({"data": TIFF, "content_type": "image/tiff"}, 415, "unsupported image type TIFF"),
    ({"data": HUGE, "content_type": "image/png"}, 413, "pixels"),
    ({"data": OVER_LIMIT, "content_type": "image/jpeg"}, 413, "over the limit"),
    ({"data": {"image": (io.BytesIO(OVER_LIMIT), "a.jpg")}, "content_type": "multipart/form-data"}, 413,
     "over the limit"),
    ({"data": b"[" * 100_000, "content_type": "application/json"}, 400, "malformed JSON"),
    ({"data": many_parts(1_001), "content_type": "multipart/form-data; boundary=B"}, 413, PARTS_LIMIT),
    ({"data": many_parts(100_000), "content_type": "multipart/form-data; boundary=B"}, 413, PARTS_LIMIT),
    ({"query_string": "top_k=0"}, 400, "between 1 and 4; received '0'"),
    ({"query_string": "top_k=5"}, 400, "between 1 and 4; received '5'"),
    ({"query_string": "top_k=two"}, 400, "top_k must be an integer"),
    ({"query_string": "top_k=" + "9" * 5000}, 400, "top_k must be an integer"),
    ({"json_extra": {"top_k": 2.5}}, 400, "top_k must be an integer"),
    ({"json_extra": {"top_k": True}}, 400, "top_k must be an integer"),
    ({"query_string": "annotate=maybe"}, 400, "annotate must be true, false, 1 or 0; received 'maybe'"),
    ({"json_extra": {"annotate": "yes"}}, 400, "annotate must be"),
    ({"query_string": "model=nope"}, 404, "unknown model 'nope'; served models: shapes"),
    ({"json_extra": {"model": "nope"}}, 404, "unknown model 'nope'; served models: shapes"),
    ({"json_extra": {"model": 3}}, 400, '"model" must be a string naming a served model; received 3'),
    ({"data": {"image": (io.BytesIO(b"x"), "a.jpg"), "model": "nope"}, "content_type": "multipart/form-data"},
     404, "unknown model 'nope'"),
    ({"query_string": "unfamiliar_threshold=nan"}, 400,
     "unfamiliar_threshold must be a finite number (unfamiliar_score above it is flagged unfamiliar); "
     "received 'nan'"),
    ({"query_string": "unfamiliar_threshold=-inf"}, 400, "unfamiliar_threshold must be a finite number"),
    ({"query_string": "unfamiliar_threshold=low"}, 400, "received 'low'"),
    ({"json_extra": {"unfamiliar_threshold": True}}, 400, "flagged unfamiliar); "
                                                          "received True"),
    ({"json_extra": {"unfamiliar_threshold": {"value": 1}}}, 400, "unfamiliar_threshold must be a finite number"),
    ({"json_extra": {"unfamiliar_threshold": 10 ** 400}}, 400, "received an integer of 401 digits"),
    ({"data": {"image": (io.BytesIO(jpeg(2)), "a.jpg"), "unfamiliar_threshold": "1e999"},
      "content_type": "multipart/form-data"}, 400, "flagged unfamiliar); received '1e999'"),
])
def test_bad_input_gets_a_clear_error(client, images, kwargs, status, message):
    kwargs = dict(kwargs)
    if "query_string" in kwargs or "json_extra" in kwargs:  # a good image, a bad parameter
        extra = kwargs.pop("json_extra", {})
        kwargs["json"] = {"b64": base64.b64encode(images["bubbles"]).decode(), **extra}
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    assert message in response.get_json()["error"]


@pytest.fixture(scope="module")
def twin_app(model_repo, tmp_path_factory):
    """Two image classifiers: "shapes" (the default: first by name) and "twin", a copy of it."""
    repo = tmp_path_factory.mktemp("twin") / "models"
    shutil.copytree(model_repo / "shapes", repo / "shapes")
    shutil.copytree(model_repo / "shapes", repo / "twin")
    app = create_app({"model_repository": repo, "load_in_background": False})
    yield app
    app.extensions["imgclf.models"].close()


def _post_naming(client, form: str, data: bytes, model: str | None, query: str = ""):
    """POST ``data`` with "model" in the JSON body or the multipart form (None: no such field)."""
    url = "/predict" + (f"?{query}" if query else "")
    field = {} if model is None else {"model": model}
    if form == "multipart":
        return client.post(url, data={"image": (io.BytesIO(data), "photo.jpg"), **field},
                           content_type="multipart/form-data")
    return client.post(url, json={"b64": base64.b64encode(data).decode(), **field})


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_a_model_field_in_the_body_picks_the_model(twin_app, images, form):
    client = twin_app.test_client()
    assert _post_naming(client, form, images["stripes"], None).get_json()["model"] == "shapes"
    named = _post_naming(client, form, images["stripes"], "twin")
    assert named.status_code == 200 and named.get_json()["model"] == "twin"
    assert _post_naming(client, form, images["stripes"], "").get_json()["model"] == "shapes"  # blank: not given


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_the_query_model_wins_over_the_body_field(twin_app, images, form):
    client = twin_app.test_client()
    assert _post_naming(client, form, images["stripes"], "twin", "model=shapes").get_json()["model"] == "shapes"
    assert _post_naming(client, form, images["stripes"], "shapes", "model=twin").get_json()["model"] == "twin"


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_a_body_model_field_counts_the_request_in_flight_for_that_model(twin_app, images, form, monkeypatch):
    from imgclf.service.dataplane.extension import current_plane

    plane = current_plane(twin_app)
    seen, infer = [], plane.infer

    def spy(served, request):
        seen.append((plane.in_flight.count("twin"), plane.in_flight.count("shapes")))
        return infer(served, request)

    monkeypatch.setattr(plane, "infer", spy)
    assert _post_naming(twin_app.test_client(), form, images["stripes"], "twin").status_code == 200
    assert seen == [(1, 0)] and plane.in_flight.count("twin") == 0


def test_get_is_405(client):
    response = client.get("/predict")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]


def test_503_while_the_models_load(model_repo, images, monkeypatch):
    from imgclf.service.servables import image as registry_module

    release = threading.Event()
    real_load = registry_module.load_model

    def slow_load(*args, **kwargs):
        release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(registry_module, "load_model", slow_load)
    app = create_app({"model_repository": model_repo})  # loads in the background
    try:
        response = _post(app.test_client(), "raw", images["bubbles"])
        assert response.status_code == 503 and "loading" in response.get_json()["error"]
        assert response.headers["Retry-After"] == "1"
    finally:
        release.set()
        app.extensions["imgclf.models"].wait(60)
        app.extensions["imgclf.models"].close()


@pytest.mark.parametrize("value, expected", [
    ("aGVsbG8=", b"hello"), ("aGVsbG8", b"hello"), ("aGVs\nbG8=\n", b"hello"),
    ("data:image/jpeg;base64,aGVsbG8=", b"hello"), ("-_8=", b"\xfb\xff"), ("+/8=", b"\xfb\xff"),
])
def test_decode_b64_accepts_common_spellings(value, expected):
    assert decode_b64(value) == expected


@pytest.mark.parametrize("value", ["a", "a===", "ab$d", None, ["aGVsbG8="]])
def test_decode_b64_refuses_what_is_not_base64(value):
    with pytest.raises(BadRequest):
        decode_b64(value)


def test_parameter_parsers():
    assert parse_top_k(None, 4, 5) == 4 and parse_top_k(None, 10, 5) == 5 and parse_top_k(" 2 ", 4, 5) == 2
    assert parse_bool("False", "annotate") is False and parse_bool(1, "annotate") is True
    assert parse_bool(None, "annotate", default=True) is True
    with pytest.raises(BadRequest, match="between 1 and 4"):
        parse_top_k(-1, 4, 5)
    with pytest.raises(BadRequest, match="annotate must be"):
        parse_bool(2, "annotate")


def test_a_multipart_body_at_the_part_limit_is_served(client):
    response = client.post("/predict", data=many_parts(100), content_type="multipart/form-data; boundary=B")
    assert response.status_code == 200, response.get_data(as_text=True)
