"""A SQLite cache of bottleneck vectors, keyed by featurizer fingerprint and image sha256.

The key holds no path, so a renamed or moved image is still a hit; a changed
image (new sha256) or another graph, bottleneck tensor or precision (new
fingerprint) is a miss. The database runs in WAL mode: several readers and one
writer at a time, and a writer killed at any moment loses only the batch it
had not committed yet.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS featurizers (
    fingerprint TEXT PRIMARY KEY,   -- sha256 over graph sha256, bottleneck, precision, preprocessing
    description TEXT NOT NULL,      -- JSON: graph sha256, tensor names, precision, dim
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS features (
    fingerprint TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,           -- little-endian float32[dim]
    created REAL NOT NULL,
    PRIMARY KEY (fingerprint, image_sha256)
) WITHOUT ROWID;
"""
_LOOKUP_CHUNK = 500  # keys per SELECT (SQLite's variable limit is 32766; stay well below)


class FeatureCache:
    """Bottleneck vectors on disk. One instance per thread (SQLite connections are not shared)."""

    def __init__(self, path: str | os.PathLike, readonly: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # as_uri() percent-encodes the path: a '#', '?' or '%' in it would otherwise name another file.
        uri = self.path.absolute().as_uri() + ("?mode=ro" if readonly else "")
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
            try:
                self._set_up(readonly)
            except BaseException:
                self.conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{str(self.path)!r} is not a usable imgclf feature cache: {exc}") from exc

    def _set_up(self, readonly: bool) -> None:
        if not readonly:
            self.conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a killed process.
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._check_schema()

    def _check_schema(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {row[0] if row else None}, expected {SCHEMA_VERSION}")

    def register_featurizer(self, fingerprint: str, description: Mapping) -> None:
        """Record what a fingerprint stands for (idempotent)."""
        self.conn.execute("INSERT OR IGNORE INTO featurizers VALUES (?, ?, ?)",
                          (fingerprint, json.dumps(dict(description), sort_keys=True), time.time()))

    def get_many(self, fingerprint: str, image_sha256s: Iterable[str]) -> dict[str, np.ndarray]:
        """Return ``{sha256: float32 vector}`` for the keys that are cached."""
        keys = list(dict.fromkeys(image_sha256s))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start:start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT image_sha256, dim, vector FROM features WHERE fingerprint = ? AND image_sha256 IN ({marks})",
                [fingerprint, *chunk])
            for sha, dim, blob in rows:
                if isinstance(blob, bytes) and len(blob) == 4 * dim:  # anything else is corruption: a miss
                    found[sha] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return found

    def keys(self, fingerprint: str) -> set[str]:
        """Return the set of image keys cached for ``fingerprint``."""
        rows = self.conn.execute("SELECT image_sha256 FROM features WHERE fingerprint = ?", (fingerprint,))
        return {row[0] for row in rows}

    def get(self, fingerprint: str, image_sha256: str) -> np.ndarray | None:
        """Return one cached vector, or None."""
        return self.get_many(fingerprint, [image_sha256]).get(image_sha256)

    def put_many(self, fingerprint: str, items: Mapping[str, np.ndarray]) -> None:
        """Store vectors in one transaction (all of them, or none if interrupted)."""
        now = time.time()
        rows = []
        for sha, vector in items.items():
            vector = np.asarray(vector, dtype="<f4").reshape(-1)
            if not np.all(np.isfinite(vector)):
                raise ValueError(f"refusing to cache a non-finite feature vector for image {sha}")
            rows.append((fingerprint, sha, vector.size, vector.tobytes(), now))
        with self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", rows)

    def transaction(self):
        """Return a context manager wrapping a write transaction."""
        return _Transaction(self.conn)

    def count(self, fingerprint: str | None = None) -> int:
        """Return how many vectors are cached (for one fingerprint, or in all)."""
        if fingerprint is None:
            return self.conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM features WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]

    def integrity_check(self) -> str:
        """Return SQLite's own integrity verdict ("ok" when healthy)."""
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
            self.conn.execute("ROLLBACK")
        return False
