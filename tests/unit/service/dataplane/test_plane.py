"""The data plane's outputs of an image classifier, the same in every protocol (issue 23).

Calibrated float32 probabilities that sum to 1, the unfamiliar score, and the
flag: the score above a threshold, which is the export's, the one
``IMGCLF_UNFAMILIAR_TPR`` sets from the export's validation scores, or the
request's own ``unfamiliar_threshold``. The references are computed apart from
the service: the exported model called directly (``LoadedModel.infer_inputs``),
and the thresholds from ``calibration.json`` read here.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct

import numpy as np
import pytest
from PIL import Image

from imgclf.core.errors import UsageError
from imgclf.service import create_app
from imgclf.service.dataplane.annotate import NOTICE_FILL
from imgclf.service.settings import Settings
from imgclf.training.classifier import load_model
from tests.support.images import encode

HEADER = "Inference-Header-Content-Length"
PROTOCOLS = ("predict", "tfserving-rows", "tfserving-columns", "v2-json", "v2-binary")


@pytest.fixture(scope="module")
def app(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def statistics(model_repo) -> dict:
    """What the export says of its detector: the threshold and the validation scores it was set from."""
    return json.loads((model_repo / "shapes" / "1" / "calibration.json").read_text())["unfamiliar"]


@pytest.fixture(scope="module")
def pictures(model_repo) -> dict[str, bytes]:
    """One photo of each class, and pictures of nothing the model knows: noise, a flat colour, a stripe texture."""
    root = model_repo.parent / "images"
    found = {path.parent.name: path.read_bytes() for path in sorted(root.glob("*/*.jpg"))[::8]}
    rng = np.random.default_rng(23)
    found["noise"] = encode(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), "PNG")
    found["flat"] = encode(np.full((90, 90, 3), (30, 140, 200), np.uint8), "PNG")
    found["texture"] = encode(np.tile(np.repeat(np.eye(2, dtype=np.uint8) * 255, 6, axis=1)[:, :, None],
                                      (60, 12, 3)), "JPEG")
    return found


@pytest.fixture(scope="module")
def reference(model_repo, pictures) -> dict[str, dict[str, np.ndarray]]:
    """Each picture's probabilities and score from the exported model loaded and called on its own."""
    model = load_model(model_repo / "shapes" / "1")
    return {name: {key: values[0] for key, values in model.infer_inputs(model.preprocess(data)[1][None]).items()}
            for name, data in pictures.items()}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def ask(client, protocol: str, data: bytes, threshold=None) -> dict:
    """Return one picture's {"probabilities" (label order), "unfamiliar", "unfamiliar_score"} through ``protocol``."""
    if protocol == "predict":
        query = {"top_k": 4} if threshold is None else {"top_k": 4, "unfamiliar_threshold": repr(threshold)}
        response = client.post("/predict", query_string=query, data=data, content_type="application/octet-stream")
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        by_label = {p["label"]: p["score"] for p in body["predictions"]}
        labels = client.get("/v1/models/shapes/metadata").get_json()["labels"]
        return {"probabilities": [by_label[label] for label in labels], "unfamiliar": body["unfamiliar"],
                "unfamiliar_score": body["unfamiliar_score"], "threshold": body["unfamiliar_threshold"]}
    extra = {} if threshold is None else {"unfamiliar_threshold": threshold}
    if protocol.startswith("tfserving"):
        rows = protocol == "tfserving-rows"
        body = {"instances" if rows else "inputs": [{"b64": b64(data)}], **extra}
        response = client.post("/v1/models/shapes:predict", json=body)
        assert response.status_code == 200, response.get_json()
        answer = response.get_json()
        return answer["predictions"][0] if rows else {key: values[0] for key, values in answer["outputs"].items()}
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1]}
    parameters = dict(extra)
    if protocol == "v2-json":
        response = client.post("/v2/models/shapes/infer",
                               json={"inputs": [{**tensor, "data": [b64(data)]}], "parameters": parameters})
    else:  # the binary extension both ways: the picture in, every output out
        blob = struct.pack("<I", len(data)) + data
        header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}],
                             "parameters": {**parameters, "binary_data_output": True}}).encode()
        response = client.post("/v2/models/shapes/infer", data=header + blob, headers={HEADER: str(len(header))},
                               content_type="application/octet-stream")
    assert response.status_code == 200, response.get_data()[:300]
    return _v2_outputs(response)


def _v2_outputs(response) -> dict:
    """Return a v2 answer's outputs by name (first entry), binary ones read here with struct."""
    body = response.get_data()
    length = response.headers.get(HEADER)
    header = json.loads(body if length is None else body[:int(length)])
    rest = b"" if length is None else body[int(length):]
    found = {}
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            values = output["data"]
        elif output["datatype"] == "BYTES":
            (n,) = struct.unpack_from("<I", rest)
            values, rest = [rest[4:4 + n].decode()], rest[size:]
        else:
            fmt = {"FP32": "f", "INT64": "q", "BOOL": "?"}[output["datatype"]]
            values, rest = list(struct.unpack(f"<{size // struct.calcsize(fmt)}{fmt}", rest[:size])), rest[size:]
        found[output["name"]] = values if output["name"] == "probabilities" else values[0]
    assert rest == b""
    return found


def validation_threshold(statistics: dict, tpr: float) -> float:
    """Halfway between the ceil(tpr·n)-th validation score and the next (the last score when that is all of them)."""
    scores = [float(v) for v in sorted(np.asarray(statistics["validation_scores"], np.float32))]
    count = min(max(math.ceil(tpr * len(scores)), 1), len(scores))
    return scores[-1] if count == len(scores) else (scores[count - 1] + scores[count]) / 2


def test_every_protocol_answers_the_same_probabilities_score_and_flag(client, pictures, reference, statistics):
    threshold = statistics["threshold"]
    # the export's, at its own rate (set from the float64 scores, kept as float32)
    assert threshold == pytest.approx(validation_threshold(statistics, statistics["tpr"]), rel=1e-6)
    flagged = {}
    for name, data in pictures.items():
        want = reference[name]
        answers = {protocol: ask(client, protocol, data) for protocol in PROTOCOLS}
        for protocol, answer in answers.items():
            probabilities = np.asarray(answer["probabilities"], np.float32)
            assert abs(float(probabilities.astype(np.float64).sum()) - 1.0) <= 1e-6, (name, protocol)
            np.testing.assert_allclose(probabilities, want["probabilities"], rtol=1e-5, atol=1e-6)
            assert answer["unfamiliar_score"] == pytest.approx(float(want["unfamiliar_score"]), abs=1e-5)
            assert type(answer["unfamiliar"]) is bool
            assert answer["unfamiliar"] == (answer["unfamiliar_score"] > threshold), (name, protocol)
        # Every protocol answers the very same float32 numbers for the same picture.
        assert len({json.dumps([a["probabilities"], a["unfamiliar_score"], a["unfamiliar"]])
                    for a in answers.values()}) == 1, name
        assert answers["predict"]["threshold"] == threshold
        flagged[name] = answers["predict"]["unfamiliar"]
    print(f"\nflagged unfamiliar by the test model (threshold {threshold:.4f}): {flagged}")


def test_the_request_threshold_sets_the_flag_in_every_protocol(client, pictures):
    data = pictures["noise"]
    score = ask(client, "predict", data)["unfamiliar_score"]
    for threshold, flag in ((score - 0.5, True), (score, False), (score + 0.5, False), (-1e30, True), (1e300, False)):
        for protocol in PROTOCOLS:
            answer = ask(client, protocol, data, threshold)
            assert (answer["unfamiliar"], answer["unfamiliar_score"]) == (flag, score), (protocol, threshold)
        assert ask(client, "predict", data, threshold)["threshold"] == threshold
    assert ask(client, "predict", data)["threshold"] != score + 0.5  # one request's threshold is not kept


@pytest.mark.parametrize("tpr", [0.5, 1.0])
def test_the_tpr_setting_moves_the_threshold_from_the_validation_scores(model_repo, pictures, statistics, tpr):
    threshold = validation_threshold(statistics, tpr)
    app = create_app({"model_repository": model_repo, "load_in_background": False, "unfamiliar_tpr": tpr})
    try:
        client = app.test_client()
        for name, data in pictures.items():
            for protocol in ("predict", "tfserving-rows", "v2-binary"):
                answer = ask(client, protocol, data)
                assert answer["unfamiliar"] == (answer["unfamiliar_score"] > threshold), (name, protocol)
            assert ask(client, "predict", data)["threshold"] == threshold
    finally:
        app.extensions["imgclf.models"].close()


@pytest.mark.parametrize("raw", ["0.95x", "1.5", "-0.1", "nan"])
def test_the_tpr_setting_refuses_what_is_not_a_rate(raw):
    with pytest.raises(UsageError, match="IMGCLF_UNFAMILIAR_TPR"):
        Settings.from_env({"IMGCLF_UNFAMILIAR_TPR": raw})


def test_the_annotated_image_carries_the_notice_when_flagged(client, pictures):
    data = pictures["sunsets"]
    score = ask(client, "predict", data)["unfamiliar_score"]
    bottoms = {}
    for threshold in (score - 1.0, score + 1.0):
        response = client.post("/predict", query_string={"unfamiliar_threshold": threshold},
                               data=data, content_type="image/jpeg", headers={"Accept": "image/jpeg"})
        assert response.status_code == 200 and response.mimetype == "image/jpeg"
        rgb = np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB")).astype(int)
        bottoms[threshold < score] = np.median(rgb[-2:].reshape(-1, 3), axis=0)
    assert np.abs(bottoms[True] - NOTICE_FILL[:3]).max() <= 20  # amber under the notice's text
    assert np.abs(bottoms[False] - NOTICE_FILL[:3]).max() > 20  # the photo itself
