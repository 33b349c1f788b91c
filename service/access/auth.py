"""API keys on the API: 401 for a missing or wrong key, per-key counters, and an optional per-key rate limit.

Off unless ``IMGCLF_API_KEYS_FILE`` names a keys file (:mod:`imgclf.service.access.api_keys`).
Then every route but liveness, readiness and the page (:data:`OPEN_ENDPOINTS`)
needs a key, sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
A missing, wrong or out-of-scope key gets the same 401 with
``WWW-Authenticate``: no hint which. Keys named in ``IMGCLF_METRICS_KEYS`` read
``/metrics`` and nothing else; when it is empty any key reads it. The check runs
before anything reads the request's body. Requests are counted per key name in
``imgclf_api_key_requests_total{key, status}`` (the name, never the key). With
``IMGCLF_RATE_LIMIT`` each key has a token bucket per worker: 429 and
``Retry-After`` when it is empty.

The keys file is read with the settings, when the app is made
(:class:`~imgclf.service.access.settings.AccessSettings`): under gunicorn, ``kill -HUP`` of the
master starts new workers, which read it again (the old ones finish their
requests and stop).
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, request
from prometheus_client import Counter

from imgclf.service.access.api_keys import match, presented_key
from imgclf.service.access.rate_limit import TokenBuckets, retry_after
from imgclf.service.access.settings import AccessSettings
from imgclf.service.metrics import current_metrics

log = logging.getLogger(__name__)

EXTENSION = "imgclf.auth"
# Liveness and readiness (orchestrators probe them without keys) and the page, which asks for a key itself.
OPEN_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "v2.live", "v2.ready", "web.index", "web.static"})
METRICS_ENDPOINT = "metrics"
CHALLENGE = 'Bearer realm="imgclf"'
KEY_HEADER = "X-API-Key"
UNAUTHORIZED = "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
NO_KEY = "-"  # the key label of refused requests


class Auth:
    """One app's keys, buckets and per-key counter."""

    def __init__(self, settings: AccessSettings, counter: Counter | None):
        self.settings = settings
        self.buckets = TokenBuckets(settings.rate) if settings.rate else None
        self.counter = counter

    def check(self) -> Response | None:
        """Answer 401 or 429 for a request that may not pass (a before_request hook); None lets it through."""
        endpoint = request.endpoint
        if endpoint in OPEN_ENDPOINTS or request.method == "OPTIONS":  # a CORS preflight carries no credentials
            return None
        g.imgclf_key = NO_KEY
        name = self.key_name()
        if name is None or not self.in_scope(name, endpoint):
            response = jsonify(error=UNAUTHORIZED)
            response.status_code = 401
            response.headers["WWW-Authenticate"] = CHALLENGE
            return response
        g.imgclf_key = name
        if self.buckets is not None:
            wait = self.buckets.take(name)
            if wait:
                response = jsonify(error=f"too many requests for this key: at most {self.settings.rate.count} per "
                                         f"{self.settings.rate.seconds:g} s; try again in {wait:.1f} s")
                response.status_code = 429
                response.headers["Retry-After"] = retry_after(wait)
                return response
        return None

    def key_name(self) -> str | None:
        """Return the name of the key the request presents (Bearer or X-API-Key), or None."""
        key = presented_key(request.headers.get("Authorization", ""), request.headers.get(KEY_HEADER, ""))
        return None if key is None else match(self.settings.keys, key)

    def in_scope(self, name: str, endpoint: str | None) -> bool:
        """Return whether key ``name`` opens ``endpoint``: /metrics keys open /metrics only, when there are any."""
        metrics_keys = self.settings.metrics_key_names
        if not metrics_keys:
            return True
        return (name in metrics_keys) == (endpoint == METRICS_ENDPOINT)

    def count(self, response: Response) -> Response:
        """Count the request under its key's name (an after_request hook)."""
        name = g.get("imgclf_key")
        if name is not None and self.counter is not None:
            self.counter.labels(name, str(response.status_code)).inc()
        return response


def init_app(app: Flask, settings: AccessSettings) -> Auth:
    """Keep the access section's keys and rate; when keys are required, install the hooks; return the Auth."""
    counter = None
    if settings.keys_required:
        counter = Counter("imgclf_api_key_requests", "Requests by API key name (never the key) and status.",
                          ["key", "status"], registry=current_metrics(app).registry)
    auth = Auth(settings, counter)
    app.extensions[EXTENSION] = auth
    if settings.keys_required:
        app.before_request(auth.check)
        app.after_request(auth.count)
        log.info("API keys required: %d key(s)%s", len(settings.keys),
                 f", rate limit {settings.rate.count}/{settings.rate.seconds:g} s per key and worker"
                 if settings.rate else "")
    return auth

