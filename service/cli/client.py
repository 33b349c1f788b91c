"""An HTTP client of the service's POST /predict, behind `imgclf predict --url`.

A refused image (400, 413, 415: corrupt, too large, unsupported type) is the
image's fault: :class:`ImageRefused`, reported and skipped by the caller. Any
other failure (server down, timeout, unknown model, not ready, server error)
is the service's: :class:`ServiceError`, which stops the run.
"""

from __future__ import annotations

import base64
import binascii
import logging
from urllib.parse import urlsplit

import requests

from imgclf.core.errors import ImgclfError, UsageError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds to connect, and seconds between bytes of the answer
IMAGE_STATUSES = (400, 413, 415, 422)  # the server refused this image; the next one may be fine


class ServiceError(ImgclfError):
    """The service cannot be reached, does not answer in time, or refuses every request."""


class ImageRefused(ImgclfError):
    """The service refused one image (a 4xx about the image itself)."""


def predict_endpoint(url: str) -> str:
    """Return the /predict URL for a service base URL ("http://host:port" or one already ending in /predict).

    Raises:
        UsageError: not an http(s) URL with a host (a ValueError).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f" (http://{url.strip()}?)" if "://" not in url and url.strip() else ""
        raise UsageError(f"--url must be an http:// or https:// URL with a host; received {url!r}{hint}")
    path = parts.path.rstrip("/")
    if not path.endswith("/predict"):
        path += "/predict"
    return parts._replace(path=path, query="", fragment="").geturl()


class PredictClient:
    """Send images to one service's POST /predict over one keep-alive session."""

    def __init__(self, url: str, model: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 session: requests.Session | None = None, api_key: str = ""):
        if not timeout > 0:
            raise UsageError(f"--timeout must be more than 0 seconds; received {timeout!r}")
        self.endpoint = predict_endpoint(url)
        self.model = model or None
        self.timeout = float(timeout)
        self.session = session or requests.Session()
        if api_key:  # a service with IMGCLF_API_KEYS_FILE set
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def predict(self, data: bytes, top_k: int | None = None, annotate: bool = False,
                unfamiliar_threshold: float | None = None) -> dict:
        """Return the service's answer for one encoded image (``annotated_image`` decoded to JPEG bytes).

        ``unfamiliar_threshold``: flag the image unfamiliar above this score (None: the service's threshold).

        Raises:
            ImageRefused: the service refused this image (the message is the service's).
            ServiceError: anything else went wrong.
        """
        params = {"model": self.model, "top_k": top_k, "annotate": "true" if annotate else None,
                  "unfamiliar_threshold": None if unfamiliar_threshold is None else repr(float(unfamiliar_threshold))}
        params = {key: value for key, value in params.items() if value is not None}
        log.debug("POST %s %s (%d bytes)", self.endpoint, params, len(data))
        try:
            response = self.session.post(self.endpoint, params=params, data=data, timeout=self.timeout,
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Accept": "application/json"})
        except requests.Timeout as exc:
            raise ServiceError(f"{self.endpoint} did not answer within {self.timeout:g} s "
                               "(--timeout sets the limit)") from exc
        except requests.ConnectionError as exc:
            raise ServiceError(f"cannot reach {self.endpoint}: {_reason(exc)}") from exc
        except requests.RequestException as exc:
            raise ServiceError(f"request to {self.endpoint} failed: {exc}") from exc
        if response.status_code in IMAGE_STATUSES:
            raise ImageRefused(_error_message(response))
        if response.status_code != 200:
            raise ServiceError(f"{self.endpoint} answered {response.status_code}: {_error_message(response)}")
        try:
            body = response.json()
            body["predictions"] = [{"label": str(p["label"]), "score": float(p["score"])}
                                   for p in body["predictions"]]
            if annotate:
                body["annotated_image"] = base64.b64decode(body["annotated_image"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ServiceError(f"{self.endpoint} answered 200 but not a /predict answer "
                               f"({type(exc).__name__}: {exc}); is the URL an imgclf service?") from exc
        return body

    def close(self) -> None:
        """Close the keep-alive connections."""
        self.session.close()


def _error_message(response: requests.Response) -> str:
    """Return the service's {"error": ...} message, or the start of whatever else it answered."""
    try:
        error = response.json().get("error")
        if error:
            return str(error)
    except (ValueError, AttributeError):
        pass  # not JSON, or JSON without "error": a proxy's page, another server
    text = " ".join(response.text.split())[:200]
    return text or response.reason or "no message"


def _reason(exc: requests.ConnectionError) -> str:
    """Return the innermost cause of a connection failure (e.g. "Connection refused"), not urllib3's chain."""
    cause: BaseException = exc
    for _ in range(10):  # requests wraps urllib3's MaxRetryError, which wraps the socket error
        inner = cause.__cause__ or (cause.args[0] if cause.args and isinstance(cause.args[0], BaseException)
                                    else None)
        if inner is None:
            break
        cause = inner
    return getattr(cause, "strerror", None) or str(cause)
