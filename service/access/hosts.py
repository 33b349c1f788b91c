"""The Host header: an optional allow-list against DNS rebinding, and no redirect ever built from it.

DNS rebinding: a page on ``evil.example`` points its name at 127.0.0.1 (or an
intranet address) after it loaded, and its scripts then call the service as a
same-origin site — the cross-site check (:mod:`imgclf.service.access.cross_site`)
compares ``Origin`` with ``Host`` and both say ``evil.example``. On a service
without API keys that is full access. ``IMGCLF_ALLOWED_HOSTS`` (comma-separated
names, optionally with a port: ``api.example.com, localhost:8000``; empty: off)
answers any other ``Host`` with a JSON 400 before any other hook runs. The
probes (``/healthz``, ``/readyz`` and v2's health) stay open: an orchestrator
sends the pod's address.

Werkzeug's router answers ``//predict`` or ``/v1//models`` with a 308 whose
``Location`` is built from ``Host`` (an HTML page Flask's error handlers never
see); :func:`init_app` turns slash merging and the defaults' redirects off, so
such a path is a JSON 404. The router's other redirect, ``/x`` to ``/x/``, needs
a rule ending in a slash: only ``/`` does, which no path can lack.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

from imgclf.service.access.settings import AccessSettings

PROBE_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "v2.live", "v2.ready"})


def split_host(value: str) -> tuple[str, str]:
    """Return (host, port) of a Host header or an allow-list entry, lower case; port "" when none is given."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        host, _, rest = value.partition("]")
        return host + "]", rest.removeprefix(":")
    host, _, port = value.partition(":")
    return host.removesuffix("."), port


def host_allowed(header: str, allowed: frozenset) -> bool:
    """Return whether a ``Host`` header names an allowed host (an entry without a port allows every port)."""
    host, port = split_host(header)
    return bool(host) and (host in allowed or f"{host}:{port}" in allowed)


class HostCheck:
    """One app's allowed hosts."""

    def __init__(self, allowed: frozenset):
        self.allowed = allowed

    def check(self) -> Response | None:
        """Answer 400 for a Host that is not allowed (a before_request hook); None lets the request through."""
        if request.endpoint in PROBE_ENDPOINTS:
            return None
        header = request.headers.get("Host", "")
        if host_allowed(header, self.allowed):
            return None
        response = jsonify(error=f"the Host header {header[:100]!r} is not one this service answers to "
                                 "(IMGCLF_ALLOWED_HOSTS)")
        response.status_code = 400
        return response


def init_app(app: Flask, settings: AccessSettings) -> None:
    """Turn the router's redirects off; with ``IMGCLF_ALLOWED_HOSTS``, refuse other Host headers first of all.

    Call it before any route is registered: the rules take the map's redirect settings when they are added.
    """
    app.url_map.merge_slashes = False  # "/v1//models" is a 404, not a 308 to http://<Host>/v1/models
    app.url_map.redirect_defaults = False
    if settings.hosts:
        app.before_request_funcs.setdefault(None, []).insert(0, HostCheck(settings.hosts).check)
