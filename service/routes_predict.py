"""POST /predict: the top-k labels of one image, optionally with the image annotated.

The image comes as multipart field "image", a raw image body, or JSON
``{"b64": ...}``; ``model``, ``top_k`` and ``annotate`` come from the query
string, which overrides the JSON body's (or the multipart form's) fields.
With ``Accept: image/jpeg`` the answer is the annotated JPEG itself.
"""

from __future__ import annotations

import base64
import time

from flask import Blueprint, Response, current_app, jsonify, request

from imgclf.service.annotate import annotate_to_jpeg
from imgclf.service.errors import BadRequest
from imgclf.service.postprocess import top_k
from imgclf.service.request_input import image_from_request, parse_bool, parse_top_k, request_param

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict():
    """Answer the top-k labels of the posted image (JSON), or the annotated image (JPEG)."""
    from imgclf.service.app import config_of, registry_of

    started = time.perf_counter()
    config = config_of(current_app)
    served = registry_of(current_app).get(request.args.get("model") or None)
    if served.kind == "regression":
        raise BadRequest(f"model {served.name!r} is a regression model (x in, y out), not an image classifier; "
                         f'send {{"instances": [[x], ...]}} to /v1/models/{served.name}:predict')
    data = image_from_request(request)
    k = parse_top_k(request_param(request, "top_k"), len(served.labels), config.top_k)
    as_jpeg = _wants_jpeg()
    annotate = parse_bool(request_param(request, "annotate"), "annotate") or as_jpeg

    decoding = time.perf_counter()
    rgb, inputs = served.preprocess(data)
    decoded = time.perf_counter()
    probabilities = served.predict_inputs(inputs[None])[0]
    predicted = time.perf_counter()
    best = top_k(probabilities, served.labels, k)
    jpeg = annotate_to_jpeg(rgb, best[0]["label"], best[0]["score"], config.font or None) if annotate else None

    if as_jpeg:
        response = Response(jpeg, mimetype="image/jpeg")
    else:
        body = {"model": served.name, "version": served.version, "predictions": best,
                "timing_ms": {"decode": _ms(decoded - decoding), "predict": _ms(predicted - decoded),
                              "total": _ms(time.perf_counter() - started)}}
        if jpeg is not None:
            body["annotated_image"] = base64.b64encode(jpeg).decode("ascii")
        response = jsonify(body)
    response.vary.add("Accept")  # the same URL answers JSON or JPEG: caches must key on Accept
    return response


def _wants_jpeg() -> bool:
    """Return whether the client prefers image/jpeg to JSON (``*/*`` and no Accept mean JSON)."""
    return request.accept_mimetypes.best_match(["application/json", "image/jpeg"]) == "image/jpeg"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
