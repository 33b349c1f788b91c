"""POST /predict: the top-k labels of one image, optionally with the image annotated.

The image comes as multipart field "image", a raw image body, or JSON
``{"b64": ...}``; ``model``, ``top_k``, ``annotate`` and ``unfamiliar_threshold``
come from the query string, else from the JSON body's (or the multipart form's)
fields: the query string wins when both name one. The answer says whether the
image is unfamiliar (its ``unfamiliar_score`` above the threshold used, which it
names too). With ``Accept: image/jpeg`` the answer is the annotated JPEG itself.
"""

from __future__ import annotations

import base64
import time

from flask import Blueprint, Response, jsonify, request

from imgclf.service.app_settings import current_config
from imgclf.service.dataplane.annotate import annotate_to_jpeg
from imgclf.service.dataplane.extension import current_plane
from imgclf.service.dataplane.plane import THRESHOLD_PARAMETER, InferenceRequest
from imgclf.service.protocols.predict.answer import answer_body, best_labels, image_classifier, unfamiliar_fields
from imgclf.service.protocols.predict.request import (
    image_from_request,
    parse_bool,
    parse_top_k,
    request_param,
    requested_model,
)

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict():
    """Answer the top-k labels of the posted image (JSON), or the annotated image (JPEG)."""
    started = time.perf_counter()
    config = current_config()
    plane = current_plane()
    # The whole request runs inside the lease: the version stays loaded and the request counts in flight (a
    # batch gathering now waits for it) until its answer is made.
    with plane.model(requested_model(request)) as served:
        image_classifier(served)
        data = image_from_request(request)
        k = parse_top_k(request_param(request, "top_k"), len(served.labels), config.top_k)
        as_jpeg = _wants_jpeg()
        annotate = parse_bool(request_param(request, "annotate"), "annotate") or as_jpeg
        threshold = request_param(request, THRESHOLD_PARAMETER)
        # The decoded picture is kept only to draw on: without annotation no RGB copy is made.
        answer = plane.infer(served, InferenceRequest([data], keep_pictures=annotate, one_picture=True,
                                                      unfamiliar_threshold=threshold))
        return _answer(served, answer, k, annotate, as_jpeg, started)


def _answer(served, answer, k: int, annotate: bool, as_jpeg: bool, started: float) -> Response:
    """Return the top-k labels (JSON, with the annotated image if asked) or the annotated JPEG itself."""
    best = best_labels(served, answer, k)
    jpeg = None
    if annotate:
        unfamiliar = unfamiliar_fields(answer).get("unfamiliar")
        jpeg = annotate_to_jpeg(answer.pictures[0], best[0]["label"], best[0]["score"], current_config().font or None,
                                unfamiliar_of=len(served.labels) if unfamiliar else None)
    if as_jpeg:
        response = Response(jpeg, mimetype="image/jpeg")
    else:
        body = answer_body(served, answer, best, started)
        if jpeg is not None:
            body["annotated_image"] = base64.b64encode(jpeg).decode("ascii")
        response = jsonify(body)
    response.vary.add("Accept")  # the same URL answers JSON or JPEG: caches must key on Accept
    return response


def _wants_jpeg() -> bool:
    """Return whether the client prefers image/jpeg to JSON (``*/*`` and no Accept mean JSON)."""
    return request.accept_mimetypes.best_match(["application/json", "image/jpeg"]) == "image/jpeg"
