"""Fetch MNIST: download (or copy) Keras' ``mnist.npz``, verify its sha256 and arrays, install it atomically.

The download uses :func:`imgclf.core.download.download` (connect and read
timeouts, progress bar, truncation checks). The file is written into a hidden
temporary folder beside the destination and renamed over it only after the
checksum and the arrays check out, so an interrupted or failed fetch leaves
nothing half-written and never replaces a good file with a bad one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from imgclf.core.atomic import sync_dir_best_effort
from imgclf.core.download import download, html_hint
from imgclf.core.errors import DownloadError
from imgclf.models.mnist import FILE_NAME, default_mnist_path, file_sha256, read_mnist

log = logging.getLogger(__name__)

DEFAULT_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"  # Keras' mnist.npz


def offline_hint(url: str, dest: Path) -> str:
    """Return what to do when ``url`` cannot be downloaded on this machine."""
    return (f"Download {url} on a machine with internet access, then copy it to {str(dest)!r} "
            f"(or run `imgclf models fetch-mnist --from-file mnist.npz` to check and install it, or pass "
            f"--data PATH to `imgclf models train`).")




def fetch_mnist(dest: str | Path | None = None, url: str = DEFAULT_URL, *, sha256: str | None = SHA256,
                from_file: str | Path | None = None, timeout: float = 10.0, progress: bool | None = None,
                force: bool = False) -> Path:
    """Download (or copy ``from_file``), verify and install ``mnist.npz``; return where it is.

    Args:
        dest: the file to install (a directory gets ``mnist.npz`` inside); default
            ``$IMGCLF_HOME/data/mnist.npz``.
        url: where to download it from; ignored with ``from_file``.
        sha256: the expected checksum (Keras' file by default); None skips the check.
        from_file: a local copy to check and install instead of downloading.
        timeout: seconds to wait for the connection, and then for each piece of data.
        progress: show a progress bar; None shows one when stderr is a terminal.
        force: fetch again even when a file with the right checksum is installed.

    Raises:
        DownloadError: the download failed, or the file has the wrong checksum or is not MNIST.
    """
    dest = Path(dest) if dest is not None else default_mnist_path()
    if dest.is_dir():
        dest = dest / FILE_NAME
    if dest.is_file() and not force and (sha256 is None or file_sha256(dest) == sha256):
        log.info("MNIST already at %s; not fetching it again (use force to replace it)", dest)
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    except OSError as exc:
        raise DownloadError(f"cannot create a folder in {str(dest.parent)!r}: {exc.strerror or exc}") from exc
    try:
        target = work / FILE_NAME
        if from_file is not None:
            source = Path(from_file)
            if not source.is_file():
                raise DownloadError(f"--from-file {str(source)!r} is not a file")
            shutil.copyfile(source, target)
            origin = str(source)
        else:
            download(url, target, timeout=timeout, progress=progress, hint=offline_hint(url, dest))
            origin = url
        verify(target, origin, sha256)
        _fsync(target)
        os.replace(target, dest)
        sync_dir_best_effort(dest.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("installed MNIST at %s", dest)
    return dest


def verify(path: Path, origin: str, sha256: str | None) -> None:
    """Check ``path``'s checksum (when given) and arrays.

    Raises:
        DownloadError: wrong checksum, or not an ``mnist.npz`` (the message says why).
    """
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise DownloadError(f"{origin} has sha256 {actual} ({path.stat().st_size} bytes) but mnist.npz has "
                                f"{sha256}{html_hint(path)}; the file is corrupt or not Keras' "
                                f"mnist.npz. Nothing was installed.")
    try:
        read_mnist(path)
    except ValueError as exc:
        raise DownloadError(f"{origin} is not a usable mnist.npz: {exc}") from exc


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
