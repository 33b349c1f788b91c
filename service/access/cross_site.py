"""Cross-site requests: a browser page of another origin may call the API only if ``IMGCLF_CORS_ORIGINS`` allows it.

A page on any site can make a user's browser POST a ``text/plain`` or
multipart body to a service on localhost or the intranet without a preflight.
Browsers say where a request comes from: ``Sec-Fetch-Site`` (all current
browsers) and ``Origin`` (every cross-origin POST). A request whose
``Sec-Fetch-Site`` is ``cross-site`` or ``same-site``, or (older browsers) whose
``Origin`` names another host than the request's ``Host``, is refused with 403
unless its origin is allowed; then it gets CORS headers, and its preflight
(``OPTIONS`` with ``Access-Control-Request-Method``) is answered 204. Clients
that are not browsers send neither header and are not affected. Following a
link to the page from another site (a navigation) still opens the page.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request

from imgclf.service.access.settings import ANY_ORIGIN, AccessSettings

EXTENSION = "imgclf.cross_site"
PAGE_ENDPOINTS = frozenset({"web.index", "web.static"})  # a link from another site may open the page
FOREIGN_SITES = ("cross-site", "same-site")  # Sec-Fetch-Site values of another origin
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, X-API-Key, Content-Type, Accept, Inference-Header-Content-Length"
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate, Inference-Header-Content-Length"
PREFLIGHT_MAX_AGE = "600"


class CrossSite:
    """The origins allowed besides the service's own."""

    def __init__(self, origins: frozenset):
        self.origins = origins

    def allowed(self, origin: str) -> bool:
        """Return whether a page of ``origin`` may call the API."""
        return ANY_ORIGIN in self.origins or origin.strip().lower().removesuffix("/") in self.origins

    def check(self) -> Response | None:
        """Answer a preflight, or 403 a foreign browser request that is not allowed (a before_request hook)."""
        origin = request.headers.get("Origin", "")
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            return self._preflight(origin)
        if not self.foreign(origin):
            return None
        if request.endpoint in PAGE_ENDPOINTS and request.method in ("GET", "HEAD") \
                and request.headers.get("Sec-Fetch-Mode", "navigate") == "navigate":
            return None
        if origin and self.allowed(origin):
            return None
        shown = origin[:100] or f"another site (Sec-Fetch-Site: {request.headers.get('Sec-Fetch-Site', '')[:20]})"
        response = jsonify(error=f"cross-origin requests from {shown} are not allowed; the service's operator can "
                                 f"allow an origin with IMGCLF_CORS_ORIGINS")
        response.status_code = 403
        return response

    def foreign(self, origin: str) -> bool:
        """Return whether the request comes from a browser page of another origin."""
        site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
        if site:
            return site in FOREIGN_SITES
        if not origin:
            return False
        return origin.strip().lower() == "null" or urlsplit(origin.strip().lower()).netloc != request.host.lower()

    def add_headers(self, response: Response) -> Response:
        """Add CORS headers to the answer of an allowed foreign origin (an after_request hook)."""
        origin = request.headers.get("Origin", "")
        if self.origins:
            response.vary.add("Origin")
        if origin and self.foreign(origin) and self.allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = ANY_ORIGIN if ANY_ORIGIN in self.origins else origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response

    def _preflight(self, origin: str) -> Response:
        if self.foreign(origin) and not self.allowed(origin):
            response = jsonify(error=f"cross-origin requests from {origin[:100]} are not allowed")
            response.status_code = 403
            return response
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response  # add_headers adds Allow-Origin


def init_app(app: Flask, settings: AccessSettings) -> CrossSite:
    """Install the cross-site check of the access section's origins (before every other hook) and CORS headers."""
    cross_site = CrossSite(settings.origins)
    app.extensions[EXTENSION] = cross_site
    app.before_request(cross_site.check)
    app.after_request(cross_site.add_headers)
    return cross_site

