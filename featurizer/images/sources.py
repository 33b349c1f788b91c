"""The labelled images of a SOURCE: a local folder or an object-store prefix, one sub-folder per class.

A local folder is scanned by :func:`imgclf.featurizer.images.folders.scan_image_dir`
(symlink rules included); a bucket prefix is listed once and follows the same
rules: sorted class-folder names are the label ids, image extensions match
case-insensitively, hidden files and folders and loose top-level files are
ignored. A SOURCE with no class folder holding an image is an error before any
work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.featurizer.images.decode import IMAGE_EXTENSIONS
from imgclf.featurizer.images.folders import ImageDirectory, ImageEntry, scan_image_dir
from imgclf.featurizer.store.object_store import Location, is_uri, open_location


@dataclass(frozen=True)
class SourceImage:
    """One labelled image of a SOURCE."""

    rel_path: str  # "<class>/<...>/<file>", "/"-separated
    label: int  # index into ImageSource.label_names


@dataclass
class ImageSource:
    """The images of a SOURCE and how to read them."""

    location: Location
    label_names: list[str]
    images: list[SourceImage]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    ignored: int = 0  # hidden and non-image files, loose files at the top level

    def read(self, rel_path: str) -> bytes:
        """Return the encoded bytes of one image."""
        return self.location.read_bytes(rel_path)

    def as_directory(self) -> ImageDirectory:
        """Return the listing as an :class:`ImageDirectory` (for reports; a URI's entries have relative paths)."""
        root = Path(self.location.root) if not self.location.remote else Path(self.location.uri)
        entries = [ImageEntry(image.rel_path, image.label, root / image.rel_path) for image in self.images]
        return ImageDirectory(root, self.label_names, entries, list(self.skipped), self.ignored)


def open_image_source(source: str | os.PathLike) -> ImageSource:
    """List the labelled images of ``source`` (a folder or ``s3://``/``gs://`` URI).

    Raises:
        ValueError: not a class layout (no class sub-folder with images), or a missing local folder.
        StorageError: the store does not answer, refuses the credentials or lacks the bucket.
    """
    if not is_uri(source):
        directory = scan_image_dir(source)
        location = open_location(directory.root)
        return ImageSource(location, directory.label_names,
                           [SourceImage(e.rel_path, e.label) for e in directory.entries],
                           directory.skipped, directory.ignored)
    location = open_location(source)
    per_class: dict[str, list[str]] = {}
    ignored = 0
    for rel, _size in location.list_files():
        parts = rel.split("/")
        if len(parts) < 2 or any(part.startswith(".") or not part for part in parts) \
                or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            ignored += 1
            continue
        per_class.setdefault(parts[0], []).append(rel)
    if not per_class:
        raise ValueError(f"{str(source)!r} has no class sub-folder with images "
                         f"(expected {str(source).rstrip('/')}/<class>/<image>{'|'.join(IMAGE_EXTENSIONS)})")
    label_names = sorted(per_class)
    images = sorted((SourceImage(rel, label) for label, name in enumerate(label_names) for rel in per_class[name]),
                    key=lambda image: image.rel_path)
    return ImageSource(location, label_names, images, [], ignored)
