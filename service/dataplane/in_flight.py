"""Count the prediction requests in flight in one worker, by model: a batcher stops waiting at that many."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from imgclf.core.errors import ImgclfError
from imgclf.service.protocols.predict.request import requested_model


class InFlight:
    """The number of prediction requests being handled now, by model name."""

    PREDICT_ENDPOINTS = ("predict.predict", "tfserving.predict", "v2.infer")

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, model: str) -> int:
        """Return the number of prediction requests for ``model`` being handled now."""
        return self._counts.get(model, 0)

    def init_app(self, app: Flask, default_name: Callable[[], str | None]) -> None:
        """Count requests to the prediction routes from start to teardown (errors included), by model name.

        ``default_name`` returns the model a request naming none goes to (None while there is none).
        """

        @app.before_request
        def _enter():
            if request.endpoint not in self.PREDICT_ENDPOINTS:
                return
            try:
                name = (request.view_args or {}).get("name") or requested_model(request) or default_name()
            except (ImgclfError, HTTPException):  # a bad body or no model served: the view answers that
                return
            if name:
                with self._lock:
                    self._counts[name] = self._counts.get(name, 0) + 1
                g.imgclf_in_flight = name

        @app.teardown_request
        def _leave(exc):
            name = g.pop("imgclf_in_flight", None)
            if name is not None:
                with self._lock:
                    self._counts[name] -= 1
                    if not self._counts[name]:
                        del self._counts[name]  # names come from requests: keep the dict small
