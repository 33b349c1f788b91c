"""Fetch the real Inception-v3 (2015) graph: download or copy the archive, verify it, install it.

``fetch_inception()`` downloads ``inception_dec_2015.zip`` (or takes a local
copy with ``from_file=``, for machines without internet), checks that it holds
a frozen graph with the tensors imgclf relies on and that the graph really
loads, then moves ``tensorflow_inception_graph.pb`` (and the label strings, when
the archive has them) into place with ``os.replace`` and writes
``inception.json`` beside them: where it came from, its sha256, size and date.

All work happens in a hidden temporary folder inside the destination, so a
failed or interrupted fetch leaves no half-written graph behind, and an
existing graph is only replaced by one that passed every check. The graph file
is installed last: its presence means the fetch finished.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from imgclf.core.download import download, html_hint
from imgclf.core.errors import DownloadError, GraphError
from imgclf.core.paths import inception_dir
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT

log = logging.getLogger(__name__)

DEFAULT_URL = "https://storage.googleapis.com/download.tensorflow.org/models/inception_dec_2015.zip"
ARCHIVE_NAME = "inception_dec_2015.zip"
GRAPH_NAME = "tensorflow_inception_graph.pb"  # the name inside the zip, and the installed name
ALT_GRAPH_NAME = "classify_image_graph_def.pb"  # the same network inside inception-2015-12-05.tgz
LABELS_NAME = "imagenet_comp_graph_label_strings.txt"  # one label per softmax class, zip only
MANIFEST_NAME = "inception.json"

MAX_GRAPH_BYTES = 1 << 30  # the real graph is ~92 MiB; protobuf cannot parse more than 2 GiB anyway


def fetch_inception(dest_dir: Path | None = None, url: str = DEFAULT_URL, *, from_file: Path | None = None,
                    timeout: float = 10.0, progress: bool | None = None, force: bool = False) -> Path:
    """Download (or copy from ``from_file``), verify and install the Inception-v3 graph; return its path.

    Args:
        dest_dir: where the graph goes; defaults to :func:`imgclf.core.paths.inception_dir`.
        url: the archive to download; ignored when ``from_file`` is given.
        from_file: a local ``inception_dec_2015.zip`` (or ``inception-2015-12-05.tgz``)
            to use instead of the network.
        timeout: seconds to wait for the connection, and then for each piece of data.
        progress: show a progress bar; None shows one when stderr is a terminal.
        force: fetch again even when the graph is already installed.

    Raises:
        DownloadError: the host cannot be reached, the server refused, the
            transfer broke off, or the archive is not one or lacks the graph.
        GraphError: the graph in the archive does not parse, lacks a contract
            tensor, or does not load.
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else inception_dir()
    graph_path = dest_dir / GRAPH_NAME
    if graph_path.is_file() and not force:
        log.info("Inception graph already at %s; not fetching it again (use force to replace it)", graph_path)
        return graph_path
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest_dir))
    except OSError as exc:
        raise DownloadError(f"cannot create a folder in {str(dest_dir)!r}: {exc.strerror or exc}") from exc
    try:
        if from_file is not None:
            archive = Path(from_file)
            if not archive.is_file():
                raise DownloadError(f"--from-file {str(archive)!r} is not a file")
            source = str(archive.resolve())
            log.info("using local archive %s", archive)
        else:
            archive = work / (Path(urlsplit(url).path).name or ARCHIVE_NAME)
            download(url, archive, timeout=timeout, progress=progress, hint=_offline_hint(url))
            source = url
        return _install(archive, source, work, dest_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _offline_hint(url: str) -> str:
    """Return what to do when the archive cannot be downloaded here."""
    name = Path(urlsplit(url).path).name or ARCHIVE_NAME
    return (f"Download {name} on a machine with internet access ({url}), copy it here "
            f"and run `imgclf fetch-inception --from-file {name}`.")










def _install(archive: Path, source: str, work: Path, dest_dir: Path) -> Path:
    """Extract the graph (and labels) from ``archive`` into ``work``, verify, and move them into ``dest_dir``."""
    from imgclf.featurizer.graph.load import file_sha256

    graph_tmp, labels_tmp = work / "graph.pb", work / "labels.txt"
    member, has_labels = _extract(archive, graph_tmp, labels_tmp)
    producer = _verify_graph(graph_tmp, f"{member} in {archive.name}")
    manifest = {
        "graph": GRAPH_NAME,
        "sha256": file_sha256(graph_tmp),
        "size": graph_tmp.stat().st_size,
        "labels": LABELS_NAME if has_labels else None,
        "source": source,
        "archive": archive.name,
        "archive_member": member,
        "archive_sha256": file_sha256(archive),
        "producer_version": producer,
        "fetched_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    manifest_tmp = work / "manifest.json"
    _write_synced(manifest_tmp, (json.dumps(manifest, indent=2) + "\n").encode())

    labels_path, graph_path = dest_dir / LABELS_NAME, dest_dir / GRAPH_NAME
    if has_labels:
        os.replace(labels_tmp, labels_path)
    elif labels_path.exists():
        labels_path.unlink()  # a stale label file would no longer match the new graph
    os.replace(manifest_tmp, dest_dir / MANIFEST_NAME)
    os.replace(graph_tmp, graph_path)  # last: the graph's presence means the fetch finished
    log.info("installed Inception graph %s (sha256 %s)", graph_path, manifest["sha256"])
    return graph_path


def _extract(archive: Path, graph_out: Path, labels_out: Path) -> tuple[str, bool]:
    """Copy the graph (and labels, if any) out of a zip or tar archive; return the graph's member name."""
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                files = {info.filename: info for info in zf.infolist() if not info.is_dir()}
                member = _find_member(archive, list(files))
                _check_size(archive, member, files[member].file_size)
                with zf.open(member) as src:
                    _copy_limited(src, graph_out, archive, member)
                labels = _find_member(archive, list(files), (LABELS_NAME,), required=False)
                if labels is not None:
                    with zf.open(labels) as src:
                        _copy_limited(src, labels_out, archive, labels)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise DownloadError(f"{archive.name} is a corrupt zip archive: {exc}") from exc
        return member, labels is not None
    try:
        with tarfile.open(archive, "r:*") as tf_:
            files = {info.name: info for info in tf_.getmembers() if info.isfile()}
            member = _find_member(archive, list(files))
            _check_size(archive, member, files[member].size)
            _copy_limited(tf_.extractfile(files[member]), graph_out, archive, member)
            labels = _find_member(archive, list(files), (LABELS_NAME,), required=False)
            if labels is not None:
                _copy_limited(tf_.extractfile(files[labels]), labels_out, archive, labels)
        return member, labels is not None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DownloadError(f"{archive.name} is not a zip (or tar) archive{html_hint(archive)}: {exc}") from exc




def _find_member(archive: Path, names: list[str], wanted: tuple[str, ...] = (GRAPH_NAME, ALT_GRAPH_NAME),
                 required: bool = True) -> str | None:
    """Return the archive member whose base name is the first of ``wanted`` present."""
    by_base = {}
    for name in names:
        by_base.setdefault(name.rsplit("/", 1)[-1], name)
    for base in wanted:
        if base in by_base:
            return by_base[base]
    if required:
        listing = ", ".join(sorted(names)[:10]) or "nothing"
        raise DownloadError(f"{archive.name} holds no {' or '.join(wanted)} (it holds: {listing}); "
                            f"is it {ARCHIVE_NAME}?")
    return None


def _check_size(archive: Path, member: str, size: int) -> None:
    """Refuse a member larger than any real Inception graph (a zip bomb, or the wrong file)."""
    if size > MAX_GRAPH_BYTES:
        raise DownloadError(f"{member} in {archive.name} is {size} bytes, more than the "
                            f"{MAX_GRAPH_BYTES} a frozen Inception graph can be")


def _copy_limited(src: IO[bytes] | None, target: Path, archive: Path, member: str) -> None:
    """Copy an archive member to ``target``, stopping past :data:`MAX_GRAPH_BYTES` whatever the header said."""
    if src is None:
        raise DownloadError(f"{member} in {archive.name} cannot be read")
    written = 0
    with open(target, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            written += len(chunk)
            if written > MAX_GRAPH_BYTES:
                raise DownloadError(f"{member} in {archive.name} is larger than {MAX_GRAPH_BYTES} bytes")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk (the caller renames it into place)."""
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _verify_graph(path: Path, source: str) -> int:
    """Check the graph parses, has the contract tensors and loads; return its producer version."""
    import tensorflow as tf

    from imgclf.featurizer.graph.load import SingleImageGraph, missing_tensors, parse_graph_def

    graph_def = parse_graph_def(path.read_bytes(), source=source)
    contract = DEFAULT_CONTRACT
    needed = [contract.jpeg_input, contract.bottleneck, contract.bottleneck_single, contract.softmax]
    missing = missing_tensors(graph_def, needed)
    if missing:
        raise GraphError(f"{source} is not the Inception-v3 graph imgclf expects: "
                         f"it lacks tensor(s) {', '.join(missing)}")
    try:
        SingleImageGraph(graph_def, contract).close()
    except GraphError:
        raise
    except (ValueError, TypeError, KeyError, tf.errors.OpError) as exc:
        raise GraphError(f"{source} parses but does not load into TensorFlow: {exc}") from exc
    return graph_def.versions.producer


__all__ = ["ALT_GRAPH_NAME", "DEFAULT_URL", "GRAPH_NAME", "LABELS_NAME", "MANIFEST_NAME", "fetch_inception"]
