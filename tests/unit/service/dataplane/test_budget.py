"""Work budgets: pixels per request from the headers (413 before any decoding), and the decode gate."""

import base64
import io
import json
import struct
import threading
import time
import zlib

import pytest
from PIL import Image, ImageFile
from prometheus_client.parser import text_string_to_metric_families

from imgclf.core.errors import ImageTooLarge
from imgclf.featurizer.images.decode import jpeg_scans
from imgclf.service import create_app
from imgclf.service.dataplane.budget import Budget, DecodeBusy, DecodeGate, header_pixels
from imgclf.service.dataplane.extension import current_plane

MAX_REQUEST_PIXELS = 1_000_000


def png(width: int, height: int) -> bytes:
    """A one-colour PNG: a few KB that decode to width × height."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 40)).save(out, "PNG", optimize=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def app(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False,
                      "max_request_pixels": MAX_REQUEST_PIXELS, "max_decode_pixels_in_flight": 2_000_000,
                      "decode_wait_seconds": 0.3})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture()
def decodes(app, monkeypatch):
    """Count the images the served model decodes."""
    served = app.extensions["imgclf.models"].get("shapes")
    calls = []
    for name in ("decode_picture", "decode_input"):  # with the RGB (annotation), or the network input alone
        original = getattr(served, name)
        monkeypatch.setattr(served, name, lambda data, original=original: calls.append(len(data)) or original(data))
    return calls


def test_header_pixels_reads_only_the_header(monkeypatch):
    data = png(7000, 7000)
    assert len(data) < 300_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    assert header_pixels(data) == 49_000_000
    assert header_pixels(b"not an image") == 0 and header_pixels(b"") == 0


def test_gate_weighs_pixels_and_lets_small_decodes_beside_a_large_one():
    gate = DecodeGate(100, wait_seconds=5)
    entered = []
    with gate.hold(80):
        with gate.hold(20):  # fits beside: does not wait
            entered.append("small")
        assert gate.in_use == 80

        def big():
            with gate.hold(30):
                entered.append("big")

        waiter = threading.Thread(target=big)
        waiter.start()
        waiter.join(0.3)
        assert entered == ["small"] and waiter.is_alive()  # 80 + 30 > 100: waits
    waiter.join(5)
    assert entered == ["small", "big"] and gate.in_use == 0


def test_gate_runs_an_image_above_its_capacity_alone_and_times_out_others():
    gate = DecodeGate(100, wait_seconds=0.2)
    with gate.hold(10**9):
        assert gate.in_use == 100  # capped: it runs, alone
        with pytest.raises(DecodeBusy, match="waited 0.2 s"):
            with gate.hold(1):
                pass
    assert gate.in_use == 0
    with DecodeGate(0, 0).hold(10**9):  # capacity 0: no gate
        pass


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_tf_serving_request_over_the_budget_is_413_before_any_decoding(app, decodes):
    client = app.test_client()
    small = png(600, 600)  # 360,000 pixels: two fit, three do not
    response = client.post("/v1/models/shapes:predict", json={"instances": [b64(small)] * 3})
    assert response.status_code == 413, response.get_json()
    assert response.get_json()["error"] == ("the request's 3 image(s) decode to 1,080,000 pixels; at most "
                                            "1,000,000 are allowed per request")
    assert decodes == []
    response = client.post("/v1/models/shapes:predict", json={"instances": [b64(small)] * 2})
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == 2
    assert len(decodes) == 2


def test_v2_json_and_binary_requests_are_budgeted(app, decodes):
    client = app.test_client()
    big = png(1200, 1000)
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(big).decode()]}]}
    response = client.post("/v2/models/shapes/infer", json=body)
    assert response.status_code == 413 and "1,200,000 pixels" in response.get_json()["error"]
    header = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": 2 * (4 + len(big))}}]}).encode()
    blob = b"".join(struct.pack("<I", len(big)) + big for _ in range(2))
    response = client.post("/v2/models/shapes/infer", data=header + blob, content_type="application/octet-stream",
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 413 and "2 image(s) decode to 2,400,000 pixels" in response.get_json()["error"]
    assert decodes == []


def test_predict_over_the_budget_is_413_and_bad_images_keep_their_own_error(app, decodes):
    client = app.test_client()
    response = client.post("/predict", data=png(1001, 1000), content_type="image/png")
    assert response.status_code == 413 and "1,001,000 pixels" in response.get_json()["error"]
    assert decodes == []
    response = client.post("/v1/models/shapes:predict", json={"instances": [{"b64": "!!"}, b64(b"junk")]})
    assert response.status_code == 400 and response.get_json()["error"].startswith("instance 0: b64 is not valid")


def test_an_image_over_the_per_image_limit_keeps_its_own_message(app, decodes):
    bomb = bytearray(png(8, 8))  # its header made to claim 10000×10000: over the per-image limit and the budget
    bomb[16:24] = struct.pack(">II", 10_000, 10_000)
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))
    bomb = bytes(bomb)
    response = app.test_client().post("/v1/models/shapes:predict", json={"instances": [b64(bomb)]})
    assert response.status_code == 413
    assert response.get_json()["error"] == ("instance 0: image is 10000×10000 = 100,000,000 pixels; "
                                            "the limit is 50,000,000")


def test_a_full_gate_answers_503_with_retry_after(app):
    gate = current_plane(app).budget.gate
    client = app.test_client()
    image = png(900, 900)
    started = time.monotonic()
    with gate.hold(gate.capacity):
        response = client.post("/predict", data=image, content_type="image/png")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "waited 0.3 s" in response.get_json()["error"] and time.monotonic() - started >= 0.3
    assert client.post("/predict", data=image, content_type="image/png").status_code == 200
    assert gate.in_use == 0


def test_gate_use_is_a_metric(app):
    gate = current_plane(app).budget.gate

    def in_flight() -> float:
        text = app.test_client().get("/metrics").get_data(as_text=True)
        return next(s.value for family in text_string_to_metric_families(text) for s in family.samples
                    if s.name == "imgclf_decode_pixels_in_flight")

    with gate.hold(12345):
        assert in_flight() == 12345
    assert in_flight() == 0


# --- progressive JPEG scans (issue 27, finding 8) -------------------------------------------------------------------


def progressive_jpeg(size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(out, "JPEG", progressive=True, quality=90)
    return out.getvalue()


def scans_by_segments(data: bytes) -> int:
    """Count SOS markers by walking the JPEG's segments and skipping entropy-coded data (the reference)."""
    at, scans = 2, 0
    while at < len(data):
        assert data[at] == 0xFF
        marker = data[at + 1]
        if marker == 0xD9:  # EOI
            return scans
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        at += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data until a marker that is neither 0xFF00 nor RSTn
            scans += 1
            while not (data[at] == 0xFF and data[at + 1] not in (0x00, *range(0xD0, 0xD8))):
                at += 1
    return scans


def many_scans(data: bytes, copies: int) -> bytes:
    """Repeat a progressive JPEG's last scan ``copies`` times (each one more pass of the decoder)."""
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * copies + b"\xff\xd9"


def test_jpeg_scans_are_counted_from_the_markers():
    data = progressive_jpeg()
    assert 5 <= jpeg_scans(data) == scans_by_segments(data)
    assert jpeg_scans(many_scans(data, 1000)) == scans_by_segments(many_scans(data, 1000)) == jpeg_scans(data) + 1000
    baseline = io.BytesIO()
    Image.new("RGB", (8, 8)).save(baseline, "JPEG")
    assert jpeg_scans(baseline.getvalue()) == scans_by_segments(baseline.getvalue()) == 1
    assert jpeg_scans(png(8, 8)) == 0 and jpeg_scans(b"") == 0


def test_scan_bytes_inside_other_segments_or_after_the_picture_are_not_scans():
    profiled = io.BytesIO()  # an ICC profile (APP2) that holds FF DA again and again, as a 5 MB real one did 79 times
    Image.effect_noise((32, 32), 40).convert("RGB").save(profiled, "JPEG", icc_profile=b"\xff\xda\x00\x10" * 5000)
    data = profiled.getvalue()
    assert data.count(b"\xff\xda") > 5000 and jpeg_scans(data) == scans_by_segments(data) == 1
    filled = data[:-2] + b"\xff\xff\xff\xd9"  # fill bytes before EOI
    assert jpeg_scans(filled) == 1
    appended = data + progressive_jpeg()  # what follows the first EOI (an MPO's next picture) is not decoded
    assert jpeg_scans(appended) == 1
    assert jpeg_scans(data[: data.rindex(b"\xff\xda") + 30]) == 1  # cut in its scan: counted as far as it goes
    assert jpeg_scans(data[:100]) == 0  # cut in the profile


@pytest.mark.parametrize("route", ["predict", "tfserving", "v2"])
def test_a_jpeg_with_more_scans_than_allowed_is_413_before_any_decoding(app, decodes, route):
    normal = progressive_jpeg()
    flood = many_scans(normal, 1000)
    client = app.test_client()

    def send(data: bytes):
        if route == "predict":
            return client.post("/predict", data=data, content_type="image/jpeg")
        b64 = base64.b64encode(data).decode()
        if route == "tfserving":
            return client.post("/v1/models/shapes:predict", json={"instances": [{"b64": b64}]})
        return client.post("/v2/models/shapes/infer", json={"inputs": [{"name": "image_bytes", "datatype": "BYTES",
                                                                        "shape": [1], "data": [b64]}]})

    response = send(flood)
    assert response.status_code == 413, response.get_data(as_text=True)
    assert f"the JPEG holds {jpeg_scans(flood):,} scans; at most 64 are decoded" in response.get_json()["error"]
    assert decodes == []
    assert send(normal).status_code == 200 and len(decodes) == 1  # an encoder's ~10 scans pass


def test_scans_times_pixels_are_bounded_too():
    budget = Budget(0, DecodeGate(0, 1), max_jpeg_scans=64, max_jpeg_scan_pixels=16 * 50_000_000)
    normal = progressive_jpeg()
    scans = jpeg_scans(normal)
    budget.check_scans([normal], [50_000_000])  # an encoder's scans at the largest size allowed
    budget.check_scans([many_scans(normal, 64 - scans)], [1_000_000])  # 64 scans of a small picture
    with pytest.raises(ImageTooLarge, match=r"holds 20 scans of 50,000,000 pixels; scans × pixels may be at most "
                                            r"800,000,000"):
        budget.check_scans([many_scans(normal, 20 - scans)], [50_000_000])
    with pytest.raises(ImageTooLarge, match="instance 1: the JPEG holds 65 scans; at most 64"):
        budget.check_scans([normal, many_scans(normal, 65 - scans)], [100, 100])
    Budget(0, DecodeGate(0, 1), max_jpeg_scans=0, max_jpeg_scan_pixels=0).check_scans(
        [many_scans(normal, 10_000)], [50_000_000])  # 0: off
