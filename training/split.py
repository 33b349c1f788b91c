"""Stable train/validation/test split by a hash of each image's path relative to the image folder.

The split of a file depends only on its relative path, so it does not change
when the folder moves or other images are added. Files whose names contain
``_nohash_`` share a bucket with their base name (``dog_nohash_1.jpg`` and
``dog_nohash_2.jpg`` hash as ``dog``), so near-duplicates never straddle train
and test. Every class with at least 3 groups gets at least one validation and
one test image: when the hash leaves a set empty, the group nearest to it in
hash order moves over.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass

from imgclf.featurizer.images.folders import ImageDirectory, ImageEntry

SPLITS = ("train", "validation", "test")
_NOHASH = re.compile(r"_nohash_.*$")
_MIN_GROUPS = 3  # one each for train, validation and test


@dataclass(frozen=True)
class SplitConfig:
    """Percentages of each class's images per set (must sum to 100)."""

    train: float = 80.0  # percent of images to train on
    validation: float = 10.0  # percent for early stopping and model selection
    test: float = 10.0  # percent held out for the final metrics

    def validate(self) -> None:
        """Raise ValueError unless every percentage is positive and they sum to 100."""
        values = (self.train, self.validation, self.test)
        if any(v <= 0 for v in values) or abs(sum(values) - 100.0) > 1e-6:
            raise ValueError("split percentages must be positive and sum to 100; received "
                             f"train={self.train}, validation={self.validation}, test={self.test}")


def hash_key(rel_path: str) -> str:
    """Return the string a file is hashed by: its relative path, with ``_nohash_…`` cut from the stem."""
    folder, _, name = rel_path.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    base = _NOHASH.sub("", stem)
    return f"{folder}/{base}" if folder else base


def hash_fraction(key: str) -> float:
    """Map a hash key to a stable number in [0, 1)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:15], 16) / float(16 ** 15)


def check_splittable(directory: ImageDirectory) -> None:
    """Raise ValueError, before any work, when the folder cannot be split into three non-empty sets."""
    if len(directory.label_names) < 2:
        raise ValueError(f"need at least 2 classes to train a classifier; {directory.root} has "
                         f"{len(directory.label_names)}: {directory.label_names}")
    groups: dict[int, set[str]] = defaultdict(set)
    for entry in directory.entries:
        groups[entry.label].add(hash_key(entry.rel_path))
    small = [f"{directory.label_names[label]} ({len(groups[label])})"
             for label in range(len(directory.label_names)) if len(groups[label]) < _MIN_GROUPS]
    if small:
        raise ValueError(f"every class needs at least {_MIN_GROUPS} distinct images (files sharing a "
                         f"_nohash_ base count once) for train, validation and test; too few in: "
                         + ", ".join(small))


def split_entries(directory: ImageDirectory, config: SplitConfig = SplitConfig()) -> dict[str, list[ImageEntry]]:
    """Return ``{"train": [...], "validation": [...], "test": [...]}`` (entries sorted by path)."""
    config.validate()
    check_splittable(directory)
    by_class: dict[int, dict[str, list[ImageEntry]]] = defaultdict(lambda: defaultdict(list))
    for entry in directory.entries:
        by_class[entry.label][hash_key(entry.rel_path)].append(entry)
    train_cut = config.train / 100.0
    val_cut = (config.train + config.validation) / 100.0
    result: dict[str, list[ImageEntry]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):
        groups = sorted(by_class[label], key=hash_fraction)  # ascending hash order
        sets: dict[str, list[str]] = {name: [] for name in SPLITS}
        for key in groups:
            fraction = hash_fraction(key)
            sets["train" if fraction < train_cut else "validation" if fraction < val_cut else "test"].append(key)
        _fill_empty_sets(sets)
        for name in SPLITS:
            for key in sets[name]:
                result[name].extend(by_class[label][key])
    for name in SPLITS:
        result[name].sort(key=lambda e: e.rel_path)
    return result


def _fill_empty_sets(sets: dict[str, list[str]]) -> None:
    """Move groups (kept in ascending hash order per set) so that no set is empty."""
    def donor(exclude: str) -> str:
        candidates = [name for name in SPLITS if name != exclude and len(sets[name]) > 1]
        return max(candidates, key=lambda name: len(sets[name]))

    # Validation sits between train and test in hash order: take its nearest neighbour.
    if not sets["validation"]:
        source = donor("validation")
        sets["validation"].append(sets[source].pop(-1 if source == "train" else 0))
    if not sets["test"]:
        source = donor("test")
        sets["test"].append(sets[source].pop(-1))
    if not sets["train"]:
        source = donor("train")
        sets["train"].append(sets[source].pop(0))
