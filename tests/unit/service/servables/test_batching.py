"""Batcher lanes: several batches at once for a model with several executors (the basics are in test_app.py)."""

import threading

import numpy as np
import pytest

from imgclf.service.servables.batching import _STOP, Batcher


def _concurrency_probe(window: float):
    """Return (run, peak): run echoes its batch and records the most calls seen running at once.

    The first call waits up to ``window`` seconds for a second one to start beside it.
    """
    lock, running, peak = threading.Lock(), [0], [0]
    both = threading.Event()

    def run(batch):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] >= 2:
                both.set()
        both.wait(window)
        with lock:
            running[0] -= 1
        return batch * 2

    return run, peak


@pytest.mark.parametrize("lanes, expected_peak", [(1, 1), (2, 2)])
def test_lanes_run_that_many_batches_at_once(lanes, expected_peak):
    run, peak = _concurrency_probe(10.0 if lanes > 1 else 0.2)  # one lane: a second call cannot come
    batcher = Batcher(run, max_size=1, max_wait=0.0, lanes=lanes)  # one request per batch
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit(np.full((1, 1), i))))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    batcher.close()
    assert {i: float(r[0, 0]) for i, r in results.items()} == {i: 2.0 * i for i in range(4)}
    assert peak[0] == expected_peak


def test_a_second_lane_does_not_wait_for_requests_in_the_first_lanes_batch():
    """Two requests in flight, the first held in its batch: the second runs at once, not after max_wait."""
    release, first_running, calls = threading.Event(), threading.Event(), []

    def run(batch):
        calls.append(float(batch[0, 0]))
        if batch[0, 0] == 0:
            first_running.set()
            assert release.wait(30)
        return batch

    in_flight = [1]  # what the app counts: the first request alone, then both
    batcher = Batcher(run, max_size=8, max_wait=30.0, expected=lambda: in_flight[0], lanes=2)
    first = threading.Thread(target=batcher.submit, args=(np.zeros((1, 1)),))
    first.start()
    assert first_running.wait(10)
    in_flight[0] = 2
    done = threading.Event()
    second = threading.Thread(target=lambda: (batcher.submit(np.ones((1, 1))), done.set()), daemon=True)
    second.start()
    assert done.wait(10), "the second lane waited for a request already in the first lane's batch"
    release.set()
    first.join(10)
    batcher.close()
    assert calls == [0.0, 1.0]


def test_close_stops_every_lane():
    batcher = Batcher(lambda b: b, lanes=3)
    np.testing.assert_array_equal(batcher.submit(np.ones((2, 1))), np.ones((2, 1)))
    batcher.close()
    assert not any(thread.is_alive() for thread in batcher._threads)


def test_lanes_must_be_positive():
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        Batcher(lambda b: b, lanes=0)


def test_requests_arriving_together_share_one_batch_with_several_lanes():
    """Two idle lanes must not split two requests that came together (each would wait out max_wait alone)."""
    started = threading.Barrier(3)
    sizes = []
    batcher = Batcher(lambda b: b, max_size=8, max_wait=30.0, on_batch=lambda n, s: sizes.append(n),
                      expected=lambda: 2, lanes=2)

    def client(i):
        started.wait(10)
        batcher.submit(np.full((1, 1), i))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    started.wait(10)
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads), "a request waited out max_wait"
    batcher.close()
    assert sizes == [2]


def test_a_failing_in_flight_count_fails_the_gathered_requests_and_the_lane_goes_on():
    calls = [0]

    def expected():
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("count broke")
        return 1

    batcher = Batcher(lambda b: b, max_size=8, max_wait=30.0, expected=expected, lanes=2)
    with pytest.raises(RuntimeError, match="count broke"):
        batcher.submit(np.zeros((1, 1)))
    np.testing.assert_array_equal(batcher.submit(np.ones((1, 1))), np.ones((1, 1)))
    batcher.close()
    assert batcher._taken == 0


def test_a_submit_after_close_is_an_error_not_a_hang():
    batcher = Batcher(lambda b: b, lanes=2)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(np.zeros((1, 1)))


def test_a_submit_racing_close_is_answered_not_left_waiting():
    """A submit that has passed the closed check when close() starts still gets an answer (a result or an error).

    The submitting thread is held between the check and putting its request in while close() runs; before the
    fix close() drained the queue and returned first, and the request waited forever.
    """
    batcher = Batcher(lambda b: b * 3, lanes=2)
    entered, release = threading.Event(), threading.Event()
    real_put = batcher._queue.put

    def slow_put(item, *args, **kwargs):
        if item is not _STOP and threading.current_thread().name == "submitter":
            entered.set()
            release.wait(5)
        return real_put(item, *args, **kwargs)

    batcher._queue.put = slow_put
    outcome: list = []

    def submitter():
        try:
            outcome.append(batcher.submit(np.ones((1, 1))))
        except RuntimeError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=submitter, name="submitter", daemon=True)
    thread.start()
    assert entered.wait(5)
    closer = threading.Thread(target=batcher.close, daemon=True)
    closer.start()
    closer.join(0.3)  # close waits for the request that is going in (or, unfixed, returns at once)
    release.set()
    closer.join(10)
    thread.join(10)
    assert not closer.is_alive() and not thread.is_alive(), "a request was left waiting after close()"
    assert len(outcome) == 1
    answer = outcome[0]
    if isinstance(answer, RuntimeError):
        assert "closed" in str(answer)
    else:
        np.testing.assert_array_equal(answer, np.full((1, 1), 3.0))



def test_a_request_cancelled_while_queued_leaves_the_queue_and_takes_no_place_in_a_batch():
    from concurrent.futures import CancelledError

    from imgclf.service.servables.batching import Cancellation, cancellable

    release, sizes = threading.Event(), []

    def run(batch):
        sizes.append(len(batch))
        release.wait(10)  # the first batch holds the lane while the others queue
        return batch * 2

    batcher = Batcher(run, max_size=8, max_wait=0.0)
    answers, errors = {}, {}

    def submit(key, value, cancellation=None):
        try:
            if cancellation is None:
                answers[key] = batcher.submit(np.array([[value]], np.float32))
            else:
                with cancellable(cancellation):
                    answers[key] = batcher.submit(np.array([[value]], np.float32))
        except CancelledError as exc:
            errors[key] = exc

    first = threading.Thread(target=submit, args=("first", 1.0))
    first.start()
    while not sizes:  # the first batch runs
        threading.Event().wait(0.005)
    cancelled = Cancellation()
    threads = [threading.Thread(target=submit, args=("cancelled", 2.0, cancelled)),
               threading.Thread(target=submit, args=("kept", 3.0))]
    for thread in threads:
        thread.start()
    while batcher._queue.qsize() < 2:
        threading.Event().wait(0.005)
    cancelled.cancel()
    threads[0].join(5)
    assert "cancelled" in errors and not threads[0].is_alive()  # answered at once, while the lane is still busy
    release.set()
    for thread in (first, threads[1]):
        thread.join(5)
    batcher.close()
    assert sizes == [1, 1]  # the second batch holds "kept" alone
    assert answers["kept"].tolist() == [[6.0]] and answers["first"].tolist() == [[2.0]]
    with cancellable(cancelled), pytest.raises(CancelledError):  # already cancelled: never queued
        batcher.submit(np.zeros((1, 1), np.float32))


def test_a_lone_request_runs_on_its_own_thread_and_later_ones_still_batch():
    """Alone in flight, a request calls the model itself, in one of the lanes' places; requests arriving while it
    runs are batched together in the other lane."""
    release, first_running, calls = threading.Event(), threading.Event(), []

    def run(batch):
        calls.append((threading.current_thread().name, len(batch)))
        if batch[0, 0] == 0:
            first_running.set()
            assert release.wait(30)
        return batch * 3

    in_flight = [1]
    batcher = Batcher(run, max_size=8, max_wait=30.0, expected=lambda: in_flight[0], lanes=2)
    results = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, batcher.submit(np.zeros((1, 1)))), name="first")
    first.start()
    assert first_running.wait(10)
    in_flight[0] = 3  # two more arrive while the first runs: they wait for each other, not for it
    others = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit(np.full((1, 1), i))))
              for i in (1, 2)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(10)
    assert not any(thread.is_alive() for thread in others), "the batch waited for the request running alone"
    release.set()
    first.join(10)
    batcher.close()
    assert calls[0] == ("first", 1) and calls[1][0].startswith("batcher-") and calls[1][1] == 2
    assert {i: float(r[0, 0]) for i, r in results.items()} == {0: 0.0, 1: 3.0, 2: 6.0}
    assert batcher._taken == 0


def test_a_lone_request_takes_the_only_lanes_place():
    """One lane: while a lone request runs the model on its own thread, the next waits in the queue (cancellable
    there), never in a second model call beside it."""
    run, peak = _concurrency_probe(0.3)
    in_flight = [1]
    batcher = Batcher(run, max_size=8, max_wait=0.0, expected=lambda: in_flight[0])
    first = threading.Thread(target=batcher.submit, args=(np.zeros((1, 1)),))
    first.start()
    in_flight[0] = 2
    second = batcher.submit(np.ones((1, 1)))
    first.join(10)
    batcher.close()
    assert float(second[0, 0]) == 2.0 and peak[0] == 1 and batcher._taken == 0


def test_a_lone_submit_after_close_is_an_error():
    batcher = Batcher(lambda b: b, expected=lambda: 1)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(np.zeros((1, 1)))
