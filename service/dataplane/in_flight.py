"""Count the prediction requests in flight in one worker, by model: a batcher stops waiting at that many."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class InFlight:
    """The number of prediction requests being handled now, by model name."""

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, model: str) -> int:
        """Return the number of prediction requests for ``model`` being handled now."""
        return self._counts.get(model, 0)

    @contextlib.contextmanager
    def counting(self, model: str) -> Iterator[None]:
        """Count one request for ``model`` while the block runs (errors included)."""
        with self._lock:
            self._counts[model] = self._counts.get(model, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._counts[model] -= 1
                if not self._counts[model]:
                    del self._counts[model]  # keep the dict to the models being asked now
