"""Batcher lanes: several batches at once for a model with several executors (the basics are in test_app.py)."""

import threading

import numpy as np
import pytest

from imgclf.service.batching import Batcher


def _concurrency_probe():
    """Return (run, peak): run echoes its batch and records the most calls seen running at once."""
    lock, running, peak = threading.Lock(), [0], [0]
    both = threading.Event()

    def run(batch):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] >= 2:
                both.set()
        both.wait(1.0)  # give a second call the chance to start while this one runs
        with lock:
            running[0] -= 1
        return batch * 2

    return run, peak


@pytest.mark.parametrize("lanes, expected_peak", [(1, 1), (2, 2)])
def test_lanes_run_that_many_batches_at_once(lanes, expected_peak):
    run, peak = _concurrency_probe()
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
