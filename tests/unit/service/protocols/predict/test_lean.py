"""The lean /predict path: the same answers as Flask's view, for the requests it takes and for those it leaves.

The reference is the same app built with ``lean_predict`` off: every request
below is sent to both, and status, headers and body must agree (the body's
timings aside); ``LeanPredict.answered`` says which path took it. The strict
multipart reader is checked against werkzeug's parser, field by field.
"""

import io
import random
import shutil

import pytest
from werkzeug.formparser import parse_form_data
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from imgclf.service import create_app
from imgclf.service.metrics import current_metrics
from imgclf.service.protocols.predict.lean import EXTENSION, MAX_PARTS, Fallback, multipart_fields, query_values
from tests.support.images import jpeg

SHAPES = ["bubbles", "checkers", "stripes", "sunsets"]


@pytest.fixture(scope="module")
def repo(model_repo, tmp_path_factory):
    """Two image classifiers: "shapes" (the default) and "twin", a copy of it."""
    repo = tmp_path_factory.mktemp("lean") / "models"
    shutil.copytree(model_repo / "shapes", repo / "shapes")
    shutil.copytree(model_repo / "shapes", repo / "twin")
    return repo


def _app(repo, **overrides):
    return create_app({"model_repository": repo, "load_in_background": False, **overrides})


@pytest.fixture(scope="module")
def apps(repo):
    """(lean, reference): the same repository with the lean path on and off."""
    lean, flask = _app(repo), _app(repo, lean_predict=False)
    yield lean, flask
    for app in (lean, flask):
        app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def image(model_repo) -> bytes:
    return sorted((model_repo.parent / "images" / "stripes").glob("*.jpg"))[0].read_bytes()


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und4ry") -> tuple[bytes, str]:
    """A multipart body of (name, filename or None, content) parts, as browsers and requests write them."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += (b"Content-Type: image/jpeg\r\n" if filename is not None else b"") + b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _send(app, body: bytes, content_type: str | None, query: str = "", headers: dict | None = None):
    """POST /predict to ``app``; return (status, headers without Content-Length, JSON or bytes, whether the lean
    path answered)."""
    lean = app.extensions.get(EXTENSION)
    before = lean.answered if lean else 0
    kwargs = {"data": body, "query_string": query, "headers": headers or {}}
    if content_type is not None:
        kwargs["content_type"] = content_type
    response = app.test_client().post("/predict", **kwargs)
    data = response.get_data()
    assert int(response.headers.get("Content-Length", len(data))) == len(data)
    fields = [(k, v) for k, v in response.headers.items() if k != "Content-Length"]
    payload = response.get_json() if response.is_json else data
    if isinstance(payload, dict):
        payload.pop("timing_ms", None)
    return response.status_code, fields, payload, (lean.answered if lean else 0) > before


def _both(apps, *args, **kwargs):
    lean_app, flask_app = apps
    got, expected = _send(lean_app, *args, **kwargs), _send(flask_app, *args, **kwargs)
    assert got[:3] == expected[:3]
    return got


def test_the_lean_path_answers_what_flask_answers(apps, image):
    """Every common request, as multipart (with its fields) or a raw body, with query parameters."""
    cases = [
        (*_multipart([("image", "photo.jpg", image)]), ""),
        (*_multipart([("image", "photo.jpg", image)]), "top_k=2"),
        (*_multipart([("image", "", image), ("top_k", None, b"3"), ("model", None, b"twin")]), ""),
        (*_multipart([("model", None, b"twin"), ("image", "x", image)]), "model=shapes&top_k=4"),
        (*_multipart([("image", "a.jpg", image), ("model", None, b"")]), "model="),  # blank: the default model
        (*_multipart([("image", "a.jpg", image), ("unfamiliar_threshold", None, b"0.5")]), ""),
        (*_multipart([("image", "a.jpg", image), ("annotate", None, b"false")]), "annotate=0"),
        (*_multipart([("image", "a.jpg", image), ("note", None, "é ü".encode())], boundary="----WebKitForm9x"), ""),
        (image, "image/jpeg", "top_k=1&unfamiliar_threshold=100000&top_k=3"),
        (image, "application/octet-stream", "model=twin"),
        (image, "image/jpeg; charset=binary", ""),
    ]
    for body, content_type, query in cases:
        for accept in (None, "*/*", "application/json"):
            status, _, answer, lean = _both(apps, body, content_type, query, {"Accept": accept} if accept else {})
            assert status == 200 and lean, (query, answer)
            assert answer["predictions"][0]["label"] in SHAPES


@pytest.mark.parametrize("case", [
    "annotate", "accept-jpeg", "json", "origin", "sec-fetch", "chunked", "escaped-query", "lf-only", "extra-header",
    "too-many-parts", "text-image", "no-image", "bad-top-k", "unknown-model", "corrupt", "empty", "text/plain",
    "filename*", "long-text", "threshold-nan",
])
def test_what_the_lean_path_leaves_gets_flasks_answer(apps, image, case):
    body, content_type = _multipart([("image", "a.jpg", image)])
    query, headers = "", {}
    if case == "annotate":
        query = "annotate=true"
    elif case == "accept-jpeg":
        headers = {"Accept": "image/jpeg"}
    elif case == "json":
        body, content_type = b'{"b64": "aGVsbG8="}', "application/json"
    elif case == "origin":
        headers = {"Origin": "http://localhost"}
    elif case == "sec-fetch":
        headers = {"Sec-Fetch-Site": "same-origin"}
    elif case == "chunked":
        headers = {"Transfer-Encoding": "chunked"}
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    elif case == "escaped-query":
        query = "model=%74win"
    elif case == "lf-only":
        body = body.replace(b"\r\n--b0und4ry--", b"\n--b0und4ry--")
    elif case == "extra-header":
        body = body.replace(b"Content-Type: image/jpeg", b"Content-Type: image/jpeg\r\nX-Note: 1")
    elif case == "too-many-parts":
        body, content_type = _multipart([("image", "a.jpg", image)] + [(f"f{i}", None, b"x") for i in range(MAX_PARTS)])
    elif case == "text-image":
        body, content_type = _multipart([("image", None, b"photo.jpg")])
    elif case == "no-image":
        body, content_type = _multipart([("photo", "a.jpg", image)])
    elif case == "bad-top-k":
        query = "top_k=9"
    elif case == "unknown-model":
        query = "model=nope"
    elif case == "corrupt":
        body, content_type = _multipart([("image", "a.jpg", image[:2000])])
    elif case == "empty":
        body, content_type = b"", "image/jpeg"
    elif case == "text/plain":
        content_type = "text/plain"
    elif case == "filename*":
        body = body.replace(b'filename="a.jpg"', b"filename*=UTF-8''a.jpg")
    elif case == "long-text":
        body, content_type = _multipart([("image", "a.jpg", image), ("note", None, b"x" * 5000)])
    elif case == "threshold-nan":
        query = "unfamiliar_threshold=nan"
    status, _, answer, lean = _both(apps, body, content_type, query, headers)
    assert not lean, (status, answer)


def test_cors_origins_add_vary_origin_as_flask_does(repo, image):
    apps = (_app(repo, cors_origins="https://app.example"), _app(repo, cors_origins="https://app.example",
                                                                 lean_predict=False))
    try:
        status, fields, _, lean = _both(apps, *_multipart([("image", "a.jpg", image)]))
        assert status == 200 and lean and ("Vary", "Accept, Origin") in fields
    finally:
        for app in apps:
            app.extensions["imgclf.models"].close()


def test_a_host_outside_the_allowed_hosts_gets_flasks_400(repo, image):
    apps = (_app(repo, allowed_hosts="api.example"), _app(repo, allowed_hosts="api.example", lean_predict=False))
    try:
        body, content_type = _multipart([("image", "a.jpg", image)])
        status, _, _, lean = _both(apps, body, content_type, headers={"Host": "api.example:8000"})
        assert status == 200 and lean
        status, _, answer, lean = _both(apps, body, content_type, headers={"Host": "evil.example"})
        assert status == 400 and not lean and "IMGCLF_ALLOWED_HOSTS" in answer["error"]
    finally:
        for app in apps:
            app.extensions["imgclf.models"].close()


def test_with_api_keys_every_request_goes_through_flask(repo, image, tmp_path):
    keys = tmp_path / "keys"
    from imgclf.service.access.api_keys import key_line

    keys.write_text(key_line("ci", "secret-key-0123456789") + "\n")
    app = _app(repo, api_keys_file=str(keys))
    try:
        assert EXTENSION not in app.extensions
        body, content_type = _multipart([("image", "a.jpg", image)])
        assert _send(app, body, content_type)[0] == 401
        assert _send(app, body, content_type, headers={"X-API-Key": "secret-key-0123456789"})[0] == 200
    finally:
        app.extensions["imgclf.models"].close()


def _samples(app, name: str) -> dict:
    registry = current_metrics(app).registry
    return {tuple(sorted(s.labels.items())): s.value for m in registry.collect() for s in m.samples
            if s.name == name}


def test_the_request_metrics_count_lean_answers_as_flask_counts_them(repo, image):
    apps = (_app(repo), _app(repo, lean_predict=False))
    try:
        body, content_type = _multipart([("image", "a.jpg", image)])
        for query in ("", "top_k=2", "top_k=9", "model=nope"):
            _both(apps, body, content_type, query)
        counted = [_samples(app, "imgclf_requests_total") for app in apps]
        assert counted[0] == counted[1] and counted[0][(("method", "POST"), ("route", "/predict"),
                                                         ("status", "200"))] == 2
        timed = [_samples(app, "imgclf_request_seconds_count") for app in apps]
        assert timed[0] == timed[1]
    finally:
        for app in apps:
            app.extensions["imgclf.models"].close()


def _werkzeug(body: bytes, content_type: str) -> tuple[dict, dict]:
    environ = EnvironBuilder(method="POST", input_stream=io.BytesIO(body), content_type=content_type,
                             content_length=len(body)).get_environ()
    _, form, files = parse_form_data(environ)
    return ({name: files[name].read() for name in files}, {name: form[name] for name in form})


def test_the_multipart_reader_agrees_with_werkzeug_or_steps_aside():
    """Bodies in many shapes, and random byte edits of them: the reader's fields are werkzeug's, or it refuses."""
    rng = random.Random(33)
    picture = jpeg(3, size=(24, 16))
    bodies = [
        _multipart([("image", "a.jpg", picture)]),
        _multipart([("image", "a.jpg", picture), ("top_k", None, b"2"), ("model", None, "modèle".encode())]),
        _multipart([("top_k", None, b"1"), ("image", "", picture), ("image", "b.jpg", b"second")], boundary="x"),
        _multipart([("a", None, b""), ("image", "a.jpg", b"\r\n--not-the-boundary\r\n")], boundary="q-1.2_3"),
        (_multipart([("image", "q.jpg", picture)], boundary="B b")[0], 'multipart/form-data; boundary="B b"'),
    ]
    taken = 0
    for body, content_type in bodies:
        variants = [body] + [_edit(rng, body) for _ in range(150)]
        for variant in variants:
            try:
                got = multipart_fields(variant, content_type)
            except Fallback:
                continue
            assert got == _werkzeug(variant, content_type), variant[:200]
            taken += 1
    assert taken > 200  # most edits touch the content, which both read alike


def _edit(rng: random.Random, body: bytes) -> bytes:
    """``body`` with one random edit: a byte changed, inserted or deleted, or a CR, LF or dash put somewhere."""
    at = rng.randrange(len(body))
    kind = rng.randrange(4)
    if kind == 0:
        return body[:at] + bytes([rng.randrange(256)]) + body[at + 1:]
    if kind == 1:
        return body[:at] + rng.choice([b"\r", b"\n", b"-", b'"', b";", b" "]) + body[at:]
    if kind == 2:
        return body[:at] + body[at + 1:]
    return body[:at] + rng.choice([b"\r\n", b"--", b"\r\n--"]) + body[at:]


@pytest.mark.parametrize("content_type", [
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; charset=utf-8; boundary=B",
    "multipart/mixed; boundary=B", "multipart/form-data; boundary=" + "b" * 71,
])
def test_content_types_the_reader_leaves_to_werkzeug(content_type):
    with pytest.raises(Fallback):
        multipart_fields(_multipart([("image", "a.jpg", b"x")], boundary="B")[0], content_type)


def test_query_values_are_werkzeugs_for_plain_queries():
    for query in ("", "top_k=2", "top_k=2&top_k=3", "a&b=&c=1=2", "&&model=twin&", "x.y-z_1=ok"):
        args = Request(EnvironBuilder(query_string=query).get_environ()).args
        assert query_values(query) == {name: args.get(name) for name in args}
    for query in ("model=%74win", "a+b=1", "a=b c", "a=é"):
        with pytest.raises(Fallback):
            query_values(query)


def _wsgi(app, environ: dict) -> tuple[str, bytes]:
    """Call ``app``'s WSGI callable on a copy of ``environ``; return the status line and the body."""
    answer = {}
    body = b"".join(app.wsgi_app(dict(environ, **{"wsgi.input": io.BytesIO(environ["wsgi.input"].getvalue())}),
                                 lambda status, headers, exc_info=None: answer.setdefault("status", status)))
    return answer["status"], body


def test_a_body_shorter_than_its_content_length_gets_flasks_answer(apps, image):
    """A client that sends less than it declared and stops: the server hands on what came (as gunicorn does)."""
    environ = EnvironBuilder(path="/predict", method="POST", data=image[:1000], content_type="image/jpeg",
                             headers={"Host": "localhost"}).get_environ()
    environ.update({"CONTENT_LENGTH": "50000", "wsgi.input_terminated": True})
    lean, flask = apps
    before = lean.extensions[EXTENSION].answered
    got, expected = _wsgi(lean, environ), _wsgi(flask, environ)
    assert got == expected and got[0].startswith("400") and b"truncated" in got[1]
    assert lean.extensions[EXTENSION].answered == before


def test_an_error_met_after_the_lease_is_flasks_answer_without_running_the_request_again(apps, image, monkeypatch):
    """A picture that fails to decode: Flask renders the lean path's error; the picture is decoded once."""
    from imgclf.service.dataplane.extension import current_plane

    lean_app = apps[0]
    plane = current_plane(lean_app)
    calls, infer = [], plane.infer

    def counted(served, request):
        calls.append(request)
        return infer(served, request)

    monkeypatch.setattr(plane, "infer", counted)
    status, _, answer, lean = _both(apps, *_multipart([("image", "a.jpg", image[:2000])]), "top_k=2")
    assert (status, lean, len(calls)) == (400, False, 1) and "corrupt" in answer["error"]
    status, _, answer, _ = _both(apps, *_multipart([("image", "a.jpg", image)]), "top_k=9")
    assert status == 400 and len(calls) == 1  # refused before the model: no inference at all
