"""`imgclf featurize`: every image of a labelled folder → a cached bottleneck vector.

Skips and reports bad files, finishes the rest, resumes from the cache after
being killed, and can write the features as a portable ``.npz``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.core.atomic import atomic_file, write_json_atomic
from imgclf.featurizer.images.folders import ImageDirectory, scan_image_dir
from imgclf.featurizer.jobs.pipeline import ExtractResult, WorkItem, extract
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.featurizer.store.identity import FeaturizerIdentity

if TYPE_CHECKING:  # the feature-dataset modules load only for jobs that write one
    from imgclf.featurizer.images.sources import ImageSource
    from imgclf.featurizer.store.dataset import FeatureDatasetWriter
    from imgclf.featurizer.store.object_store import Location

log = logging.getLogger(__name__)


@dataclass
class FeaturizeJob:
    """Everything `imgclf featurize` needs."""

    image_dir: Path  # one sub-folder per class
    featurizer: FeaturizerConfig  # the graph and how to run it
    cache: Path | None  # SQLite feature cache (created when missing); None with output_dataset
    output: Path | None = None  # optional .npz with paths, labels, label_names, features
    report: Path | None = None  # optional JSON report (counts, skipped files and reasons)
    batch_size: int = 32  # images per graph run and per committed transaction
    decode_threads: int = 0  # 0 = one per usable CPU
    progress: bool | None = None  # None = a progress bar only on a terminal
    # Parquet feature dataset (folder or s3://, gs:// URI) that receives the vectors and plays the cache's
    # role (see imgclf.featurizer.store.dataset); image_dir may then be a URI too.
    output_dataset: str | None = None
    shard_rows: int = 1024  # rows per Parquet shard of output_dataset


@dataclass
class FeaturizeSummary:
    """The outcome of a featurize job."""

    directory: ImageDirectory
    extract: ExtractResult
    featurizer: FeaturizerIdentity
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    source: str | None = None  # SOURCE as given, when it is no local folder (an object-store URI)
    dataset: dict | None = None  # output_dataset: where, rows, shards written

    @property
    def featurized(self) -> int:
        """Return how many images have a vector now."""
        return self.extract.succeeded

    def to_dict(self) -> dict:
        """Return the report as JSON-ready data."""
        seconds = self.extract.seconds
        return {
            "image_dir": self.source or str(self.directory.root),
            "label_names": self.directory.label_names,
            "images": len(self.directory.entries),
            "featurized": self.featurized,
            "from_cache": self.extract.cached,
            "computed": self.extract.computed,
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "ignored_files": self.directory.ignored,
            "seconds": round(seconds, 3),
            "images_per_second": round(self.extract.computed / seconds, 2) if seconds > 0 else None,
            # the fraction of the time the graph ran, and the seconds it waited for decoding threads
            "model_busy": round(self.extract.model_busy, 3),
            "decode_wait_seconds": round(self.extract.wait_seconds, 3),
            "featurizer": self.featurizer.describe(),
            **({"dataset": self.dataset} if self.dataset is not None else {}),
        }

    def format(self) -> str:
        """Return a human-readable summary."""
        d = self.to_dict()
        described = self.featurizer.description
        counts = {name: 0 for name in self.directory.label_names}
        for entry, key in zip(self.directory.entries, self.extract.keys):
            if key is not None:
                counts[self.directory.label_names[entry.label]] += 1
        lines = [
            f"featurized {d['featurized']} of {d['images']} images in {d['seconds']:.1f} s "
            f"({d['from_cache']} from cache, {d['computed']} computed"
            + (f", {d['images_per_second']:.1f} img/s" if d["computed"] else "") + ")",
            f"featurizer: {described.get('backend', 'tensorflow')} {self.featurizer.precision}, "
            f"{self.featurizer.dim}-d, graph sha256 {described['graph_sha256'][:12]}",
            "classes:",
            *(f"  {label:>3}  {name:<24} {counts[name]:>6} images"
              for label, name in enumerate(self.directory.label_names)),
        ]
        if self.dataset is not None:
            lines.append(f"dataset: {self.dataset['dest']} ({self.dataset['rows']} rows, "
                         f"{self.dataset['written']} written now in {self.dataset['shards']} shard(s))")
            if "engine" in self.dataset:
                lines.append(f"engine: {self.dataset['engine']}, {self.dataset['pool']}; first batch after "
                             f"{self.dataset['first_batch_seconds'] or 0:.1f} s")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines.extend(f"  {path}: {reason}" for path, reason in self.skipped)
        return "\n".join(lines)


def run_featurize(job: FeaturizeJob) -> FeaturizeSummary:
    """Featurize a labelled image folder into the cache or a feature dataset (and optionally an .npz)."""
    if job.output_dataset is not None:
        return _run_into_dataset(job)
    directory = scan_image_dir(job.image_dir)
    items = [WorkItem(entry.rel_path, entry.path.read_bytes) for entry in directory.entries]
    log.info("%d images in %d classes under %s", len(items), len(directory.label_names), directory.root)
    with Featurizer(job.featurizer, calibration_for(job.featurizer, directory)) as featurizer, \
            FeatureCache(job.cache) as cache:
        result = extract(featurizer, items, cache, batch_size=job.batch_size,
                         decode_threads=job.decode_threads, progress=job.progress)
        summary = FeaturizeSummary(directory, result, featurizer.identity, directory.skipped + result.failures)
        if job.output is not None and summary.featurized:
            write_npz(job.output, directory, result, cache, featurizer.fingerprint)
    return finish(job, summary)


def _run_into_dataset(job: FeaturizeJob) -> FeaturizeSummary:
    """The local engine writing a feature dataset: the dataset is the cache (resume by image sha256)."""
    from imgclf.featurizer.store.dataset import DatasetCache, FeatureDatasetWriter

    source, dest = open_source(job)
    with Featurizer(job.featurizer, calibration_for(job.featurizer, source)) as featurizer:
        identity = featurizer.identity
        writer = FeatureDatasetWriter(dest, identity, source.label_names, source.location.uri, job.shard_rows)
        cache = DatasetCache(writer)
        items = [WorkItem(image.rel_path, cache.reader(image.rel_path, source.label_names[image.label],
                                                       partial(source.read, image.rel_path)))
                 for image in source.entries]
        result = extract(featurizer, items, cache, batch_size=job.batch_size,  # type: ignore[arg-type]
                         decode_threads=job.decode_threads, progress=job.progress)
        skipped = source.skipped + result.failures
        cache.finish(skipped)
        summary = dataset_summary(job, source, result, identity, skipped, writer)
        if job.output is not None and summary.featurized:
            write_npz(job.output, source, result, cache, featurizer.fingerprint)  # type: ignore[arg-type]
    return finish(job, summary)


def open_source(job: FeaturizeJob) -> tuple[ImageSource, Location]:
    """List SOURCE and open DEST of a job writing a feature dataset.

    Raises before any work: SOURCE is no class layout, or a store does not answer.
    """
    from imgclf.featurizer.images.sources import open_image_source
    from imgclf.featurizer.store.object_store import open_location

    source = open_image_source(job.image_dir)
    dest = open_location(job.output_dataset, create=True)
    log.info("%d images in %d classes under %s", len(source.entries), len(source.label_names), source.location.uri)
    return source, dest


def dataset_summary(job: FeaturizeJob, source: ImageSource, result: ExtractResult, identity: FeaturizerIdentity,
                    skipped: list[tuple[str, str]], writer: FeatureDatasetWriter, **engine) -> FeaturizeSummary:
    """Return the summary of a job that wrote a feature dataset (``engine``: more of the dataset's report)."""
    from imgclf.featurizer.store.object_store import is_uri

    return FeaturizeSummary(source, result, identity, skipped,
                            source=source.location.uri if is_uri(job.image_dir) else None,
                            dataset={"dest": writer.location.uri, "rows": writer.rows, "written": writer.written,
                                     "shards": writer.shards, "folder": identity.folder, **engine})


def finish(job: FeaturizeJob, summary: FeaturizeSummary) -> FeaturizeSummary:
    """Write the job's JSON report when it asks for one; return ``summary``."""
    if job.report is not None:
        write_json_atomic(job.report, summary.to_dict())
    return summary


def write_npz(path: Path, directory: ImageDirectory, result: ExtractResult, cache: FeatureCache,
              fingerprint: str) -> None:
    """Write the featurized images as an .npz loadable with ``allow_pickle=False``."""
    rows = [(entry, key) for entry, key in zip(directory.entries, result.keys) if key is not None]
    vectors = cache.get_many(fingerprint, [key for _, key in rows])
    rows = [(entry, key) for entry, key in rows if key in vectors]
    arrays = {
        "paths": np.array([entry.rel_path for entry, _ in rows], dtype=np.str_),
        "labels": np.array([entry.label for entry, _ in rows], dtype=np.int64),
        "label_names": np.array(directory.label_names, dtype=np.str_),
        "features": np.stack([vectors[key] for _, key in rows]).astype(np.float32),
    }
    with atomic_file(path) as fh:
        np.savez(fh, **arrays)
