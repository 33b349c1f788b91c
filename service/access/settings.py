"""The access-control settings, parsed and checked once: API keys, /metrics keys, rate limit, allowed origins.

:meth:`AccessSettings.from_config` reads the keys file; ``ServiceConfig.validate``
calls it, so a bad file or setting is one clear error when the service starts
(``imgclf serve`` checks before gunicorn starts), and the app's hooks
(:mod:`imgclf.service.access.auth`, :mod:`imgclf.service.access.cross_site`) use the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imgclf.core.errors import UsageError
from imgclf.service.access.api_keys import read_keys_file
from imgclf.service.access.rate_limit import Rate, parse_rate

ANY_ORIGIN = "*"
_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


@dataclass(frozen=True)
class AccessSettings:
    """Who may call the service."""

    keys: dict  # {name: sha256 hex}; empty: no key is needed
    metrics_keys: frozenset  # names of the keys that alone may read /metrics; empty: any key
    rate: Rate | None  # per key and worker; None: no limit
    origins: frozenset  # browser origins allowed besides the service's own; {"*"}: any

    @property
    def keys_required(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_config(cls, config) -> AccessSettings:
        """Return the settings of a ServiceConfig (the keys file read now).

        Raises:
            UsageError: an unreadable or malformed keys file, a /metrics key name not in it, a rate limit
                without keys or malformed, a malformed origin.
        """
        keys = read_keys_file(config.api_keys_file) if config.api_keys_file else {}
        metrics_keys = frozenset(name.strip() for name in config.metrics_keys.split(",") if name.strip())
        if metrics_keys and not keys:
            raise UsageError("IMGCLF_METRICS_KEYS names keys but IMGCLF_API_KEYS_FILE is not set")
        unknown = sorted(metrics_keys - set(keys))
        if unknown:
            raise UsageError(f"IMGCLF_METRICS_KEYS names {', '.join(map(repr, unknown))}, not in the keys file; "
                             f"its keys: {', '.join(sorted(keys))}")
        rate = parse_rate(config.rate_limit, config.rate_burst)
        if rate is not None and not keys:
            raise UsageError("IMGCLF_RATE_LIMIT is per API key: set IMGCLF_API_KEYS_FILE too")
        return cls(keys, metrics_keys, rate, parse_origins(config.cors_origins))


def parse_origins(raw: str) -> frozenset:
    """Return the origins of ``"https://a.example, http://localhost:3000"`` (lower case), or {"*"}.

    Raises:
        UsageError: an entry that is not scheme://host[:port] (no path, no trailing slash but one).
    """
    origins = set()
    for item in (raw or "").split(","):
        origin = item.strip().lower().removesuffix("/")
        if not origin:
            continue
        if origin != ANY_ORIGIN and not _ORIGIN.fullmatch(origin):
            raise UsageError(f"IMGCLF_CORS_ORIGINS entries are origins like https://app.example.com or "
                             f"http://localhost:3000 (scheme, host, port; no path), or *; received {item.strip()!r}")
        origins.add(origin)
    if ANY_ORIGIN in origins and len(origins) > 1:
        raise UsageError("IMGCLF_CORS_ORIGINS is either * or a list of origins, not both")
    return frozenset(origins)
