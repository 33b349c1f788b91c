"""The front's limits (:mod:`imgclf.service.front.proxy`): deadlines, connection counts, header and buffer sizes.

The upload limit the front enforces is the service's own, ``IMGCLF_MAX_UPLOAD_BYTES``
(:class:`imgclf.service.server.settings.ServerSettings`). Standard library only, through
:mod:`imgclf.core.settings`: the front must stay free of TensorFlow, Flask and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.core.settings import Section, setting

BODY_RATE_GRACE_S = 5.0  # a body's average rate is checked once it has been arriving this long
# The per-address limit when IMGCLF_MAX_CLIENT_CONNECTIONS is 0: one address may hold a quarter of all
# connections (so it takes four addresses to fill them), and at least 32 (a browser opens 6 per host;
# an office behind one NAT address opens more).
CLIENT_SHARE = 4
MIN_CLIENT_CONNECTIONS = 32


@dataclass(frozen=True)
class FrontSettings(Section):
    """The front's limits; each field is the variable ``IMGCLF_<FIELD>`` (``enabled``: ``IMGCLF_FRONT``)."""

    enabled: bool = setting(True, "the front takes the port, gunicorn behind it (0: gunicorn straight on the port, "
                                  "behind a proxy of your own)", env="IMGCLF_FRONT")
    header_timeout: float = setting(10.0, "seconds for a whole request head, else 408", minimum=0.1, maximum=3600)
    body_timeout: float = setting(60.0, "seconds for a whole body, and for taking the answer", minimum=0.1,
                                  maximum=3600)
    min_body_rate: int = setting(1024, "bytes/s a body must average after the first seconds, else 408 (0: no "
                                       "minimum)", minimum=0)
    keepalive_timeout: float = setting(5.0, "seconds a connection may idle between requests", minimum=0,
                                       maximum=3600)
    max_connections: int = setting(1000, "open client connections at most (beyond: one holding no request makes "
                                         "room, else 503)", minimum=1)
    max_client_connections: int = setting(0, "open connections from one client address at most, 429 beyond (0: "
                                             "a quarter of IMGCLF_MAX_CONNECTIONS, at least 32)", minimum=0)
    max_header_bytes: int = setting(16 * 1024, "request line and header fields together, 431 beyond",
                                    minimum=1024, maximum=1 << 20)
    max_buffered_bytes: int = setting(256 * 1024 * 1024, "request bodies the front holds at once, in all "
                                                         "(503 beyond)", minimum=1)
    event_loop: str = setting("auto", "the front's event loop: auto (uvloop where installed, else asyncio's), "
                                      "uvloop, asyncio", choices=("auto", "uvloop", "asyncio"))
    body_rate_grace: float = BODY_RATE_GRACE_S  # not a setting (tests shorten it)

    @property
    def client_limit(self) -> int:
        """Return the open connections one client address may hold (``max_client_connections``, or its default)."""
        if self.max_client_connections:
            return self.max_client_connections
        return min(self.max_connections, max(MIN_CLIENT_CONNECTIONS, self.max_connections // CLIENT_SHARE))
