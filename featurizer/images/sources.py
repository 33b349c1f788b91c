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
from imgclf.featurizer.images.folders import ImageDirectory, labelled_entries, scan_image_dir
from imgclf.featurizer.store.object_store import Location, is_uri, open_location


@dataclass
class ImageSource(ImageDirectory):
    """An :class:`ImageDirectory` read through a :class:`Location`: a local folder or a bucket prefix.

    Below a bucket prefix, ``root`` and the entries' ``path`` are the URI's (for reports); :meth:`read` reads.
    """

    location: Location = field(kw_only=True)

    def read(self, rel_path: str) -> bytes:
        """Return the encoded bytes of one image."""
        return self.location.read_bytes(rel_path)


def open_image_source(source: str | os.PathLike) -> ImageSource:
    """List the labelled images of ``source`` (a folder or ``s3://``/``gs://`` URI).

    Raises:
        ValueError: not a class layout (no class sub-folder with images), or a missing local folder.
        StorageError: the store does not answer, refuses the credentials or lacks the bucket.
    """
    if not is_uri(source):
        directory = scan_image_dir(source)
        return ImageSource(directory.root, directory.label_names, directory.entries, directory.skipped,
                           directory.ignored, location=open_location(directory.root))
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
    root = Path(location.uri)
    label_names, entries = labelled_entries(root, per_class, repr(str(source)), str(source).rstrip("/"))
    return ImageSource(root, label_names, entries, [], ignored, location=location)
