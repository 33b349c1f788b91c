"""`imgclf featurize`: every image of a labelled folder → a cached bottleneck vector.

Skips and reports bad files, finishes the rest, resumes from the cache after
being killed, and can write the features as a portable ``.npz``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.core.atomic import atomic_file, write_json_atomic
from imgclf.featurizer.extractor import Featurizer, FeaturizerConfig
from imgclf.featurizer.feature_cache import FeatureCache
from imgclf.featurizer.image_dir import ImageDirectory, scan_image_dir
from imgclf.featurizer.pipeline import ExtractResult, WorkItem, extract

log = logging.getLogger(__name__)


@dataclass
class FeaturizeJob:
    """Everything `imgclf featurize` needs."""

    image_dir: Path  # one sub-folder per class
    featurizer: FeaturizerConfig  # the graph and how to run it
    cache: Path  # SQLite feature cache (created when missing)
    output: Path | None = None  # optional .npz with paths, labels, label_names, features
    report: Path | None = None  # optional JSON report (counts, skipped files and reasons)
    batch_size: int = 32  # images per graph run and per committed transaction
    decode_threads: int = 0  # 0 = one per usable CPU
    progress: bool | None = None  # None = a progress bar only on a terminal


@dataclass
class FeaturizeSummary:
    """The outcome of a featurize job."""

    directory: ImageDirectory
    extract: ExtractResult
    featurizer: dict
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    @property
    def featurized(self) -> int:
        """Return how many images have a vector now."""
        return self.extract.succeeded

    def to_dict(self) -> dict:
        """Return the report as JSON-ready data."""
        seconds = self.extract.seconds
        return {
            "image_dir": str(self.directory.root),
            "label_names": self.directory.label_names,
            "images": len(self.directory.entries),
            "featurized": self.featurized,
            "from_cache": self.extract.cached,
            "computed": self.extract.computed,
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "ignored_files": self.directory.ignored,
            "seconds": round(seconds, 3),
            "images_per_second": round(self.extract.computed / seconds, 2) if seconds > 0 else None,
            "featurizer": self.featurizer,
        }

    def format(self) -> str:
        """Return a human-readable summary."""
        d = self.to_dict()
        counts = {name: 0 for name in self.directory.label_names}
        for entry, key in zip(self.directory.entries, self.extract.keys):
            if key is not None:
                counts[self.directory.label_names[entry.label]] += 1
        lines = [
            f"featurized {d['featurized']} of {d['images']} images in {d['seconds']:.1f} s "
            f"({d['from_cache']} from cache, {d['computed']} computed"
            + (f", {d['images_per_second']:.1f} img/s" if d["computed"] else "") + ")",
            f"featurizer: {self.featurizer.get('backend', 'tensorflow')} {self.featurizer['precision']}, "
            f"{self.featurizer['dim']}-d, "
            f"graph sha256 {self.featurizer['graph_sha256'][:12]}",
            "classes:",
            *(f"  {label:>3}  {name:<24} {counts[name]:>6} images"
              for label, name in enumerate(self.directory.label_names)),
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines.extend(f"  {path}: {reason}" for path, reason in self.skipped)
        return "\n".join(lines)


def run_featurize(job: FeaturizeJob) -> FeaturizeSummary:
    """Featurize a labelled image folder into the cache (and optionally an .npz)."""
    directory = scan_image_dir(job.image_dir)
    items = [WorkItem(entry.rel_path, entry.path.read_bytes) for entry in directory.entries]
    log.info("%d images in %d classes under %s", len(items), len(directory.label_names), directory.root)
    featurizer = Featurizer(job.featurizer)
    try:
        with FeatureCache(job.cache) as cache:
            result = extract(featurizer, items, cache, batch_size=job.batch_size,
                             decode_threads=job.decode_threads, progress=job.progress)
            summary = FeaturizeSummary(directory, result, featurizer.describe(),
                                       directory.skipped + result.failures)
            if job.output is not None and summary.featurized:
                write_npz(job.output, directory, result, cache, featurizer.fingerprint)
    finally:
        featurizer.close()
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
