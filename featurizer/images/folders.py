"""Find the labelled images in an image folder: one sub-folder per class.

Sorted class-folder names define the label ids. Extensions are matched
case-insensitively; hidden files and folders and non-image files are ignored;
a symlink that points outside the folder is refused and reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.featurizer.images.decode import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageEntry:
    """One image file of a class folder."""

    rel_path: str  # path relative to the image folder, with "/" separators
    label: int  # index into ImageDirectory.label_names
    path: Path  # absolute path (below a bucket prefix: the URI's, for reports; read with ImageSource.read)


@dataclass
class ImageDirectory:
    """The labelled images of an image folder: class names (the label ids), image files, what was passed over."""

    root: Path
    label_names: list[str]
    entries: list[ImageEntry]  # sorted by relative path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    ignored: int = 0  # hidden and non-image files, loose files at the top level

    def read(self, rel_path: str) -> bytes:
        """Return the encoded bytes of one image (``rel_path`` as in its entry)."""
        return (self.root / rel_path).read_bytes()


def labelled_entries(root: Path, per_class: Mapping[str, list[str]], where: str, expected: str
                     ) -> tuple[list[str], list[ImageEntry]]:
    """Return the label names (the sorted class names) and the entries, sorted by relative path, of ``per_class``.

    Args:
        per_class: class name → relative paths of its images.
        where: the folder as the error names it; ``expected``: its root in the example layout.

    Raises:
        ValueError: no class holds an image.
    """
    if not per_class:
        raise ValueError(f"{where} has no class sub-folder with images "
                         f"(expected {expected}/<class>/<image>{'|'.join(IMAGE_EXTENSIONS)})")
    label_names = sorted(per_class)
    entries = [ImageEntry(rel, label, root / rel) for label, name in enumerate(label_names) for rel in per_class[name]]
    entries.sort(key=lambda e: e.rel_path)
    return label_names, entries


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _inside(path: Path, root_real: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(root_real)
        return True
    except ValueError:
        return False


def scan_image_dir(root: str | os.PathLike) -> ImageDirectory:
    """Scan ``root`` and return its classes and image files.

    Raises:
        ValueError: ``root`` is missing, not a folder, or has no class folder with an image.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist or is not a folder")
    root = root.absolute()
    root_real = Path(os.path.realpath(root))
    skipped: list[tuple[str, str]] = []
    ignored = 0
    per_class: dict[str, list[str]] = {}

    for child in sorted(root.iterdir(), key=lambda p: p.name):
        rel = child.name
        if _is_hidden(child.name):
            ignored += 1
            continue
        if child.is_symlink() and not _inside(child, root_real):
            skipped.append((rel, "symlink leaves the image folder; refused"))
            continue
        if not child.is_dir():
            ignored += 1  # loose files at the top level belong to no class
            continue
        files, child_skipped, child_ignored = _class_files(child, root, root_real)
        skipped.extend(child_skipped)
        ignored += child_ignored
        if files:
            per_class[child.name] = [path.relative_to(root).as_posix() for path in files]
        elif not child_skipped:
            log.warning("class folder %r holds no images; it gets no label", rel)

    label_names, entries = labelled_entries(root, per_class, f"image folder {str(root)!r}", str(root))
    return ImageDirectory(root, label_names, entries, skipped, ignored)


def _class_files(class_dir: Path, root: Path, root_real: Path) -> tuple[list[Path], list[tuple[str, str]], int]:
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
        here = Path(dirpath)
        kept_dirs = []
        for name in sorted(dirnames):
            sub = here / name
            if _is_hidden(name):
                ignored += 1
            elif sub.is_symlink():
                if not _inside(sub, root_real):
                    skipped.append((sub.relative_to(root).as_posix(), "symlink leaves the image folder; refused"))
                # a symlinked folder inside the image folder is already scanned where it lives
            else:
                kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            path = here / name
            if _is_hidden(name) or not name.lower().endswith(IMAGE_EXTENSIONS):
                ignored += 1
                continue
            if path.is_symlink() and not _inside(path, root_real):
                skipped.append((path.relative_to(root).as_posix(), "symlink leaves the image folder; refused"))
                continue
            files.append(path)
    return files, skipped, ignored
