"""Downloads: stream a URL into a file with timeouts, a progress bar and truncation checks.

Used by ``imgclf fetch-inception`` and ``imgclf models fetch-mnist``. Every
failure is a :class:`~imgclf.core.errors.DownloadError` whose message says what
happened (offline, refused, stalled, cut short) and, for failures a retry will
not fix, what to do instead (the caller's ``hint``): nothing is ever fetched
silently or left half-written under its final name.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from imgclf.core.errors import DownloadError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16


def download(url: str, target: str | Path, *, timeout: float = 10.0, progress: bool | None = None,
             hint: str = "") -> None:
    """Stream ``url`` into the file ``target``; raise :class:`DownloadError` on any failure.

    Args:
        url: an http(s) URL.
        target: the file to write (its folder must exist); the caller renames it into place once checked.
        timeout: seconds to wait for the connection, and then for each piece of data.
        progress: show a progress bar; None shows one when stderr is a terminal.
        hint: what a user can do instead (for example, where to copy a file downloaded elsewhere),
            appended to the messages of failures that retrying may not fix.

    Raises:
        DownloadError: offline, unreachable, not an http(s) URL, HTTP error, truncated, stalled, or the
            file cannot be written; the message says which.
    """
    from tqdm import tqdm

    host = urlsplit(url).hostname or url
    target = Path(target)
    hint = hint.strip()
    then = f" {hint}" if hint else ""  # appended to the messages of failures a retry may not fix
    log.info("downloading %s", url)
    started = time.monotonic()
    received: int | None = None  # None until the server has answered 200
    try:
        with requests.get(url, stream=True, timeout=(timeout, timeout)) as response:
            if response.status_code != 200:
                raise DownloadError(f"download of {url} failed: HTTP {response.status_code} {response.reason}")
            expected = content_length(response)
            received = 0
            with open(target, "wb") as out, tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024, miniters=1,
                desc=Path(urlsplit(url).path).name or "download", disable=not show_progress(progress),
            ) as bar:
                for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except requests.ConnectTimeout as exc:
        raise DownloadError(f"cannot download {url}: no connection to {host} within {timeout:g} s; this "
                            f"machine seems to be offline or the host is unreachable.{then}") from exc
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as exc:
        raise DownloadError(f"{url!r} is not an http(s) URL to download from: {reason(exc)}") from exc
    except (requests.ConnectionError, requests.ReadTimeout, requests.exceptions.ChunkedEncodingError) as exc:
        # Raised before the response (DNS, refused) and mid-body (dropped, short body, stalled).
        if isinstance(exc, requests.ReadTimeout) or isinstance(exc.args[0] if exc.args else None, ReadTimeoutError):
            raise DownloadError(f"download of {url} stalled: no data from {host} for {timeout:g} s. "
                                f"Try again{', or: ' + hint if hint else '.'}") from exc
        if received is not None:
            raise DownloadError(f"download of {url} broke off after {received} bytes: {reason(exc)}. "
                                f"Try again{', or: ' + hint if hint else '.'}") from exc
        raise DownloadError(f"cannot download {url}: this machine seems to be offline or {host} is "
                            f"unreachable ({reason(exc)}).{then}") from exc
    except requests.RequestException as exc:  # too many redirects, content decoding, ...
        raise DownloadError(f"download of {url} failed: {reason(exc)}.{then}") from exc
    except OSError as exc:  # writing the temp file (disk full, ...); requests' own errors are caught above
        raise DownloadError(f"cannot write the download to {str(target.parent)!r}: {exc.strerror or exc}") from exc
    if expected is not None and received != expected:
        raise DownloadError(f"download of {url} is incomplete: received {received} of {expected} bytes "
                            "(the connection was dropped); try again")
    elapsed = time.monotonic() - started
    log.info("downloaded %.1f MiB in %.1f s", received / (1 << 20), elapsed)

def reason(exc: requests.RequestException) -> str:
    """Return the innermost cause of a requests error, without the pool boilerplate."""
    inner = exc.args[0] if exc.args else None
    inner = getattr(inner, "reason", None) or inner  # urllib3's MaxRetryError wraps the real cause
    if isinstance(inner, BaseException) and inner.args and isinstance(inner.args[0], str):
        return inner.args[0].rstrip(".")  # ProtocolError("Connection broken: IncompleteRead(...)", ...)
    return str(inner or exc).rstrip(".")

def show_progress(progress: bool | None) -> bool:
    """Return whether to draw a progress bar: as asked, else when stderr is a terminal."""
    if progress is not None:
        return progress
    return bool(getattr(sys.stderr, "isatty", lambda: False)())

def content_length(response: requests.Response) -> int | None:
    """Return the body size the server announced, or None when it cannot be checked."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None  # iter_content decodes, so the byte count would not match the header
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def html_hint(archive: str | Path) -> str:
    """Return a hint to add to an error when a downloaded file is really a web page (captive portal, error page)."""
    with open(archive, "rb") as fh:
        head = fh.read(64).lstrip().lower()
    return "; it looks like an HTML page" if head.startswith((b"<!doctype", b"<html", b"<?xml")) else ""
