"""Find the labelled images in an image folder: one sub-folder per class.

Sorted class-folder names define the label ids. Extensions are matched
case-insensitively; hidden files and folders and non-image files are ignored;
a symlink that points outside the folder is refused and reported.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.featurizer.images.decode import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageEntry:
    """One image file of a class folder."""

    rel_path: str  # path relative to the image folder, with "/" separators
    label: int  # index into ImageDirectory.label_names
    path: Path  # absolute path


@dataclass
class ImageDirectory:
    """The result of scanning an image folder."""

    root: Path
    label_names: list[str]
    entries: list[ImageEntry]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    ignored: int = 0  # hidden and non-image files, loose files at the top level


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
    per_class: dict[str, list[Path]] = {}

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
            per_class[child.name] = files
        elif not child_skipped:
            log.warning("class folder %r holds no images; it gets no label", rel)

    if not per_class:
        raise ValueError(f"image folder {str(root)!r} has no class sub-folder with images "
                         f"(expected {root}/<class>/<image>{'|'.join(IMAGE_EXTENSIONS)})")
    label_names = sorted(per_class)
    entries = [ImageEntry(path.relative_to(root).as_posix(), label, path)
               for label, name in enumerate(label_names) for path in per_class[name]]
    entries.sort(key=lambda e: e.rel_path)
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
