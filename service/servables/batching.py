"""Gather concurrent requests of one worker into one model call.

Each request thread submits its preprocessed images and waits. A batching
thread takes the first waiting request, waits up to ``max_wait`` for more (or
until ``max_size`` images are gathered), runs the model once on the stacked
batch and hands every request its rows. Under concurrency the model sees
batches, which is where the featurizer's throughput comes from. The wait ends
early once every prediction request in flight in the worker has joined a batch
(the app counts them), so a lone request does not wait at all: it runs the
model on its own thread, without the hand-off to a batching thread and back
(while it runs, the requests that arrive are batched as usual). With batching
off, each request calls the model itself.

A caller may make its wait cancellable (:func:`cancellable`: gRPC does, for
a call whose client cancelled or whose deadline passed): a cancelled request
that no batch has taken yet leaves the queue, so it takes no place in a batch
and costs no model time.

``lanes`` batching threads may run batches at once (default one). A model
that runs a batch on several independent executors (OpenVINO's streams, one
per core) gets one lane per executor: while one batch finishes its
last images and its head, and while the next batch is gathered, the next one
already keeps the free executors busy instead of leaving them idle between
batches.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future

import numpy as np

log = logging.getLogger(__name__)

_STOP = object()


class Cancellation:
    """A request's way to give up waiting: :meth:`cancel` (from any thread) cancels what it waits for."""

    def __init__(self):
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self.cancelled = False

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` at cancellation (at once when already cancelled)."""
        with self._lock:
            if not self.cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self) -> None:
        """Cancel: run every callback once."""
        with self._lock:
            self.cancelled, callbacks, self._callbacks = True, self._callbacks, []
        for callback in callbacks:
            callback()


_cancellation: contextvars.ContextVar[Cancellation | None] = contextvars.ContextVar("imgclf_cancellation",
                                                                                 default=None)


@contextlib.contextmanager
def cancellable(cancellation: Cancellation) -> Iterator[Cancellation]:
    """Make the batched predictions this thread submits inside the block give up when ``cancellation`` fires.

    A request not yet taken into a batch then leaves the queue and its :meth:`Batcher.submit` raises
    :class:`concurrent.futures.CancelledError`; one already in a batch gets its rows as usual.
    """
    token = _cancellation.set(cancellation)
    try:
        yield cancellation
    finally:
        _cancellation.reset(token)


class Batcher:
    """Run ``run(batch) -> outputs`` on batches gathered from concurrent :meth:`submit` calls.

    ``outputs`` is an array or a dict of arrays, each with one row per input row.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_size: int = 32, max_wait: float = 0.005,
                 enabled: bool = True, on_batch: Callable[[int, float], None] | None = None, name: str = "model",
                 expected: Callable[[], int] | None = None, lanes: int = 1):
        if max_size < 1 or max_wait < 0 or lanes < 1:
            raise ValueError(f"max_size and lanes must be >= 1 and max_wait >= 0; received {max_size!r}, "
                             f"{lanes!r}, {max_wait!r}")
        self.run, self.max_size, self.max_wait, self.enabled = run, max_size, max_wait, enabled
        self.on_batch = on_batch  # called with (images in the batch, seconds the model took)
        # How many requests are in flight in this worker (None: unknown). A batch stops waiting as soon as
        # every in-flight request has joined it, so a lone request never waits for company that is not coming.
        self.expected = expected
        self.lanes = lanes
        self._queue: queue.Queue = queue.Queue()
        self._taken = 0  # requests in batches that lanes are running or gathering now
        self._taken_lock = threading.Lock()
        self._gather_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(lanes)  # model calls that may run at once
        self._closed = False
        self._closing_lock = threading.Lock()  # a submit puts its request in before close() starts, or fails
        self._threads: list[threading.Thread] = []
        if enabled:
            for lane in range(lanes):
                thread = threading.Thread(target=self._loop, name=f"batcher-{name}" + (f"-{lane}" if lane else ""),
                                          daemon=True)
                thread.start()
                self._threads.append(thread)

    def submit(self, inputs: np.ndarray) -> np.ndarray:
        """Return the model's outputs for ``inputs`` [k, ...], computed in a shared batch when enabled.

        Raises:
            CancelledError: the caller's :func:`cancellable` fired before a batch took the request.
        """
        cancellation = _cancellation.get()
        if cancellation is not None and cancellation.cancelled:
            raise CancelledError("the request was cancelled before its prediction")
        if not self.enabled:
            return self._call(inputs)
        if self._alone(len(inputs)):
            try:
                return self._call(inputs)  # nobody to wait for: no hand-off to a lane and back
            finally:
                with self._taken_lock:
                    self._taken -= len(inputs)
                self._slots.release()
        future: Future = Future()
        with self._closing_lock:
            if self._closed:
                raise RuntimeError("the model's batcher is closed")
            self._queue.put((inputs, future))
        if cancellation is not None:
            cancellation.on_cancel(future.cancel)  # succeeds only while no batch has taken it
        return future.result()

    def _alone(self, rows: int) -> bool:
        """Return whether the caller is the only request in flight and no batch is queued, running or gathering;
        if so, count its rows as taken (the caller runs them itself and gives them back)."""
        if self.expected is None or self._closed or not self._queue.empty():  # closed: submit says so
            return False
        with self._taken_lock:
            if self._taken or self.expected() > 1 or not self._slots.acquire(blocking=False):
                return False
            self._taken += rows
            return True

    def _call(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        out = self.run(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started)
        return out

    def _loop(self) -> None:
        while True:
            # One lane gathers at a time: requests arriving together go into one batch, not one each, and
            # the lanes that are running batches hold only the requests they took (`_taken`).
            with self._gather_lock:
                pending = self._gather()  # holds one of the slots unless None
                if pending is None:
                    return
                if not pending:  # gathering failed; its requests have their error
                    self._slots.release()
                    continue
                with self._taken_lock:
                    self._taken += len(pending)
            try:
                self._run_pending(pending)
            finally:
                with self._taken_lock:
                    self._taken -= len(pending)
                self._slots.release()

    def _gather(self) -> list | None:
        """Return the next batch of (inputs, future) from the queue, holding a slot; None once stopped."""
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.put(_STOP)  # for the other lanes
                return None
            # At most `lanes` model calls at once, a lone request's own call included; until the model has
            # room, the request is not running yet: its caller can still cancel it.
            self._slots.acquire()
            if item[1].set_running_or_notify_cancel():  # False: cancelled while queued; it takes no place
                break
            self._slots.release()
        pending = [item]
        size = len(item[0])
        try:
            deadline = time.monotonic() + self.max_wait
            while size < self.max_size:
                with self._taken_lock:
                    others = self._taken  # requests in the batches other lanes run: not coming to this one
                if self.expected is not None and len(pending) >= self.expected() - others:
                    break
                timeout = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)  # finish this batch, then stop
                    break
                if size + len(nxt[0]) > self.max_size:
                    self._queue.put(nxt)  # keep it for the next batch (order among waiters is not promised)
                    break
                if not nxt[1].set_running_or_notify_cancel():  # cancelled while queued
                    continue
                pending.append(nxt)
                size += len(nxt[0])
        except BaseException as exc:  # e.g. the in-flight count failed: never leave a request waiting
            for _, future in pending:
                future.set_exception(exc)
            return []
        return pending

    def _run_pending(self, pending: list) -> None:
        try:
            outputs = self._call(np.concatenate([inputs for inputs, _ in pending]))
        except BaseException as exc:
            for _, future in pending:
                future.set_exception(exc)
            return
        start = 0
        for inputs, future in pending:
            end = start + len(inputs)
            # One array, or a dict of arrays that share their first axis (e.g. probabilities and scores).
            future.set_result({key: value[start:end] for key, value in outputs.items()}
                              if isinstance(outputs, dict) else outputs[start:end])
            start = end

    def close(self) -> None:
        """Stop the batching threads after the batches already queued; fail whatever is left after them."""
        if self._threads:
            with self._closing_lock:  # no request goes in after this: the lanes or the loop below answer each
                self._closed = True
            self._queue.put(_STOP)  # each lane puts it back for the next one as it stops
            deadline = time.monotonic() + 10
            for thread in self._threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            while True:  # a request put back behind the stop, or submitted after it: answer, never hang
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP and item[1].set_running_or_notify_cancel():  # a cancelled one needs no answer
                    item[1].set_exception(RuntimeError("the model's batcher is closed"))
