"""Local folders and object-store URIs (``s3://``, ``gs://``) behind one small interface, through pyarrow.fs.

A :class:`Location` is a filesystem and a root inside it. Credentials come from the
usual environment of each store (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, instance roles; ``GOOGLE_APPLICATION_CREDENTIALS``), and
``AWS_ENDPOINT_URL`` points S3 at an S3-compatible server (MinIO, Ceph, moto).
:func:`open_location` checks, before any work, that the store answers and that
credentials exist, and says so in one line when not.

Writes are whole objects: :meth:`Location.write_bytes` makes the object appear
complete or not at all (a temp file and a rename locally; one PUT, or a multipart
upload completed only at the end, on an object store), so a killed writer never
leaves a partial file under its final name.
"""

from __future__ import annotations

import importlib
import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from imgclf.core.atomic import atomic_file
from imgclf.core.errors import ImgclfError

log = logging.getLogger(__name__)

SCHEMES = ("s3", "gs", "gcs")
RAY_EXTRA = "pip install 'imgclf[ray]'"


class StorageError(ImgclfError):
    """An object store cannot be reached, refuses the credentials, or lacks the bucket."""


def require(module: str, feature: str):
    """Import ``module`` (an optional dependency of the ``ray`` extra) or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImgclfError(f"{feature} needs {module.split('.')[0]} ({exc}); install it with: {RAY_EXTRA}") from None


def is_uri(value: str | os.PathLike) -> bool:
    """Return whether ``value`` names an object store (``s3://…``, ``gs://…``) rather than a local path."""
    text = str(value)
    return "://" in text and text.split("://", 1)[0].lower() in SCHEMES


@dataclass(frozen=True)
class Location:
    """A root folder in a filesystem: a local path or a bucket prefix."""

    fs: object  # pyarrow.fs.FileSystem
    root: str  # path inside ``fs``, without a trailing "/" ("bucket/prefix" on an object store)
    uri: str  # as the user wrote it, for messages
    remote: bool  # an object store (False: the local filesystem)

    def path(self, rel: str = "") -> str:
        """Return the filesystem path of ``rel`` (a "/"-separated path below the root)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def child(self, rel: str) -> Location:
        """Return the location of the sub-folder ``rel``."""
        return Location(self.fs, self.path(rel), f"{self.uri.rstrip('/')}/{rel}", self.remote)

    def display(self, rel: str = "") -> str:
        """Return ``rel`` as the user would write it (URI or path)."""
        return f"{self.uri.rstrip('/')}/{rel}" if rel else self.uri

    def list_files(self, rel: str = "", recursive: bool = True) -> list[tuple[str, int]]:
        """Return ``(path relative to the root, size)`` of the files under ``rel``, sorted; [] if it is missing."""
        fs = require("pyarrow.fs", "object storage")
        selector = fs.FileSelector(self.path(rel), recursive=recursive, allow_not_found=True)
        prefix = self.root.rstrip("/") + "/"
        files = []
        for info in self.fs.get_file_info(selector):
            if info.type == fs.FileType.File and info.path.startswith(prefix):
                files.append((info.path[len(prefix):], info.size))
        return sorted(files)

    def exists(self, rel: str) -> bool:
        """Return whether the file ``rel`` exists."""
        fs = require("pyarrow.fs", "object storage")
        return self.fs.get_file_info(self.path(rel)).type == fs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        """Return the content of the file ``rel``."""
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return fh.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write the file ``rel`` whole: readers see the old content or the new one, never a part."""
        if not self.remote:
            with atomic_file(Path(self.path(rel))) as fh:
                fh.write(data)
            return
        # The data is complete in memory before the stream opens: an error can only fail the upload, and
        # an object store shows an object only once its upload has completed.
        with self.fs.open_output_stream(self.path(rel)) as fh:
            fh.write(data)

    def delete(self, rel: str) -> None:
        """Delete the file ``rel`` if it exists."""
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))


def open_location(value: str | os.PathLike, *, create: bool = False, must_exist: bool = True) -> Location:
    """Return the :class:`Location` of a local folder or an object-store URI, checked before any work.

    Args:
        create: make a missing local folder (a destination).
        must_exist: a missing local folder is an error (a source).

    Raises:
        StorageError: unknown scheme, no credentials, an endpoint that does not answer, a missing bucket.
        ValueError: a local source folder that does not exist.
    """
    text = str(value)
    if not is_uri(text):
        if "://" in text:
            raise StorageError(f"unsupported storage URI {text!r}: use a local path, s3://BUCKET/PREFIX or "
                               f"gs://BUCKET/PREFIX")
        path = Path(text).expanduser().absolute()
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif must_exist and not path.is_dir():
            raise ValueError(f"folder {text!r} does not exist or is not a folder")
        fs = require("pyarrow.fs", "feature datasets")
        return Location(fs.LocalFileSystem(), path.as_posix(), text, remote=False)
    scheme, rest = text.split("://", 1)
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise StorageError(f"{text!r} names no bucket: expected {scheme}://BUCKET/PREFIX")
    fs = _filesystem(scheme.lower(), text)
    location = Location(fs, rest.rstrip("/"), text, remote=True)
    _check_bucket(location, bucket)
    return location


def _filesystem(scheme: str, uri: str):
    pafs = require("pyarrow.fs", "object storage")
    if scheme == "s3":
        _check_aws_credentials(uri)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {"connect_timeout": 5, "request_timeout": 30, "retry_strategy": pafs.AwsStandardS3RetryStrategy(2)}
        if endpoint:
            scheme_part, _, host = endpoint.partition("://")
            options.update(endpoint_override=host.rstrip("/") if host else endpoint,
                           scheme=scheme_part if host else "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        return pafs.S3FileSystem(**options)
    try:  # gs:// and gcs://: Google's default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, metadata)
        return pafs.GcsFileSystem(retry_time_limit=30)
    except Exception as exc:  # pragma: no cover - depends on the machine's Google setup
        raise StorageError(f"cannot open Google Cloud Storage for {uri!r}: {exc}") from None


def _check_aws_credentials(uri: str) -> None:
    """Raise StorageError when the AWS credential chain (environment, profile, role) finds nothing."""
    try:
        import botocore.session
    except ImportError:  # pyarrow's own chain still applies; the listing below reports what it lacks
        return
    if botocore.session.Session().get_credentials() is None:
        raise StorageError(f"no AWS credentials for {uri!r}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           f"AWS_PROFILE, or run with an instance/pod role")


def _check_bucket(location: Location, bucket: str) -> None:
    """List one level of the root: an endpoint that does not answer or a missing bucket fails here, fast."""
    pafs = require("pyarrow.fs", "object storage")
    try:
        location.fs.get_file_info(pafs.FileSelector(bucket, recursive=False, allow_not_found=False))
    except (OSError, FileNotFoundError) as exc:
        message = " ".join(str(exc).split())
        raise StorageError(f"cannot read {location.uri!r}: {message[:300]}") from None
