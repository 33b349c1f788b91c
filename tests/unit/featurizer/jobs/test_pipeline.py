"""The batch pipeline with a stand-in featurizer: counting, a graph failing on some images, Ctrl-C."""

import time

import numpy as np
import pytest

from imgclf.core.errors import GraphError
from imgclf.featurizer.jobs.pipeline import NON_FINITE, WorkItem, extract
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.featurizer.store.identity import FeaturizerIdentity


class StandInFeaturizer:
    """Image bytes [v, ...] → vector [v, v, v, v]; the graph fails on values in ``fail`` and gives NaN for ``nan``."""

    identity = FeaturizerIdentity("stand-in", "fp32", 4, {"stand_in": True})
    fingerprint = identity.fingerprint

    def __init__(self, fail=(), nan=(), error=RuntimeError):
        self.fail, self.nan, self.error = set(fail), set(nan), error
        self.batches = []

    def decode(self, data: bytes) -> np.ndarray:
        return np.full((2, 2, 3), data[0], np.uint8)

    def to_input(self, rgb: np.ndarray) -> np.ndarray:
        return rgb.astype(np.float32)

    def preprocess(self, data: bytes) -> np.ndarray:
        return self.to_input(self.decode(data))

    def run(self, images: np.ndarray) -> np.ndarray:
        values = images[:, 0, 0, 0].astype(int).tolist()
        self.batches.append(values)
        if self.fail & set(values):
            raise self.error("op failed")
        vectors = np.repeat(images[:, 0, 0, :1], 4, axis=1)
        vectors[[v in self.nan for v in values]] = np.nan
        return vectors


def _items(values):
    return [WorkItem(f"img{i}_{v}.jpg", read=lambda v=v: bytes([v]) * 8) for i, v in enumerate(values)]


def test_the_same_image_twice_in_one_batch_is_computed_once_and_counted_cached(tmp_path):
    featurizer = StandInFeaturizer()
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        result = extract(featurizer, _items([1, 1, 2]), cache, batch_size=32, progress=False)
    assert (result.computed, result.cached, result.failures) == (2, 1, [])
    assert result.keys[0] == result.keys[1] and None not in result.keys
    assert featurizer.batches == [[1, 2]]


def test_a_batch_the_graph_fails_on_is_retried_image_by_image(tmp_path):
    featurizer = StandInFeaturizer(fail={2}, nan={3})
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        result = extract(featurizer, _items([1, 2, 2, 3, 4, 5]), cache, batch_size=4, progress=False)
        assert cache.count() == 3
    assert featurizer.batches == [[1, 2, 3, 4], [1], [2], [3], [4], [5]]
    failed = "the graph failed on this image: RuntimeError: op failed"
    assert result.failures == [("img1_2.jpg", failed), ("img2_2.jpg", failed), ("img3_3.jpg", NON_FINITE)]
    assert [key is not None for key in result.keys] == [True, False, False, False, True, True]
    assert (result.computed, result.cached, result.succeeded) == (3, 0, 3)


def test_a_broken_graph_still_ends_the_job(tmp_path):
    featurizer = StandInFeaturizer(fail={1}, error=GraphError)
    with FeatureCache(tmp_path / "c.sqlite") as cache, pytest.raises(GraphError):
        extract(featurizer, _items([1, 2]), cache, progress=False)


def test_ctrl_c_does_not_wait_for_every_queued_decode(tmp_path):
    reads = []

    def interrupt():
        raise KeyboardInterrupt

    def slow_read(v):
        reads.append(v)
        time.sleep(0.1)
        return bytes([v]) * 8

    items = [WorkItem("first.jpg", read=interrupt)]
    items += [WorkItem(f"{v}.jpg", read=lambda v=v: slow_read(v)) for v in range(1, 60)]
    with FeatureCache(tmp_path / "c.sqlite") as cache, pytest.raises(KeyboardInterrupt):
        extract(StandInFeaturizer(), items, cache, batch_size=32, decode_threads=1, progress=False)
    assert len(reads) <= 2  # the decode already running, not the 59 queued


def test_decoding_goes_on_while_the_graph_runs(tmp_path):
    import threading

    next_batch_read = threading.Event()
    reads = []

    def read(v):
        reads.append(v)
        if {4, 5, 6, 7} <= set(reads):
            next_batch_read.set()
        return bytes([v]) * 8

    class WaitsForTheNextBatch(StandInFeaturizer):
        def run(self, images):
            if not self.batches:  # the first batch: the decode threads must be reading the second meanwhile
                self.overlapped = next_batch_read.wait(timeout=30)
            return super().run(images)

    featurizer = WaitsForTheNextBatch()
    items = [WorkItem(f"{v}.jpg", read=lambda v=v: read(v)) for v in range(12)]
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        result = extract(featurizer, items, cache, batch_size=4, decode_threads=2, progress=False)
    assert featurizer.overlapped and result.computed == 12
    assert featurizer.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_model_time_and_decode_waits_are_accounted(tmp_path):
    class SlowGraph(StandInFeaturizer):
        def run(self, images):
            time.sleep(0.05)
            return super().run(images)

    def slow_read(v):
        time.sleep(0.02)
        return bytes([v]) * 8

    with FeatureCache(tmp_path / "c.sqlite") as cache:
        result = extract(SlowGraph(), [WorkItem(f"{v}.jpg", read=lambda v=v: slow_read(v)) for v in range(9)],
                         cache, batch_size=3, decode_threads=1, progress=False)
    assert result.computed == 9
    assert 3 * 0.05 <= result.model_seconds <= result.seconds
    assert result.wait_seconds > 0  # one thread reading at 20 ms an image: the graph had to wait
    assert result.model_seconds + result.wait_seconds <= result.seconds
    assert result.model_busy == pytest.approx(result.model_seconds / result.seconds)


def test_a_graph_that_runs_small_batches_does_not_wait_for_a_whole_batch(tmp_path):
    """The third image decodes only once the graph has run: the graph must run the two decoded ones first."""
    import threading

    class SmallBatches(StandInFeaturizer):
        min_batch = 2

        def __init__(self):
            super().__init__()
            self.ran = threading.Event()

        def run(self, images):
            self.ran.set()
            return super().run(images)

    featurizer = SmallBatches()
    waited = []

    def slow_read():
        waited.append(featurizer.ran.wait(20))  # without the early run this waits out its 20 s
        return bytes([3]) * 8

    items = _items([1, 2]) + [WorkItem("img2_3.jpg", read=slow_read)]
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        result = extract(featurizer, items, cache, batch_size=32, decode_threads=2, progress=False)
        assert cache.count() == 3
    assert waited == [True]
    assert featurizer.batches == [[1, 2], [3]]
    assert (result.computed, result.failures) == (3, [])


def test_a_graph_that_gains_from_big_batches_waits_for_a_whole_batch(tmp_path):
    featurizer = StandInFeaturizer()  # no min_batch: whole batches only, as TensorFlow bf16

    def slow_read():
        time.sleep(0.3)
        return bytes([3]) * 8

    items = _items([1, 2]) + [WorkItem("img2_3.jpg", read=slow_read)]
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        extract(featurizer, items, cache, batch_size=32, decode_threads=2, progress=False)
    assert featurizer.batches == [[1, 2, 3]]
