"""The data plane: one protocol-neutral call from a request's instances to a model's named outputs.

Every protocol (``/predict``, TF Serving REST, the Open Inference Protocol)
translates its wire format into an :class:`InferenceRequest` and formats the
:class:`InferenceResponse`; what every prediction needs hangs here, once:

* readiness and the version lifecycle: the model version is leased from the
  :class:`~imgclf.service.lifecycle.manager.VersionManager` (503 while loading,
  404 unknown) and stays loaded until the call ends;
* in-flight counting, by model (a batcher stops waiting once every request in
  flight has joined it);
* the instance limit, then the pixel budgets (:class:`~imgclf.service.dataplane.budget.Budget`),
  checked on the encoded pictures' headers before any decoding;
* decoding by the servable, then prediction through its batcher;
* the unfamiliar-input flag: a request's own ``unfamiliar_threshold`` (checked before any
  decoding) replaces the model's, and the flag is computed again from the score;
* output selection, with one message for an output the model does not have.

Nothing here knows HTTP or JSON: an instance is ``bytes`` (one encoded
picture) or numbers (nested lists); outputs are numpy arrays.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.errors import BadRequest
from imgclf.core.values import short
from imgclf.service.dataplane.budget import Budget
from imgclf.service.dataplane.in_flight import InFlight
from imgclf.service.lifecycle.manager import VersionManager
from imgclf.service.servables.base import Servable, Signature

THRESHOLD_PARAMETER = "unfamiliar_threshold"  # the request parameter of every protocol that sets it


def parse_threshold(value) -> float:
    """Return a request's ``unfamiliar_threshold`` (a number, or a number's text) as a finite float.

    Raises:
        BadRequest: a boolean, a non-number, NaN or an infinity (the message shows what was received).
    """
    threshold = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an integer beyond float range
            threshold = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            threshold = float(value.strip())
    if threshold is None or not math.isfinite(threshold):
        raise BadRequest(f"{THRESHOLD_PARAMETER} must be a finite number (unfamiliar_score above it is flagged "
                         f"unfamiliar); received {short(value)}")
    return threshold


@dataclass
class InferenceRequest:
    """A prediction request, whatever protocol brought it."""

    instances: list  # one entry per batch row: bytes (an encoded picture) or numbers (nested lists, an array)
    signature: str | None = None  # None: serving_default
    outputs: list[str] | None = None  # the outputs to answer, in this order (None: every output)
    where: str = "the request"  # how the protocol names the instances in messages ('"instances"', "input 'x'")
    keep_pictures: bool = False  # every instance is a picture; answer the decoded RGB images too (annotation)
    # One picture, whose errors are its own (/predict): messages name no instance number.
    one_picture: bool = False
    # This request's threshold of unfamiliar_score, as received (a number, or its text from a query string or
    # a form); None: the model's. Checked by the data plane, before any decoding.
    unfamiliar_threshold: object = None


@dataclass
class InferenceResponse:
    """What a model answered: named outputs (one row per instance), and how long each stage took."""

    model: str
    version: int
    signature: Signature
    outputs: dict[str, np.ndarray]
    pictures: list[np.ndarray] | None = None  # uint8 RGB per instance, when the request kept them
    seconds: dict[str, float] = field(default_factory=dict)  # decode, predict
    # The threshold the unfamiliar flags were computed with (the request's, else the model's); None for a model
    # without an unfamiliar_score.
    unfamiliar_threshold: float | None = None


class DataPlane:
    """One worker's prediction path over its served models."""

    def __init__(self, models: VersionManager, budget: Budget, in_flight: InFlight, max_instances: int):
        self.models, self.budget, self.in_flight = models, budget, in_flight
        self.max_instances = int(max_instances)

    @contextlib.contextmanager
    def model(self, name: str | None = None, version: int | None = None, label: str | None = None
              ) -> Iterator[Servable]:
        """Lease a served model version for one prediction and count it in flight while the block runs.

        ``name`` None or "": the default model; ``version`` None: its default version; ``label``: the version
        the label points at.

        Raises:
            NotReady: models are loading, or failed to load (503).
            ModelNotFound: no such model, version or label (404).
        """
        with self.models.lease(name, version, label) as served, self.in_flight.counting(served.name):
            yield served

    def infer(self, served: Servable, request: InferenceRequest) -> InferenceResponse:
        """Decode the request's instances within the budgets, predict them, and return the outputs it asked for.

        Raises:
            BadRequest: no instances, too many, an unknown signature or output, values the model refuses
                (the message names the instance), or an unfamiliar_threshold that is not a finite number or is
                sent to a model without an unfamiliar_score.
            PayloadTooLarge: the pictures' headers claim more pixels than a request may decode (413).
            InvalidImage and its kinds (400, 413, 415): a picture that cannot be served.
            DecodeBusy: the worker's decode gate stayed full (503).
        """
        signature = served.signature(request.signature)
        self.check_count(len(request.instances), request.where)
        wanted = self._wanted(served, signature, request.outputs)
        override = self._threshold(served, signature, request.unfamiliar_threshold)
        started = time.perf_counter()
        pictures = [value for value in request.instances if isinstance(value, bytes)]
        with self.budget.admit(pictures):
            if request.keep_pictures:
                decoded = [served.decode_picture(value) for value in request.instances]
                rgb = [d[0] for d in decoded]
                batch = decoded[0][1][None] if len(decoded) == 1 else np.stack([d[1] for d in decoded])  # no copy
            elif request.one_picture and len(request.instances) == 1 and pictures:
                rgb, batch = None, served.decode_input(pictures[0])[None]
            else:
                rgb, batch = None, served.decode_batch(request.instances, signature)
        decoded_at = time.perf_counter()
        outputs = served.predict(batch, signature)
        predicted_at = time.perf_counter()
        threshold = None
        if names.UNFAMILIAR_SCORE_KEY in outputs:
            threshold = served.unfamiliar_threshold if override is None else override
            if override is not None:  # float64: any finite threshold, as sent (the model's are float32 values)
                scores = np.asarray(outputs[names.UNFAMILIAR_SCORE_KEY], dtype=np.float64)
                outputs = {**outputs, names.UNFAMILIAR_KEY: scores > override}
        if wanted is not None:
            outputs = {key: outputs[key] for key in wanted}
        return InferenceResponse(served.name, served.version, signature, outputs, rgb,
                                 {"decode": decoded_at - started, "predict": predicted_at - decoded_at}, threshold)

    def check_count(self, count: int, where: str) -> None:
        """Raise BadRequest unless 1 <= ``count`` <= the instance limit (before anything is read or decoded)."""
        if count < 1:
            raise BadRequest(f"{where} holds no instance; send at least one")
        if count > self.max_instances:
            raise BadRequest(f"{where} holds {count} items; at most {self.max_instances} are allowed per request")

    @staticmethod
    def _threshold(served: Servable, signature: Signature, value) -> float | None:
        """Return a request's unfamiliar threshold as a float (None: not given), refusing what is not a finite
        number and a model that answers no unfamiliar score."""
        if value is None:
            return None
        threshold = parse_threshold(value)
        if names.UNFAMILIAR_SCORE_KEY not in {spec.name for spec in signature.outputs}:
            raise BadRequest(f"model {served.name!r} answers no {names.UNFAMILIAR_SCORE_KEY}; "
                             f"{THRESHOLD_PARAMETER} applies to image classifiers only")
        return threshold

    @staticmethod
    def _wanted(served: Servable, signature: Signature, requested: list[str] | None) -> list[str] | None:
        """Return the output names to answer, checked against the signature's outputs (None: every output)."""
        names = [spec.name for spec in signature.outputs]
        if requested is None:
            return None
        for name in requested:
            if name not in names:
                raise BadRequest(f"model {served.name!r} has no output {name[:60]!r}; its outputs: {', '.join(names)}")
        return list(requested)
