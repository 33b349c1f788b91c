"""The access-control section of the settings: API keys, /metrics keys, rate limit, allowed origins.

:meth:`AccessSettings.from_env` reads the variables and the keys file once, and keeps
what they say parsed (:attr:`~AccessSettings.keys`, :attr:`~AccessSettings.rate`, ...):
a bad file or setting is one clear error when the service starts (``imgclf serve``
checks before gunicorn starts), and the app's hooks (:mod:`imgclf.service.access.auth`,
:mod:`imgclf.service.access.cross_site`) are handed the result. No Flask here: the
settings tree (:mod:`imgclf.service.settings`) imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from imgclf.core.errors import UsageError
from imgclf.core.settings import Section, parsed, setting
from imgclf.service.access.api_keys import read_keys_file
from imgclf.service.access.rate_limit import Rate, parse_rate

ANY_ORIGIN = "*"
_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")
_HOST = re.compile(r"([a-z0-9_-]+(\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


@dataclass(frozen=True)
class AccessSettings(Section):
    """Who may call the service: the settings as given, and what they name, parsed once."""

    api_keys_file: str = setting("", "keys file (name:sha256:<hex> lines, `imgclf api-key NAME`): every route "
                                     "but the probes and the page needs a key (unset: no keys)")
    metrics_keys: str = setting("", "names of keys of the keys file that alone may read /metrics, and nothing "
                                    "else (unset: any key)")
    rate_limit: str = setting("", "per key and worker, e.g. 10/s, 600/min, 1000/hour: 429 with Retry-After "
                                  "over it (unset: none); needs the keys file")
    rate_burst: int = setting(0, "requests a key may send at once (0: the rate's count, 600/min -> 600)",
                              minimum=0)
    cors_origins: str = setting("", "other origins whose browser pages may call the API: "
                                    "https://a.example,... or * (unset: none)")
    allowed_hosts: str = setting("", "Host headers answered, e.g. api.example.com,localhost:8000 (no port: any); "
                                     "others get 400, against DNS rebinding; probes exempt (unset: any)")
    keys: dict = parsed({})  # {name: sha256 hex} of the keys file; empty: no key is needed
    metrics_key_names: frozenset = parsed(frozenset())  # the keys that alone may read /metrics; empty: any key
    rate: Rate | None = parsed(None)  # per key and worker; None: no limit
    origins: frozenset = parsed(frozenset())  # browser origins allowed besides the service's own; {"*"}: any
    hosts: frozenset = parsed(frozenset())  # allowed Host headers ("name" or "name:port"); empty: any

    @property
    def keys_required(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> AccessSettings:
        """Return the settings with the keys file read and the rest parsed.

        Raises:
            UsageError: an unreadable or malformed keys file, a /metrics key name not in it, a rate limit
                without keys or malformed, a malformed origin.
        """
        given = cls(**values)
        keys = read_keys_file(given.api_keys_file) if given.api_keys_file else {}
        metrics_keys = frozenset(name.strip() for name in given.metrics_keys.split(",") if name.strip())
        if metrics_keys and not keys:
            raise UsageError("IMGCLF_METRICS_KEYS names keys but IMGCLF_API_KEYS_FILE is not set")
        unknown = sorted(metrics_keys - set(keys))
        if unknown:
            raise UsageError(f"IMGCLF_METRICS_KEYS names {', '.join(map(repr, unknown))}, not in the keys file; "
                             f"its keys: {', '.join(sorted(keys))}")
        rate = parse_rate(given.rate_limit, given.rate_burst)
        if rate is not None and not keys:
            raise UsageError("IMGCLF_RATE_LIMIT is per API key: set IMGCLF_API_KEYS_FILE too")
        return replace(given, keys=keys, metrics_key_names=metrics_keys, rate=rate,
                       origins=parse_origins(given.cors_origins), hosts=parse_hosts(given.allowed_hosts))


def parse_hosts(raw: str) -> frozenset:
    """Return the hosts of ``"api.example.com, localhost:8000"`` (lower case; "name" or "name:port").

    Raises:
        UsageError: an entry that is not a host name, an IPv4 or [IPv6] address, with an optional port.
    """
    hosts = set()
    for item in (raw or "").split(","):
        entry = item.strip().lower().removesuffix(".")
        if not entry:
            continue
        if not _HOST.fullmatch(entry):
            raise UsageError(f"IMGCLF_ALLOWED_HOSTS entries are host names or addresses with an optional port, like "
                             f"api.example.com or localhost:8000 (no scheme, no path); received {item.strip()!r}")
        hosts.add(entry)
    return frozenset(hosts)


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
