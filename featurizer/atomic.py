"""Atomic writes: a temp file beside the target, fsync, then rename over it.

A reader sees the old file or the new one, never half of one; a writer killed
mid-way leaves at most a hidden ``.NAME.*.tmp`` that the next write ignores.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class atomic_file:  # noqa: N801 - used like open()
    """Open a temp file beside ``path`` for binary writing; rename it over ``path`` on success."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.fh = os.fdopen(fd, "wb")
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.fh.flush()
                os.fsync(self.fh.fileno())
            self.fh.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_file(path) as fh:
        fh.write(json.dumps(data, indent=2, ensure_ascii=False).encode() + b"\n")
