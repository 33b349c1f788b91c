"""Atomic writes: a temp file beside the target, fsync, then rename over it.

A reader sees the old file or the new one, never half of one; a writer killed
mid-way leaves at most a hidden ``.NAME.*.tmp`` that the next write ignores.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """Return the process umask without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - non-Linux; not thread-safe, hence the /proc read first
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def sync_dir_best_effort(path: Path) -> None:
    """Fsync a directory so a rename in it survives a crash; some platforms refuse, which is fine."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class atomic_file:
    """Open a temp file beside ``path`` for binary writing; rename it over ``path`` on success."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600; give it open()'s mode
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise
        self.fh = os.fdopen(fd, "wb")
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        try:
            try:
                if exc_type is None:
                    self.fh.flush()
                    os.fsync(self.fh.fileno())
            finally:
                self.fh.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
                sync_dir_best_effort(self.path.parent)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_file(path) as fh:
        fh.write(json.dumps(data, indent=2, ensure_ascii=False).encode() + b"\n")
