"""`imgclf featurize --engine ray`: Ray Data reads and decodes, an actor pool runs the graph, the driver writes shards.

The pipeline, for the images of SOURCE (a folder or an ``s3://``/``gs://`` prefix):

1. The driver's listing of SOURCE becomes a Ray dataset of relative paths
   (``ray.data.from_items``, in blocks).
2. Tasks read each image through the same pyarrow filesystem the listing used
   (on a cluster each node takes the store's credentials from its own
   environment: instance or pod roles, AWS_* variables), a few reads in flight
   per task, then hash it and decode and preprocess it with the local engine's
   code (:func:`imgclf.featurizer.images.decode.decode_input`, the graph's contract);
   an image whose sha256 DEST already holds for this featurizer is not decoded.
   A file that cannot be read (deleted after the listing, a broken link, an I/O
   error) is skipped and reported with the local engine's reason, as an
   undecodable one is; the job goes on.
3. An actor pool (``map_batches`` with a callable class: ``--actors N`` or
   ``--min-actors/--max-actors``, ``--gpus-per-actor``) in which each actor loads
   the graph once runs the batches, one bad image costing only itself.
4. The driver streams the results into a :class:`FeatureDatasetWriter`: a shard
   every ``shard_rows`` rows, each written whole, then ``dataset.json``.

Fault tolerance is Ray's: a killed task is retried, a killed actor restarted and
its batches retried (Ray Data's actor defaults); the driver keeps one row per
path. A killed driver keeps every shard it wrote; the rerun skips those images.
With ``--precision auto`` the identity (fingerprint, resolved precision) is
computed by one task with the actors' resources, so it resolves as it will on
their nodes; an explicit precision is resolved by the driver. Every actor checks
that its own featurizer has the job's fingerprint. For int8 the driver chooses
and reads the calibration images from its listing of SOURCE and hands them to
the actors with the config: no node reads a folder for them.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from imgclf.core.errors import GraphError, ImgclfError, UsageError
from imgclf.featurizer.images.decode import decode_input
from imgclf.featurizer.images.sources import ImageSource
from imgclf.featurizer.jobs.featurize import FeaturizeJob, FeaturizeSummary, dataset_summary, finish, open_source
from imgclf.featurizer.jobs.pipeline import ExtractResult, _run_batch, read_failure
from imgclf.featurizer.runtime.calibration import Calibration
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.store.dataset import FeatureDatasetWriter
from imgclf.featurizer.store.identity import FeaturizerIdentity, sha256_bytes
from imgclf.featurizer.store.object_store import Location, require

log = logging.getLogger(__name__)

KNOWN = "known"  # status of an image whose bytes DEST already holds
OK = ""  # status of an image computed now
ADDRESS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray pipeline runs."""

    address: str | None = None  # None = a local Ray instance for this job; auto | HOST:PORT | ray://HOST:PORT
    actors: int | None = None  # a fixed pool of graph actors (default 1 unless min/max)
    min_actors: int | None = None  # autoscaling pool bounds
    max_actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RayOptions:
        """Build the options from `imgclf featurize`'s arguments."""
        return cls(args.ray_address, args.actors, args.min_actors, args.max_actors, args.gpus_per_actor,
                   args.cpus_per_actor)

    def concurrency(self) -> int | tuple[int, int]:
        """Return the pool size: N, or (min, max) for an autoscaling pool."""
        if self.min_actors is not None:
            return (self.min_actors, self.max_actors)
        return self.actors or 1

    def compute(self, ray):
        """Return Ray Data's actor-pool strategy."""
        pool = self.concurrency()
        if isinstance(pool, tuple):
            return ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1])
        return ray.data.ActorPoolStrategy(size=pool)

    def describe(self) -> str:
        """Return the pool in words."""
        pool = self.concurrency()
        size = f"{pool[0]}-{pool[1]} actors (autoscaling)" if isinstance(pool, tuple) else f"{pool} actor(s)"
        return f"{size}, {self.gpus_per_actor:g} GPU / {self.cpus_per_actor:g} CPU each"


def check_address(address: str | None) -> None:
    """Raise ImgclfError, fast, when a HOST:PORT or ray://HOST:PORT address does not accept connections."""
    if address is None or address == "auto":
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, _, port = target.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT; received {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ImgclfError(f"Ray address {address} does not answer ({exc.strerror or exc}); start the cluster "
                          f"(ray start --head) or fix --ray-address") from None


def _connect(ray, address: str | None) -> None:
    check_address(address)
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "configure_logging": True,
              "runtime_env": {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}}}  # workers: no TensorFlow info lines
    try:
        if address is None:
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ImgclfError(f"cannot connect to Ray at {address}: {' '.join(str(exc).split())[:300]}") from None


def _quiet_ray_data_console() -> None:
    """Keep Ray Data's INFO lines (execution plans, timings) in its log file, off the console, unless -v."""
    if logging.getLogger(__name__).getEffectiveLevel() <= logging.INFO:
        return
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # its console handler; the file handler keeps everything
            handler.setLevel(logging.WARNING)


def _describe(config: FeaturizerConfig, calibration: Calibration | None) -> tuple[FeaturizerIdentity, object]:
    """Load the graph where the actors will run it; return its identity and contract."""
    with Featurizer(config, calibration) as featurizer:
        return featurizer.identity, featurizer.contract


# Resources of a decode task: one CPU and the memory of a batch of decoded photos. They differ from the
# actors' resources, so Ray Data does not fuse decoding into the actors: it runs in tasks on any CPU of
# the cluster, and the actors (GPUs, when given) only run the graph. Ray retries a killed task.
DECODE_TASK_RESOURCES = {"num_cpus": 1, "memory": 512 * 2**20}
READ_THREADS = 8  # reads in flight per decode task: an object store's latency overlaps, not more CPU


def _read(location: Location, rel_path: str) -> tuple[bytes | None, str]:
    """Return ``(bytes, "")``, or ``(None, reason)`` for a file that cannot be read (the local engine's wording)."""
    try:
        return location.read_bytes(rel_path), OK
    except OSError as exc:  # deleted after the listing, a broken link, permission, an I/O error
        return None, read_failure(exc)
    except Exception as exc:  # as the local engine: one file's failure costs only that file
        log.debug("unexpected failure reading %s", rel_path, exc_info=True)
        return None, f"unexpected {type(exc).__name__}: {exc}"


def _preprocess(batch: dict, *, location: Location, contract, max_pixels: int, known_ref) -> dict:
    """Ray task: read, hash, skip known bytes, decode and preprocess each image of a batch (``rel_path`` rows)."""
    if isinstance(known_ref, np.ndarray):
        known = known_ref
    else:
        import ray

        known = ray.get(known_ref)  # sorted array of the sha256s DEST holds (zero-copy from the object store)
    rel_paths = [str(rel) for rel in batch["rel_path"]]
    shas, statuses, inputs = [], [], []
    with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(rel_paths))),
                            thread_name_prefix="read") as pool:
        for data, reason in pool.map(lambda rel: _read(location, rel), rel_paths):  # decodes as reads land
            if data is None:
                shas.append("")
                statuses.append(reason)
                inputs.append(b"")
                continue
            sha = sha256_bytes(data)
            shas.append(sha)
            index = int(np.searchsorted(known, sha.encode()))
            if index < len(known) and known[index] == sha.encode():
                statuses.append(KNOWN)
                inputs.append(b"")
                continue
            try:
                array = decode_input(data, contract.input_size, contract.input_mean, contract.input_std, max_pixels,
                                     contract.jpeg_dct_method, contract.decode)
            except ImgclfError as exc:
                statuses.append(str(exc))
                inputs.append(b"")
            else:
                statuses.append(OK)
                inputs.append(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return {"rel_path": np.array(rel_paths, dtype=object), "sha": np.array(shas, dtype=object),
            "status": np.array(statuses, dtype=object), "input": np.array(inputs, dtype=object)}


class GraphActor:
    """Ray actor: loads the graph once, then runs preprocessed batches through it."""

    def __init__(self, config: FeaturizerConfig, fingerprint: str, calibration: Calibration | None = None):
        self.featurizer = Featurizer(config, calibration)
        if self.featurizer.fingerprint != fingerprint:  # a node that resolves precision (or anything) otherwise
            way_out = "give --precision explicitly on a mixed cluster"
            if self.featurizer.identity.precision == "int8":  # the recipe and the floor's float layers are the CPU's
                way_out = ("int8 is quantized for each CPU's int8 instructions (the recipe, and the layers "
                           "--int8-floor keeps float): run it on nodes of one CPU kind")
            raise GraphError(f"this node's featurizer is {self.featurizer.identity.precision} "
                             f"{self.featurizer.fingerprint[:12]}, the job's is {fingerprint[:12]}: {way_out}")
        self.size = self.featurizer.contract.input_size

    def __call__(self, batch: dict) -> dict:
        statuses = [str(s) for s in batch["status"]]
        inputs = {str(i): np.frombuffer(blob, np.float32).reshape(self.size, self.size, 3)
                  for i, (status, blob) in enumerate(zip(statuses, batch["input"])) if status == OK}
        vectors, errors = _run_batch(self.featurizer, inputs) if inputs else ({}, {})
        features = np.zeros((len(statuses), self.featurizer.dim), np.float32)
        for key, vector in vectors.items():
            features[int(key)] = vector
        for key, reason in errors.items():
            statuses[int(key)] = reason
        return {"rel_path": batch["rel_path"], "sha": batch["sha"], "status": np.array(statuses, dtype=object),
                "features": features}


def run_featurize_ray(job: FeaturizeJob, options: RayOptions) -> FeaturizeSummary:
    """Featurize SOURCE into the feature dataset DEST on a Ray cluster (or a local Ray instance)."""
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    if job.output_dataset is None:
        raise UsageError("--engine ray writes a feature dataset: give --output-dataset DEST")
    check_address(options.address)  # before listing: a dead cluster is the cheapest thing to report
    source, dest = open_source(job)
    _connect(ray, options.address)
    _quiet_ray_data_console()
    try:
        summary = _run(ray, job, options, source, dest)
    finally:
        ray.shutdown()
    return finish(job, summary)


def _run(ray, job: FeaturizeJob, options: RayOptions, source: ImageSource, dest) -> FeaturizeSummary:
    started = time.perf_counter()
    resources = {"num_cpus": options.cpus_per_actor, "num_gpus": options.gpus_per_actor}
    calibration = calibration_for(job.featurizer, source)  # int8: chosen and read here, shipped to the actors
    if job.featurizer.precision == "auto":  # resolved where the actors run (a GPU node: fp16), not here
        identity, contract = ray.get(ray.remote(**resources)(_describe).remote(job.featurizer, calibration))
    else:  # nothing node-dependent: the driver computes the identity; each actor checks it has the same
        identity, contract = _describe(job.featurizer, calibration)
    writer = FeatureDatasetWriter(dest, identity, source.label_names, source.location.uri, job.shard_rows)
    known = np.array(sorted(sha.encode() for sha in writer.known_shas), dtype="S64")
    label_of = {image.rel_path: source.label_names[image.label] for image in source.entries}
    result = ExtractResult(keys=[None] * len(source.entries))
    index_of = {image.rel_path: i for i, image in enumerate(source.entries)}
    copies: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    first_batch = None  # (seconds from the start, rows): Ray's start-up, the graph loads included
    if source.entries:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = sys.stderr.isatty() if job.progress is None else job.progress
        ds = ray.data.from_items([{"rel_path": image.rel_path} for image in source.entries],
                                 override_num_blocks=max(1, min(len(source.entries) // job.batch_size, 4096)))
        ds = ds.map_batches(_preprocess, batch_size=job.batch_size, batch_format="numpy",
                            fn_kwargs={"location": source.location, "contract": contract,
                                       "max_pixels": job.featurizer.max_pixels, "known_ref": ray.put(known)},
                            **DECODE_TASK_RESOURCES)
        ds = ds.map_batches(GraphActor, batch_size=job.batch_size, batch_format="numpy",
                            fn_constructor_kwargs={"config": job.featurizer, "fingerprint": identity.fingerprint,
                                                   "calibration": calibration},
                            compute=options.compute(ray), **resources)
        for batch in ds.iter_batches(batch_size=job.batch_size, batch_format="numpy"):
            if first_batch is None:
                first_batch = (time.perf_counter() - started, len(batch["rel_path"]))
            for rel, sha, status, vector in zip(batch["rel_path"], batch["sha"], batch["status"], batch["features"]):
                rel, sha, status = str(rel), str(sha), str(status)
                if rel in seen:  # a retried batch delivered twice: keep one row per path
                    log.debug("duplicate result for %s ignored", rel)
                    continue
                seen.add(rel)
                if status in (OK, KNOWN):
                    result.keys[index_of[rel]] = sha
                if status == OK:
                    writer.add(rel, label_of[rel], sha, vector)
                    result.computed += 1
                elif status == KNOWN:
                    result.cached += 1
                    if not writer.has(rel, sha):
                        copies.append((rel, label_of[rel], sha))
                else:
                    result.failures.append((rel, status))
    stored = writer.stored_vectors({sha for _, _, sha in copies})
    for rel, label, sha in copies:  # known bytes under a new path: the stored vector, no graph run
        writer.add(rel, label, sha, stored[sha])
    skipped = source.skipped + sorted(result.failures)
    writer.flush(skipped)
    result.seconds = time.perf_counter() - started
    return dataset_summary(job, source, result, identity, skipped, writer, engine="ray", pool=options.describe(),
                           first_batch_seconds=round(first_batch[0], 3) if first_batch else None,
                           first_batch_rows=first_batch[1] if first_batch else 0)
