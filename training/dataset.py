"""Turn a labelled image folder into split feature arrays, featurizing only what is not cached.

Reuses the featurizer's batch pipeline (threads, batches, progress bar, per-file
failures) and feature cache. Distorted copies of training images, when asked
for, go through the same pipeline under their own cache keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from imgclf.featurizer.images.folders import ImageDirectory, ImageEntry, scan_image_dir
from imgclf.featurizer.jobs.pipeline import ExtractResult, WorkItem, extract
from imgclf.featurizer.runtime.featurizer import Featurizer
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.training.augment import AugmentConfig, distort
from imgclf.training.split import SPLITS, SplitConfig, split_entries

log = logging.getLogger(__name__)


@dataclass
class SplitArrays:
    """The featurized images of one set."""

    features: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int64 [N]
    paths: list[str]  # relative paths (a distorted copy is "path#variant-index")


@dataclass
class Dataset:
    """Feature arrays per set, with what it took to make them."""

    label_names: list[str]
    splits: dict[str, SplitArrays]
    directory: ImageDirectory
    extract: ExtractResult
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def sizes(self) -> dict[str, int]:
        """Return the number of vectors per set."""
        return {name: len(arrays.labels) for name, arrays in self.splits.items()}


def build_dataset(images: Path | ImageDirectory, featurizer: Featurizer, cache: FeatureCache,
                  split: SplitConfig = SplitConfig(), augment: AugmentConfig = AugmentConfig(), batch_size: int = 32,
                  decode_threads: int = 0, progress: bool | None = None) -> Dataset:
    """Scan, split (checking the split before any work), featurize and gather the arrays.

    ``images`` is a labelled image folder, or its scan (:func:`scan_image_dir`) when the caller made one.
    """
    augment.validate()
    directory = images if isinstance(images, ImageDirectory) else scan_image_dir(images)
    sets = split_entries(directory, split)  # raises before any featurizing when a class is too small
    variants = augment.variants()
    items: list[WorkItem] = []
    owners: list[tuple[str, int]] = []  # (set name, label) per item
    for name in SPLITS:
        for entry in sets[name]:
            items.append(WorkItem(entry.rel_path, entry.path.read_bytes))
            owners.append((name, entry.label))
            if name == "train":
                for index, variant in enumerate(variants):
                    items.append(WorkItem(f"{entry.rel_path}#aug{index}", entry.path.read_bytes, variant,
                                          partial(distort, config=augment)))
                    owners.append((name, entry.label))
    log.info("featurizing %d images (%d distorted copies)", len(items),
             len(items) - sum(len(v) for v in sets.values()))
    result = extract(featurizer, items, cache, batch_size=batch_size, decode_threads=decode_threads,
                     progress=progress, desc="featurize")
    vectors = cache.get_many(featurizer.fingerprint, [k for k in result.keys if k is not None])
    gathered: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in SPLITS}
    for item, (name, label), key in zip(items, owners, result.keys):
        if key is None or key not in vectors:
            continue
        features, labels, paths = gathered[name]
        features.append(vectors[key])
        labels.append(label)
        paths.append(item.name)
    splits = {}
    for name, (features, labels, paths) in gathered.items():
        matrix = np.stack(features).astype(np.float32) if features else np.zeros((0, featurizer.dim), np.float32)
        splits[name] = SplitArrays(matrix, np.asarray(labels, dtype=np.int64), paths)
    _check_classes_survived(splits, directory.label_names)
    return Dataset(directory.label_names, splits, directory, result, directory.skipped + result.failures)


def build_dataset_from_features(dest: str, featurizer: Featurizer, split: SplitConfig = SplitConfig()) -> Dataset:
    """Split a feature dataset's rows of ``featurizer`` (local folder or URI) as :func:`build_dataset` splits images.

    The label ids are the sorted class names of the rows; the split is the same
    stable hash of each relative path. Nothing reads images or a SQLite cache.
    """
    from imgclf.featurizer.store.dataset import load_features

    table, entry = load_features(dest, featurizer.identity)
    label_names = sorted(set(table.label_names))
    ids = {name: i for i, name in enumerate(label_names)}
    root = Path(str(dest))
    entries = [ImageEntry(path, ids[name], root / path) for path, name in zip(table.paths, table.label_names)]
    directory = ImageDirectory(root, label_names, entries)
    row_of = {path: i for i, path in enumerate(table.paths)}
    sets = split_entries(directory, split)
    splits = {}
    for name in SPLITS:
        rows = [row_of[e.rel_path] for e in sets[name]]
        splits[name] = SplitArrays(table.features[rows] if rows else np.zeros((0, featurizer.dim), np.float32),
                                   np.asarray([entries[i].label for i in rows], dtype=np.int64),
                                   [table.paths[i] for i in rows])
    _check_classes_survived(splits, label_names)
    skipped = [(bad["path"], bad["reason"]) for bad in entry.get("bad_files", [])]
    log.info("%d feature rows from %s (%d classes)", len(entries), dest, len(label_names))
    return Dataset(label_names, splits, directory, ExtractResult(keys=list(table.image_sha256),
                                                                cached=len(entries)), skipped)


def _check_classes_survived(splits: dict[str, SplitArrays], label_names: list[str]) -> None:
    """Fail when bad files left a class with no training image; warn when one lost its validation or test set."""
    for name, arrays in splits.items():
        missing = sorted(set(range(len(label_names))) - set(arrays.labels.tolist()))
        if not missing:
            continue
        names = ", ".join(label_names[i] for i in missing)
        if name == "train":
            raise ValueError(f"no usable training image left for class(es) {names}: every one was skipped")
        log.warning("no usable %s image for class(es) %s (bad files were skipped)", name, names)
