"""The model repository: ``REPO/NAME/<integer version>/``, TensorFlow Serving's layout.

Names, versions and model cards: find models and versions, resolve what a user
typed ("REPO/NAME" for the newest version, "REPO/NAME/VERSION" for one), read a
version's model card, and publish a new version atomically (or keep a candidate
the publish gate rejected where no server looks). Only complete
versions count: a version directory appears by one rename once everything in it
is written (:func:`publish_version`), and hidden work directories are never
listed. Loading a version to predict with it is its kind's business
(:mod:`imgclf.core.saved_model` holds the steps they share).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imgclf.core import export_names as names
from imgclf.core.atomic import current_umask, write_json_atomic
from imgclf.core.errors import ModelNotFound, UsageError

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
VERSION_PATTERN = re.compile(r"[0-9]{1,18}")  # fits int64, as TF Serving parses it
_VERSION = VERSION_PATTERN
_MAX_PUBLISH_ATTEMPTS = 1000  # concurrent exports each take the next free integer
STALE_WORK_DIR_SECONDS = 3600.0  # a work directory untouched this long is a killed export's, not a running one's
# What a loader reads into memory, besides the card and labels: the graph, the weights, an OpenVINO featurizer.
MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
MODEL_FOLDERS = ("variables", "openvino")
DEFAULT_MAX_MODEL_BYTES = 1024 ** 3  # the real Inception-v3 export is about 100 MB; protobuf stops at 2 GB anyway
DEFAULT_MAX_CARD_BYTES = 16 * 1024 ** 2  # a card with 100,000 labels is about 2 MB


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe model name (one path component), else raise UsageError (a ValueError)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError("model name must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'; "
                         f"received {name!r}")
    return name


def integer_dirs(model_dir: Path) -> dict[int, Path]:
    """Return every integer-named directory of ``model_dir`` (complete or not) by version."""
    found: dict[int, Path] = {}
    try:
        entries = list(Path(model_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if _VERSION.fullmatch(entry.name) and entry.is_dir():
            found[int(entry.name)] = entry
    return found


def is_complete(version_dir: Path) -> bool:
    """Return whether ``version_dir`` holds a servable export."""
    return all((Path(version_dir) / required).is_file() for required in names.REQUIRED_FILES)


def _complete_versions(model_dir: Path) -> list[int]:
    return sorted(v for v, path in integer_dirs(model_dir).items() if is_complete(path))


def list_versions(repo: str | Path, name: str) -> list[int]:
    """Return the complete versions of model ``name`` in ``repo``, oldest first."""
    return _complete_versions(Path(repo) / validate_name(name))


def list_models(repo: str | Path) -> dict[str, list[int]]:
    """Return ``{name: versions}`` for every model in ``repo`` with at least one complete version."""
    models = {}
    try:
        entries = sorted(Path(repo).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return models
    for entry in entries:
        if entry.is_dir() and _NAME.fullmatch(entry.name):
            versions = _complete_versions(entry)
            if versions:
                models[entry.name] = versions
    return models


def resolve(spec: str | Path) -> Path:
    """Return the version directory ``spec`` names: "REPO/NAME" (newest version) or "REPO/NAME/VERSION".

    Raises:
        ModelNotFound: naming what the repository does hold.
    """
    path = Path(spec)
    if _VERSION.fullmatch(path.name):
        if is_complete(path):
            return path
        versions = _complete_versions(path.parent)
        if versions:  # the parent is a model: this names a version it lacks
            raise ModelNotFound(f"model {str(path.parent)!r} has no version {path.name}; "
                                f"versions: {_join(versions)}")
    if not _NAME.fullmatch(path.name):
        raise ModelNotFound(f"{str(spec)!r} names no model; expected REPO/NAME or REPO/NAME/VERSION")
    versions = _complete_versions(path)
    if versions:
        return path / str(versions[-1])
    repo = path.parent
    if not repo.is_dir():
        raise ModelNotFound(f"no model repository at {str(repo)!r} (from {str(spec)!r})")
    models = list_models(repo)
    held = ", ".join(f"{n} (versions {_join(v)})" for n, v in models.items()) or "none"
    if path.is_dir():
        raise ModelNotFound(f"model {str(path)!r} has no complete version yet; models in {str(repo)!r}: {held}")
    raise ModelNotFound(f"no model {path.name!r} in {str(repo)!r}; models there: {held}")


def _join(items) -> str:
    return ", ".join(str(i) for i in items) or "none"


def read_card(version_dir: str | Path) -> dict:
    """Return the model card (a JSON object) of a complete version directory.

    Raises:
        ModelNotFound: the directory is not a complete export, or its card is unreadable or not an object.
    """
    path = Path(version_dir)
    if not is_complete(path):
        missing = [f for f in names.REQUIRED_FILES if not (path / f).is_file()]
        raise ModelNotFound(f"{str(path)!r} is not an exported model version (missing {', '.join(missing)})")
    card_file = path / names.MODEL_CARD_FILE
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or UTF-8
        raise ModelNotFound(f"{str(card_file)!r} is not a readable model card ({type(exc).__name__}: {exc})") from exc
    if not isinstance(card, dict):
        raise ModelNotFound(f"{str(card_file)!r} is not a readable model card (a JSON object, not "
                            f"{type(card).__name__})")
    return card


def check_sizes(version_dir: str | Path, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
                max_card_bytes: int = DEFAULT_MAX_CARD_BYTES) -> int:
    """Refuse a version whose files are too large to read, from their sizes alone; return the model bytes.

    The graph and weights (:data:`MODEL_FILES`, every file under :data:`MODEL_FOLDERS`) together may hold
    ``max_model_bytes``; the model card and ``labels.txt`` each ``max_card_bytes`` (0: no limit). Nothing is
    read: a 2 GB sparse ``saved_model.pb`` is refused by its ``stat``.

    Raises:
        ValueError: naming the file (or the total), its size and the limit.
    """
    path = Path(version_dir)
    if max_card_bytes:
        for name in (names.MODEL_CARD_FILE, names.LABELS_FILE):
            size = _size(path / name)
            if size > max_card_bytes:
                raise ValueError(f"{name} of {str(path)!r} is {size:,} bytes; at most {max_card_bytes:,} are read "
                                 "(IMGCLF_MAX_MODEL_CARD_BYTES)")
    total, largest = 0, ("", 0)
    files = [path / name for name in MODEL_FILES]
    for folder in MODEL_FOLDERS:
        if (path / folder).is_dir():
            files += [Path(d) / f for d, _, found in os.walk(path / folder) for f in found]
    for file in files:
        size = _size(file)
        total += size
        largest = max(largest, (os.path.relpath(file, path), size), key=lambda item: item[1])
    if max_model_bytes and total > max_model_bytes:
        raise ValueError(f"the model files of {str(path)!r} hold {total:,} bytes ({largest[0]}: {largest[1]:,}); "
                         f"at most {max_model_bytes:,} are loaded (IMGCLF_MAX_MODEL_BYTES)")
    return total


def _size(path: Path) -> int:
    """Return the size of a file (0 when there is none); a link's target counts."""
    try:
        return os.stat(path).st_size if path.is_file() else 0
    except OSError:
        return 0


def publish_version(repo: str | Path, name: str, write: Callable[[Path], dict]) -> Path:
    """Write a new version of model ``name`` in ``repo`` and publish it by one rename; return its directory.

    ``write(work)`` fills the hidden work directory ``work`` and returns the model card (without
    ``version``, which is added here). Leftovers of killed exports are removed first; on any error
    the work directory is removed and nothing is published.

    Raises:
        ValueError: ``name`` is not a safe model name.
    """
    model_dir = _model_dir(repo, name)
    work = Path(tempfile.mkdtemp(prefix=names.TEMP_PREFIX, dir=model_dir))
    try:
        return _publish(work, model_dir, write(work))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def keep_rejected(repo: str | Path, name: str, write: Callable[[Path], dict]) -> Path:
    """Write a candidate the publish gate rejected to ``REPO/NAME/rejected/<UTC time>/``; return that directory.

    The same care as :func:`publish_version` (a hidden work directory, synced, then one rename), but
    the name is a timestamp, never an integer: no server lists it and the next version number is not
    taken. ``write(work)`` returns the model card, written as it is.

    Raises:
        ValueError: ``name`` is not a safe model name.
    """
    model_dir = _model_dir(repo, name)
    rejected = model_dir / names.REJECTED_DIR
    rejected.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=names.TEMP_PREFIX, dir=model_dir))
    try:
        write_json_atomic(work / names.MODEL_CARD_FILE, write(work))
        _finish_tree(work)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for attempt in range(_MAX_PUBLISH_ATTEMPTS):  # two rejections in one second: -1, -2, ...
            target = rejected / (stamp if attempt == 0 else f"{stamp}-{attempt}")
            if target.exists():  # rename would replace an empty directory
                continue
            try:
                os.rename(work, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            _sync_dir(rejected)
            _sync_dir(model_dir)
            return target
        raise RuntimeError(f"could not find a free name in {str(rejected)!r}")  # pragma: no cover
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _model_dir(repo: str | Path, name: str) -> Path:
    """Return ``REPO/NAME`` (created), after removing the work directories of killed exports from it."""
    validate_name(name)
    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs(model_dir)
    return model_dir


def remove_stale_work_dirs(model_dir: Path, older_than: float = STALE_WORK_DIR_SECONDS) -> list[Path]:
    """Remove the work directories of killed exports from ``model_dir``; return the ones removed.

    Only those in which nothing has changed for ``older_than`` seconds: an export running now in
    another process writes into its own all the time. Nothing lists either kind; this only frees
    the disk. Never fails the export that calls it.
    """
    removed = []
    for entry in Path(model_dir).glob(f"{names.TEMP_PREFIX}*"):
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            newest = os.lstat(entry).st_mtime
            for dirpath, dirnames, filenames in os.walk(entry):
                for name in dirnames + filenames:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
        except OSError:  # removed meanwhile (by another export), or unreadable: leave it
            continue
        if time.time() - newest > older_than:
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by an export killed %.0f minutes ago", entry, (time.time() - newest) / 60)
            removed.append(entry)
    return removed


def _publish(work: Path, model_dir: Path, card: dict) -> Path:
    """Write the card, sync ``work`` and rename it to the next free integer version; return the new directory."""
    for _ in range(_MAX_PUBLISH_ATTEMPTS):
        version = max(integer_dirs(model_dir), default=0) + 1
        write_json_atomic(work / names.MODEL_CARD_FILE, {**card, "version": version})
        _finish_tree(work)
        target = model_dir / str(version)
        try:
            os.rename(work, target)  # fails when another export took this number (non-empty directory)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        _sync_dir(model_dir)
        return target
    raise RuntimeError(f"could not find a free version number in {str(model_dir)!r}")  # pragma: no cover


def _finish_tree(root: Path) -> None:
    """Give every file and directory under ``root`` the umask's permissions and fsync it.

    The temp files and directory were created private (0600/0700); a server
    running as another user must be able to read the published version.
    """
    umask = current_umask()
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            os.chmod(path, 0o666 & ~umask)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(dirpath, 0o777 & ~umask)
        _sync_dir(Path(dirpath))


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
