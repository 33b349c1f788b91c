"""Helpers for tests and benchmarks that start servers and worker processes on 127.0.0.1."""

from __future__ import annotations

import glob
import socket
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Return the live (not zombie) pids whose parent is ``pid``, sorted (Linux /proc)."""
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(Path(stat).parent.name))
    return sorted(kids)
