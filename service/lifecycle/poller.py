"""The repository poller: one thread per worker that brings the loaded versions in step with the disk.

Every ``IMGCLF_POLL_SECONDS`` (as TF Serving's ``file_system_poll_wait_seconds``)
it calls the manager's ``sync``; while a loaded version waits for the other
workers before it becomes the default, it looks again every
:data:`PENDING_POLL_S`, for at most :data:`PENDING_AT_MOST_S`. While the
worker's start has failed, it tries the start again after the manager's backoff
(``retry_wait``: 1 s, doubling up to ``IMGCLF_POLL_SECONDS``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)

PENDING_POLL_S = 0.25  # while a loaded version waits for the other workers, look again this often
PENDING_AT_MOST_S = 120.0  # ... for so long (a worker that failed to load it never will have it)


class Syncable(Protocol):
    """What the poller drives: one ``poll`` at a time, and whether a version waits for the other workers."""

    pending: bool
    pending_since: float

    def poll(self) -> None: ...

    def retry_wait(self) -> float | None: ...


class Poller:
    """Call ``manager.poll()`` every ``seconds`` (sooner while a start is retried) in a daemon thread until
    :meth:`stop`."""

    def __init__(self, manager: Syncable, seconds: float, where: object = ""):
        self.manager, self.seconds, self.where = manager, float(seconds), where
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start polling."""
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling; wait for a sync in progress (up to ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            wait = self.seconds
            if self.manager.pending and time.monotonic() - self.manager.pending_since < PENDING_AT_MOST_S:
                wait = min(wait, PENDING_POLL_S)
            retry = self.manager.retry_wait()
            if retry is not None:
                wait = min(wait, retry)
            if self._stop.wait(wait):
                return
            try:
                self.manager.poll()
            except Exception:  # a damaged repository must not stop the polling, nor what is served
                log.exception("polling the model repository %s failed", self.where)
