"""Feature datasets: bottleneck vectors as Parquet shards in a folder or bucket, the cache's role at scale.

Layout of DEST (a local folder or an ``s3://``/``gs://`` prefix)::

    DEST/dataset.json                          what is there (rewritten, whole, after every shard)
    DEST/featurizer-<fingerprint[:16]>/        one folder per featurizer identity: never mixed
        part-<time ns>-<random>.parquet        one row per image

A row holds ``path`` (relative to SOURCE), ``label`` and ``label_name``,
``image_sha256``, ``featurizer_sha256`` (the featurizer fingerprint: graph sha256,
tensors, precision, preprocessing, …) and ``precision``, and ``features``, a
fixed-size list of float32. ``dataset.json`` holds, per identity, the identity,
the label names, counts and the bad files of the last run with their reasons.

Atomic per shard: a shard is serialised in memory and written whole (temp file
and rename locally; one object upload on a store), so a reader never takes a
partial shard. A reader takes every ``part-*.parquet`` of the identity's folder
(names starting with "." are temp files); when several rows name the same path,
the one from the newest shard wins. Resume: an image whose (path, sha256) is
already there is skipped; one whose sha256 is there under another path gets a
row with the stored vector, without running the graph.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from imgclf.featurizer.store.identity import FeaturizerIdentity
from imgclf.featurizer.store.object_store import Location, open_location, require

log = logging.getLogger(__name__)

FORMAT = "imgclf-feature-dataset/1"
DATASET_FILE = "dataset.json"
SHARD_PREFIX, SHARD_SUFFIX = "part-", ".parquet"
DEFAULT_SHARD_ROWS = 1024  # ~8 MB of features per shard at 2048-d


@dataclass
class FeatureTable:
    """The rows of one identity, one per path (newest shard wins), sorted by path."""

    paths: list[str]
    label_names: list[str]  # per row
    image_sha256: list[str]
    features: np.ndarray  # float32 [N, D]


def _schema(dim: int):
    pa = require("pyarrow", "feature datasets")
    return pa.schema([("path", pa.string()), ("label", pa.int32()), ("label_name", pa.string()),
                      ("image_sha256", pa.string()), ("featurizer_sha256", pa.string()),
                      ("precision", pa.string()), ("features", pa.list_(pa.float32(), dim))])


def read_manifest(location: Location) -> dict:
    """Return DEST's ``dataset.json`` (an empty manifest when there is none)."""
    if not location.exists(DATASET_FILE):
        return {"format": FORMAT, "featurizers": {}}
    try:
        manifest = json.loads(location.read_bytes(DATASET_FILE))
    except ValueError as exc:
        raise ValueError(f"{location.display(DATASET_FILE)} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{location.display(DATASET_FILE)} is not an imgclf feature dataset "
                         f"(format {manifest.get('format')!r}, expected {FORMAT!r})")
    return manifest


def shard_names(location: Location, identity_folder: str) -> list[str]:
    """Return the complete shards of one identity folder, oldest first."""
    names = []
    for rel, _ in location.list_files(identity_folder, recursive=False):
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX):
            names.append(f"{identity_folder}/{name}")
    return sorted(names)


def _read_shard(location: Location, rel: str, columns: Iterable[str]):
    pq = require("pyarrow.parquet", "feature datasets")
    return pq.read_table(io.BytesIO(location.read_bytes(rel)), columns=list(columns))


def read_rows(location: Location, identity: FeaturizerIdentity, with_features: bool = True) -> FeatureTable:
    """Return the rows of ``identity`` in DEST (newest row per path), sorted by path."""
    columns = ["path", "label_name", "image_sha256", "featurizer_sha256"] + (["features"] if with_features else [])
    latest: dict[str, tuple] = {}
    for rel in shard_names(location, identity.folder):
        table = _read_shard(location, rel, columns)
        fingerprints = set(table.column("featurizer_sha256").to_pylist())
        if fingerprints - {identity.fingerprint}:
            raise ValueError(f"{location.display(rel)} holds rows of another featurizer ({sorted(fingerprints)})")
        paths, names, shas = (table.column(c).to_pylist() for c in ("path", "label_name", "image_sha256"))
        if with_features:
            flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            vectors = np.asarray(flat, dtype=np.float32).reshape(len(paths), identity.dim)
        for i, path in enumerate(paths):
            latest[path] = (names[i], shas[i], vectors[i] if with_features else None)
    ordered = sorted(latest)
    features = np.stack([latest[p][2] for p in ordered]).astype(np.float32) if with_features and ordered \
        else np.zeros((0, identity.dim), np.float32)
    return FeatureTable(ordered, [latest[p][0] for p in ordered], [latest[p][1] for p in ordered], features)


class FeatureDatasetWriter:
    """Append rows of one featurizer identity to DEST, a shard at a time, skipping what is there already."""

    def __init__(self, dest: str | os.PathLike | Location, identity: FeaturizerIdentity, label_names: list[str],
                 source: str, shard_rows: int = DEFAULT_SHARD_ROWS):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be at least 1; received {shard_rows!r}")
        self.location = dest if isinstance(dest, Location) else open_location(dest, create=True)
        self.identity, self.label_names, self.source, self.shard_rows = identity, list(label_names), source, shard_rows
        self.manifest = read_manifest(self.location)
        existing = read_rows(self.location, identity, with_features=False)
        self.existing: dict[str, str] = dict(zip(existing.paths, existing.image_sha256))  # path → sha256
        self.known_shas: set[str] = set(existing.image_sha256)
        self.rows = len(self.existing)
        self.written = 0  # rows written by this writer
        self.shards = 0  # shards written by this writer
        self._buffer: list[tuple[str, str, str, np.ndarray]] = []  # (path, label name, sha256, vector)
        self._pending_paths: set[str] = set()

    def has(self, path: str, image_sha256: str) -> bool:
        """Return whether DEST (or this writer's buffer) has a row for this path with these bytes."""
        return self.existing.get(path) == image_sha256 or path in self._pending_paths

    def add(self, path: str, label_name: str, image_sha256: str, vector: np.ndarray) -> None:
        """Queue one row; a full buffer is written as a shard."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.size != self.identity.dim:
            raise ValueError(f"vector of {path!r} has {vector.size} values, expected {self.identity.dim}")
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"refusing to store a non-finite feature vector for {path!r}")
        if self.has(path, image_sha256):
            return
        self._buffer.append((path, label_name, image_sha256, vector))
        self._pending_paths.add(path)
        if len(self._buffer) >= self.shard_rows:
            self.flush()

    def stored_vectors(self, shas: Iterable[str]) -> dict[str, np.ndarray]:
        """Return stored vectors by sha256 (for an image already there under another path)."""
        wanted = set(shas) & self.known_shas
        found: dict[str, np.ndarray] = {}
        if not wanted:
            return found
        pa = require("pyarrow", "feature datasets")
        pc = require("pyarrow.compute", "feature datasets")
        for rel in shard_names(self.location, self.identity.folder):  # one shard in memory at a time
            table = _read_shard(self.location, rel, ["image_sha256", "features"])
            table = table.filter(pc.is_in(table.column("image_sha256"), value_set=pa.array(sorted(wanted))))
            if table.num_rows:
                flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                vectors = np.asarray(flat, np.float32).reshape(table.num_rows, self.identity.dim)
                for sha, vector in zip(table.column("image_sha256").to_pylist(), vectors):
                    found[sha] = vector
        return found

    def flush(self, bad_files: list[tuple[str, str]] | None = None) -> None:
        """Write the buffered rows as one shard, then the manifest."""
        if self._buffer:
            pa = require("pyarrow", "feature datasets")
            pq = require("pyarrow.parquet", "feature datasets")
            rows = self._buffer
            label_ids = {name: i for i, name in enumerate(self.label_names)}
            vectors = np.stack([r[3] for r in rows]).astype(np.float32)
            features = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                         self.identity.dim)
            table = pa.Table.from_arrays([
                pa.array([r[0] for r in rows], pa.string()),
                pa.array([label_ids.get(r[1], -1) for r in rows], pa.int32()),
                pa.array([r[1] for r in rows], pa.string()),
                pa.array([r[2] for r in rows], pa.string()),
                pa.array([self.identity.fingerprint] * len(rows), pa.string()),
                pa.array([self.identity.precision] * len(rows), pa.string()),
                features], schema=_schema(self.identity.dim))
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            name = f"{self.identity.folder}/{SHARD_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
            self.location.write_bytes(name, buf.getvalue())
            for path, _, sha, _ in rows:
                if path not in self.existing:
                    self.rows += 1
                self.existing[path] = sha
                self.known_shas.add(sha)
            self.written += len(rows)
            self.shards += 1
            self._buffer, self._pending_paths = [], set()
            log.info("wrote %s (%d rows)", self.location.display(name), len(rows))
        self.write_manifest(bad_files)

    def write_manifest(self, bad_files: list[tuple[str, str]] | None = None) -> None:
        """Rewrite ``dataset.json`` with this identity's entry (other identities' entries are kept)."""
        entries = self.manifest.setdefault("featurizers", {})
        entry = entries.get(self.identity.fingerprint, {})
        counts = {}
        label_of = {}
        for path in self.existing:
            label_of[path] = path.split("/", 1)[0]
        for name in label_of.values():
            counts[name] = counts.get(name, 0) + 1
        entry.update({
            "folder": self.identity.folder,
            "featurizer": self.identity.to_dict(),
            "source": self.source,
            "label_names": self.label_names,
            "rows": len(self.existing),
            "rows_per_class": dict(sorted(counts.items())),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        if bad_files is not None:
            entry["bad_files"] = [{"path": p, "reason": r} for p, r in bad_files]
        entry.setdefault("bad_files", [])
        entries[self.identity.fingerprint] = entry
        self.manifest["format"] = FORMAT
        self.location.write_bytes(DATASET_FILE, (json.dumps(self.manifest, indent=2, ensure_ascii=False)
                                                 + "\n").encode())


def load_features(dest: str | os.PathLike, identity: FeaturizerIdentity) -> tuple[FeatureTable, dict]:
    """Return the rows of ``identity`` in DEST and its manifest entry, or say which identities DEST holds.

    Raises:
        ValueError: DEST is no feature dataset, or holds no rows of this featurizer identity.
    """
    location = open_location(dest)
    manifest = read_manifest(location)
    entry = manifest["featurizers"].get(identity.fingerprint)
    if not manifest["featurizers"] and not location.list_files():
        raise ValueError(f"{str(dest)!r} is empty: no {DATASET_FILE} and no shards "
                         f"(write one with imgclf featurize --output-dataset)")
    if entry is None:
        held = "; ".join(FeaturizerIdentity.from_description(e["featurizer"]).summary()
                         for e in manifest["featurizers"].values()) or "none"
        raise ValueError(f"{str(dest)!r} holds no features of this featurizer ({identity.summary()}); "
                         f"it holds: {held}. Use the --graph, --precision, --backend and --decode of the featurize run")
    table = read_rows(location, identity)
    if not table.paths:
        raise ValueError(f"{str(dest)!r} lists featurizer {identity.fingerprint[:12]} but holds no shard of it")
    return table, entry


class DatasetCache:
    """The feature-cache interface of :func:`imgclf.featurizer.jobs.pipeline.extract`, backed by a dataset writer.

    The batch pipeline keys vectors by image sha256 only; this adapter learns which
    paths carry each sha256 as the images are read (:meth:`reader`) and writes a row
    per path when their vector is committed. :meth:`finish` adds the rows the
    pipeline did not compute (bytes already in DEST under another path, or repeated
    in SOURCE) from the stored vectors and writes the last shard and the manifest.
    """

    def __init__(self, writer: FeatureDatasetWriter):
        import threading

        self.writer = writer
        self._names: dict[str, list[tuple[str, str]]] = {}  # sha256 → [(path, label name)]
        self._buffered: dict[str, np.ndarray] = {}  # vectors committed by this run, by sha256
        self._lock = threading.Lock()

    def reader(self, path: str, label_name: str, read):
        """Return a ``read()`` for the pipeline that records which path the bytes it returns belong to."""
        from imgclf.featurizer.store.identity import sha256_bytes

        def read_and_note() -> bytes:
            data = read()
            with self._lock:
                self._names.setdefault(sha256_bytes(data), []).append((path, label_name))
            return data
        return read_and_note

    def _check(self, fingerprint: str) -> None:
        if fingerprint != self.writer.identity.fingerprint:
            raise ValueError(f"featurizer {fingerprint[:12]} is not the dataset writer's "
                             f"{self.writer.identity.fingerprint[:12]}")

    def register_featurizer(self, fingerprint: str, description: Mapping) -> None:
        """Check that the pipeline's featurizer is the writer's."""
        self._check(fingerprint)

    def keys(self, fingerprint: str) -> set[str]:
        """Return the sha256 of every image DEST holds for this featurizer."""
        self._check(fingerprint)
        return set(self.writer.known_shas)

    def put_many(self, fingerprint: str, items: Mapping[str, np.ndarray]) -> None:
        """Queue a row per path of each committed vector (a full buffer becomes a shard)."""
        self._check(fingerprint)
        for sha, vector in items.items():
            self._buffered[sha] = np.asarray(vector, np.float32).reshape(-1)
            with self._lock:
                names = list(self._names.get(sha, ()))
            for path, label_name in names:
                self.writer.add(path, label_name, sha, vector)

    def get_many(self, fingerprint: str, image_sha256s: Iterable[str]) -> dict[str, np.ndarray]:
        """Return vectors by sha256: this run's, then DEST's."""
        self._check(fingerprint)
        wanted = set(image_sha256s)
        found = {sha: self._buffered[sha] for sha in wanted if sha in self._buffered}
        found.update(self.writer.stored_vectors(wanted - set(found)))
        return found

    def finish(self, bad_files: list[tuple[str, str]]) -> None:
        """Add the rows the pipeline did not compute, then write the last shard and the manifest."""
        missing = [(path, label, sha) for sha, names in self._names.items() for path, label in names
                   if not self.writer.has(path, sha)]
        vectors = self.get_many(self.writer.identity.fingerprint, {sha for _, _, sha in missing})
        for path, label, sha in missing:
            if sha in vectors:
                self.writer.add(path, label, sha, vectors[sha])
        self.writer.flush(bad_files)
