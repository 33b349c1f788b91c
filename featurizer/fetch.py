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
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from featurizer.contract import DEFAULT_CONTRACT
from featurizer.errors import DownloadError, GraphError
from featurizer.paths import inception_dir

log = logging.getLogger(__name__)

DEFAULT_URL = "https://storage.googleapis.com/download.tensorflow.org/models/inception_dec_2015.zip"
ARCHIVE_NAME = "inception_dec_2015.zip"
GRAPH_NAME = "tensorflow_inception_graph.pb"  # the name inside the zip, and the installed name
ALT_GRAPH_NAME = "classify_image_graph_def.pb"  # the same network inside inception-2015-12-05.tgz
LABELS_NAME = "imagenet_comp_graph_label_strings.txt"  # one label per softmax class, zip only
MANIFEST_NAME = "inception.json"

MAX_GRAPH_BYTES = 1 << 30  # the real graph is ~92 MiB; protobuf cannot parse more than 2 GiB anyway
CHUNK_BYTES = 1 << 16


def fetch_inception(dest_dir: Path | None = None, url: str = DEFAULT_URL, *, from_file: Path | None = None,
                    timeout: float = 10.0, progress: bool | None = None, force: bool = False) -> Path:
    """Download (or copy from ``from_file``), verify and install the Inception-v3 graph; return its path.

    Args:
        dest_dir: where the graph goes; defaults to :func:`featurizer.paths.inception_dir`.
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
            _download(url, archive, timeout=timeout, progress=progress)
            source = url
        return _install(archive, source, work, dest_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _offline_hint(url: str) -> str:
    """Return what to do when the archive cannot be downloaded here."""
    name = Path(urlsplit(url).path).name or ARCHIVE_NAME
    return (f"Download {name} on a machine with internet access ({url}), copy it here "
            f"and run `imgclf fetch-inception --from-file {name}`.")


def _reason(exc: requests.RequestException) -> str:
    """Return the innermost cause of a requests error, without the pool boilerplate."""
    inner = exc.args[0] if exc.args else None
    inner = getattr(inner, "reason", None) or inner  # urllib3's MaxRetryError wraps the real cause
    if isinstance(inner, BaseException) and inner.args and isinstance(inner.args[0], str):
        return inner.args[0].rstrip(".")  # ProtocolError("Connection broken: IncompleteRead(...)", ...)
    return str(inner or exc).rstrip(".")


def _show_progress(progress: bool | None) -> bool:
    """Return whether to draw a progress bar: as asked, else when stderr is a terminal."""
    if progress is not None:
        return progress
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _download(url: str, target: Path, *, timeout: float, progress: bool | None) -> None:
    """Stream ``url`` into ``target``, raising :class:`DownloadError` on any failure."""
    from tqdm import tqdm

    host = urlsplit(url).hostname or url
    log.info("downloading %s", url)
    started = time.monotonic()
    received: int | None = None  # None until the server has answered 200
    try:
        with requests.get(url, stream=True, timeout=(timeout, timeout)) as response:
            if response.status_code != 200:
                raise DownloadError(f"download of {url} failed: HTTP {response.status_code} {response.reason}")
            expected = _content_length(response)
            received = 0
            with open(target, "wb") as out, tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024, miniters=1,
                desc=Path(urlsplit(url).path).name or "download", disable=not _show_progress(progress),
            ) as bar:
                for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except requests.ConnectTimeout as exc:
        raise DownloadError(f"cannot download {url}: no connection to {host} within {timeout:g} s; this "
                            f"machine seems to be offline or the host is unreachable. {_offline_hint(url)}") from exc
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as exc:
        raise DownloadError(f"{url!r} is not an http(s) URL to download from: {_reason(exc)}") from exc
    except (requests.ConnectionError, requests.ReadTimeout, requests.exceptions.ChunkedEncodingError) as exc:
        # Raised before the response (DNS, refused) and mid-body (dropped, short body, stalled).
        if isinstance(exc, requests.ReadTimeout) or isinstance(exc.args[0] if exc.args else None, ReadTimeoutError):
            raise DownloadError(f"download of {url} stalled: no data from {host} for {timeout:g} s. "
                                f"Try again, or: {_offline_hint(url)}") from exc
        if received is not None:
            raise DownloadError(f"download of {url} broke off after {received} bytes: {_reason(exc)}. "
                                f"Try again, or: {_offline_hint(url)}") from exc
        raise DownloadError(f"cannot download {url}: this machine seems to be offline or {host} is "
                            f"unreachable ({_reason(exc)}). {_offline_hint(url)}") from exc
    except requests.RequestException as exc:  # too many redirects, content decoding, ...
        raise DownloadError(f"download of {url} failed: {_reason(exc)}. {_offline_hint(url)}") from exc
    except OSError as exc:  # writing the temp file (disk full, ...); requests' own errors are caught above
        raise DownloadError(f"cannot write the download to {str(target.parent)!r}: {exc.strerror or exc}") from exc
    if expected is not None and received != expected:
        raise DownloadError(f"download of {url} is incomplete: received {received} of {expected} bytes "
                            "(the connection was dropped); try again")
    elapsed = time.monotonic() - started
    log.info("downloaded %.1f MiB in %.1f s", received / (1 << 20), elapsed)


def _content_length(response: requests.Response) -> int | None:
    """Return the body size the server announced, or None when it cannot be checked."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None  # iter_content decodes, so the byte count would not match the header
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _install(archive: Path, source: str, work: Path, dest_dir: Path) -> Path:
    """Extract the graph (and labels) from ``archive`` into ``work``, verify, and move them into ``dest_dir``."""
    from featurizer.graph import file_sha256

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
        "fetched_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
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
        raise DownloadError(f"{archive.name} is not a zip (or tar) archive{_looks_like(archive)}: {exc}") from exc


def _looks_like(archive: Path) -> str:
    """Return a hint when a would-be archive is really a web page (captive portal, error page)."""
    with open(archive, "rb") as fh:
        head = fh.read(64).lstrip().lower()
    return "; it looks like an HTML page" if head.startswith((b"<!doctype", b"<html", b"<?xml")) else ""


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

    from featurizer.graph import SingleImageGraph, missing_tensors, parse_graph_def

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
