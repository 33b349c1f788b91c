"""What ``POST /predict`` answers for one picture, whichever path served it (Flask's view or the lean path).

Both paths call :func:`image_classifier` on the leased model and build the JSON
answer with :func:`answer_body`, so the two cannot drift apart.
"""

from __future__ import annotations

import math
import time

from imgclf.core import export_names as names
from imgclf.core.errors import BadRequest
from imgclf.service.dataplane.plane import InferenceResponse
from imgclf.service.dataplane.postprocess import top_k


def image_classifier(served) -> None:
    """Refuse a model that takes no pictures (a regression model answers on its TF Serving route).

    Raises:
        BadRequest: the model is not an image classifier; the message names the route it answers on.
    """
    if not served.takes_pictures:
        raise BadRequest(f"model {served.name!r} is a regression model (x in, y out), not an image classifier; "
                         f'send {{"instances": [[x], ...]}} to /v1/models/{served.name}:predict')


def best_labels(served, answer: InferenceResponse, k: int) -> list[dict]:
    """Return the picture's ``k`` best ``{"label", "score"}``, best first."""
    return top_k(answer.outputs[names.PROBABILITIES_KEY][0], served.labels, k)


def unfamiliar_fields(answer: InferenceResponse) -> dict:
    """Return the picture's unfamiliar flag, its score and the threshold used (null when nothing is flagged), or
    {} for a model without them."""
    if names.UNFAMILIAR_SCORE_KEY not in answer.outputs:
        return {}
    threshold = answer.unfamiliar_threshold
    return {"unfamiliar": bool(answer.outputs[names.UNFAMILIAR_KEY][0]),
            "unfamiliar_score": float(answer.outputs[names.UNFAMILIAR_SCORE_KEY][0]),
            "unfamiliar_threshold": float(threshold) if threshold is not None and math.isfinite(threshold) else None}


def answer_body(served, answer: InferenceResponse, best: list[dict], started: float) -> dict:
    """Return the JSON answer (without ``annotated_image``): model, version, predictions, unfamiliar fields and
    the timings in milliseconds (``total`` since ``started``, a ``time.perf_counter()``)."""
    return {"model": served.name, "version": served.version, "predictions": best, **unfamiliar_fields(answer),
            "timing_ms": {"decode": _ms(answer.seconds["decode"]), "predict": _ms(answer.seconds["predict"]),
                          "total": _ms(time.perf_counter() - started)}}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
