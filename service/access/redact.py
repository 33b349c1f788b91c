"""No filesystem path of the server in any answer: error messages, readiness and model cards say names only.

Loading errors, ``ModelNotFound`` messages and model cards were written for
logs and for the person who trained the model: they name the model repository,
graph files, image folders and log folders. Answers carry none of that. In the
JSON of every answer (errors, readiness, TF Serving's model status with each
version's ``error_message``, model metadata and cards, the v2 metadata), the
model repository becomes ``<model repository>`` and any other absolute path its
last component (a file's name: ``/data/graphs/inception.pb`` -> ``inception.pb``).
Only the successful answers that hold no server text are left as they are
(:data:`PATH_FREE`: predictions, whose labels are the model's own, and the static
API description). The server's log keeps the full messages.
"""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask, Response, current_app, request

REPOSITORY = "<model repository>"
# Endpoints whose successful answers hold no server text: predictions (labels are data, and these answers are
# the large, frequent ones) and fixed documents. Every other JSON answer is redacted.
PATH_FREE = frozenset({"predict.predict", "tfserving.predict", "v2.infer", "health.openapi_json", "health.healthz",
                       "v2.live", "v2.server_metadata"})
# Two or more segments after a "/" that follows no word, path or URL character; not the service's own routes.
_ABSOLUTE = re.compile(r"(?<![\w.:/>~-])(?!/v[12]/)(?:/[^\s'\"`/:,;()<>\[\]{}|]+){2,}/?")
_WINDOWS = re.compile(r"(?<![\w])[A-Za-z]:\\(?:[^\s'\"`\\:,;()<>\[\]{}|]+\\)*[^\s'\"`\\:,;()<>\[\]{}|]*")


def redact_text(text: str, roots: tuple[str, ...] = ()) -> str:
    """Return ``text`` with each of ``roots`` as ``<model repository>`` and other absolute paths as their name."""
    for root in roots:
        text = re.sub(r"(?<![\w./-])" + re.escape(root) + r"(?![\w.-])", REPOSITORY, text)
    text = _ABSOLUTE.sub(lambda m: Path(m.group(0).rstrip("/")).name, text)
    return _WINDOWS.sub(lambda m: m.group(0).rstrip("\\").rsplit("\\", 1)[-1], text)


def redact_json(value, roots: tuple[str, ...] = ()):
    """Return a JSON value with every string (keys included) redacted by :func:`redact_text`."""
    if isinstance(value, str):
        return redact_text(value, roots)
    if isinstance(value, list):
        return [redact_json(item, roots) for item in value]
    if isinstance(value, dict):
        return {redact_text(str(key), roots): redact_json(item, roots) for key, item in value.items()}
    return value


def repository_roots(repository: Path) -> tuple[str, ...]:
    """Return the spellings of the model repository's path a message may use, longest first."""
    spellings = {str(repository), str(repository.absolute())}
    try:
        spellings.add(str(repository.resolve()))
    except OSError:
        pass
    return tuple(sorted((s.rstrip("/") for s in spellings if s.rstrip("/") not in ("", ".")), key=len,
                        reverse=True))


def scrub(response: Response, repository: Path) -> Response:
    """Redact the JSON of every answer but the path-free ones (an after_request hook), naming ``repository``."""
    if response.direct_passthrough or not response.is_json:
        return response
    if response.status_code < 400 and request.endpoint in PATH_FREE:
        return response
    body = response.get_json(silent=True)
    if body is None:
        return response
    roots = repository_roots(repository)
    response.set_data(current_app.json.dumps(redact_json(body, roots)) + "\n")
    return response


def init_app(app: Flask, model_repository: Path) -> None:
    """Install the redaction hook; ``model_repository`` (the serving section's) becomes ``<model repository>``."""
    repository = Path(model_repository)
    app.after_request(lambda response: scrub(response, repository))
