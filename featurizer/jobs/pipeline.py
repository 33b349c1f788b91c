"""The batch pipeline: read and decode images in threads, run the graph in batches, commit to the cache.

Decoding (Pillow, numpy) runs in a thread pool while the main thread runs the
graph (TensorFlow releases the GIL), so both cores stay busy. The pool, one
thread per usable CPU, decodes ahead of the graph: up to two batches plus two
images per thread are in flight, so while a batch runs the next one is being
decoded, and the graph waits only for images no thread could have finished:
when the next image is not decoded yet, a graph that runs small batches as
well as big ones (OpenVINO's one-image requests, fp32's one-image runs:
:attr:`Featurizer.min_batch`) runs the images already decoded instead of
waiting for a whole batch. :class:`ExtractResult` says how long the graph ran and how long the main thread
waited for decodes (``model_busy``). Every batch is
committed to the feature cache as soon as it is computed: a job killed at any
moment keeps what it committed and a rerun computes only the rest. A bad image
(undecodable, or one the graph fails on or gives non-finite features for) is
recorded with its reason and the job goes on.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from imgclf.core.errors import GraphError, ImgclfError
from imgclf.featurizer.runtime.featurizer import Featurizer, default_decode_threads
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.featurizer.store.identity import sha256_bytes

log = logging.getLogger(__name__)

NON_FINITE = "the graph produced non-finite features"


def read_failure(exc: OSError) -> str:
    """Return the reason recorded for an image whose file cannot be read (missing, broken link, I/O error)."""
    return f"cannot read file: {exc.strerror or exc}"


@dataclass(frozen=True)
class WorkItem:
    """One image to featurize."""

    name: str  # shown in reports: a path relative to the image folder
    read: Callable[[], bytes]  # returns the encoded image
    variant: str = ""  # "" for the image itself; a distorted copy names its distortion here
    # uint8 RGB in, uint8 RGB out; the generator is seeded from the cache key, so a variant is reproducible
    distort: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None


def cache_key(image_sha256: str, variant: str = "") -> str:
    """Return the cache key of an image (its sha256) or of a named variant of it."""
    if not variant:
        return image_sha256
    return hashlib.sha256(f"{image_sha256}:{variant}".encode()).hexdigest()


@dataclass
class ExtractResult:
    """What :func:`extract` did."""

    keys: list[str | None]  # per item: its cache key, or None when it failed
    failures: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    cached: int = 0  # items already in the cache
    computed: int = 0  # items run through the graph now
    seconds: float = 0.0
    model_seconds: float = 0.0  # of which the graph ran (batches, and retries one image at a time)
    wait_seconds: float = 0.0  # of which the main thread waited for a decode to finish

    @property
    def model_busy(self) -> float:
        """Return the fraction of the wall time the graph was running (0 when nothing ran)."""
        return self.model_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def succeeded(self) -> int:
        """Return how many items have a vector in the cache now."""
        return sum(key is not None for key in self.keys)


def _progress_bar(total: int, enabled: bool | None, desc: str):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True,
                smoothing=0.1)


def extract(featurizer: Featurizer, items: Sequence[WorkItem], cache: FeatureCache, *,
            batch_size: int = 32, decode_threads: int = 0, progress: bool | None = None,
            desc: str = "featurize") -> ExtractResult:
    """Make sure every item's vector is in ``cache``; return keys and failures.

    Args:
        batch_size: the most images per graph run and per committed transaction (a graph with a
            ``min_batch`` runs fewer when the next image is still decoding).
        decode_threads: decoding threads (0 = one per usable CPU).
        progress: show a progress bar (None = only on a terminal).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; received {batch_size!r}")
    run = _Extraction(featurizer, items, cache, batch_size)
    threads = decode_threads or default_decode_threads()
    started = time.perf_counter()
    bar = _progress_bar(len(items), progress, desc)
    # Not a `with` block: leaving it would wait for every queued decode, even on Ctrl-C.
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
    try:
        run.decode_and_run(pool, 2 * batch_size + 2 * threads, bar)
        run.flush()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # only the decodes already running are waited for
        bar.close()
        run.result.seconds = time.perf_counter() - started
    return run.result


class _Extraction:
    """One :func:`extract` run: decoded inputs wait in ``pending`` for a graph batch; ``result`` counts."""

    def __init__(self, featurizer: Featurizer, items: Sequence[WorkItem], cache: FeatureCache, batch_size: int):
        self.featurizer, self.items, self.cache, self.batch_size = featurizer, items, cache, batch_size
        identity = featurizer.identity
        self.fingerprint = identity.fingerprint
        cache.register_featurizer(self.fingerprint, identity.description)
        self.known = cache.keys(self.fingerprint)
        self.result = ExtractResult(keys=[None] * len(items))
        # The fewest decoded images worth a graph run before a whole batch is there (0: whole batches only):
        # when the next image is still decoding, the graph runs these instead of waiting (a job's first batch,
        # a folder of fewer images than a batch, decoding slower than the graph).
        self.early = min(getattr(featurizer, "min_batch", 0), batch_size)
        self.pending: dict[str, tuple[np.ndarray, list[int]]] = {}  # key → (network input, indices of the items)

    def prepare(self, item: WorkItem) -> tuple[str, np.ndarray | None]:
        """Read, hash and (unless cached) decode one item, in a decoding thread; return (key, input or None)."""
        data = item.read()
        key = cache_key(sha256_bytes(data), item.variant)
        if key in self.known:
            return key, None
        if item.distort is None:
            return key, self.featurizer.preprocess(data)
        rgb = item.distort(self.featurizer.decode(data), np.random.default_rng(int(key[:16], 16)))
        return key, self.featurizer.to_input(rgb)

    def decode_and_run(self, pool: ThreadPoolExecutor, max_in_flight: int, bar) -> None:
        """Decode the items in ``pool``, up to ``max_in_flight`` ahead, taking each in order as it is done."""
        items, result = self.items, self.result
        in_flight: deque[tuple[int, Future]] = deque()
        next_index = 0
        while next_index < len(items) or in_flight:
            while next_index < len(items) and len(in_flight) < max_in_flight:
                in_flight.append((next_index, pool.submit(self.prepare, items[next_index])))
                next_index += 1
            index, future = in_flight.popleft()
            if not future.done() and self.early and len(self.pending) >= self.early:
                self.flush()  # the graph would wait for this decode: give it what is decoded already
            if not future.done():
                waited = time.perf_counter()
                wait([future])
                result.wait_seconds += time.perf_counter() - waited
            self.take(index, future)
            bar.update(1)
            bar.set_postfix(cached=result.cached, new=result.computed, bad=len(result.failures), refresh=False)

    def take(self, index: int, future: Future) -> None:
        """Record a decoded item: its failure, a vector already known, or an input for the next batch."""
        result, name = self.result, self.items[index].name
        try:
            key, array = future.result()
        except ImgclfError as exc:
            result.failures.append((name, str(exc)))
        except OSError as exc:
            result.failures.append((name, read_failure(exc)))
        except Exception as exc:
            log.debug("unexpected failure on %s", name, exc_info=True)
            result.failures.append((name, f"unexpected {type(exc).__name__}: {exc}"))
        else:
            result.keys[index] = key
            if array is None or key in self.known:  # cached, or the same bytes seen earlier in this run
                result.cached += 1
            elif key in self.pending:  # the same bytes twice in one batch: compute once
                self.pending[key][1].append(index)
            else:
                self.pending[key] = (array, [index])
                if len(self.pending) >= self.batch_size:
                    self.flush()

    def flush(self) -> None:
        """Run the graph on the pending inputs and commit their vectors to the cache."""
        if not self.pending:
            return
        result = self.result
        model_started = time.perf_counter()
        vectors, errors = _run_batch(self.featurizer, {key: array for key, (array, _) in self.pending.items()})
        result.model_seconds += time.perf_counter() - model_started
        if vectors:
            self.cache.put_many(self.fingerprint, vectors)
            self.known.update(vectors)
        for key, (_, indices) in self.pending.items():
            if key in vectors:
                result.computed += 1
                result.cached += len(indices) - 1  # the same bytes again in this batch
                continue
            for index in indices:
                result.keys[index] = None
                result.failures.append((self.items[index].name, errors[key]))
        self.pending.clear()


def _run_batch(featurizer: Featurizer, inputs: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Run the graph on a batch; return ``(vectors, errors)`` by key.

    When the batch run fails, each image is run alone so one bad input costs
    only itself. A vector with NaN or infinity is an error, not a cache entry.
    A :class:`GraphError` (the graph itself is wrong) ends the job.
    """
    keys = list(inputs)
    errors: dict[str, str] = {}
    try:
        outputs = dict(zip(keys, featurizer.run(np.stack([inputs[key] for key in keys]))))
    except GraphError:
        raise
    except Exception as exc:
        log.warning("the graph failed on a batch of %d images (%s: %s); running them one at a time",
                    len(keys), type(exc).__name__, exc)
        outputs = {}
        for key in keys:
            try:
                outputs[key] = featurizer.run(inputs[key][None])[0]
            except GraphError:
                raise
            except Exception as exc:
                log.debug("the graph failed on %s", key, exc_info=True)
                errors[key] = f"the graph failed on this image: {type(exc).__name__}: {exc}"
    vectors = {}
    for key, vector in outputs.items():
        if np.all(np.isfinite(vector)):
            vectors[key] = vector
        else:
            errors[key] = NON_FINITE
    return vectors, errors
