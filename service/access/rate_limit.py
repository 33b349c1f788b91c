"""A token-bucket rate limit per API key, in one worker: ``IMGCLF_RATE_LIMIT=600/min``.

Each key has a bucket of ``burst`` tokens refilled at the rate; a request takes
one, and a request that finds none gets 429 with ``Retry-After`` (the seconds
until a token is back). Buckets live in each worker: a server of W workers lets
a key through at up to W times the rate.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from imgclf.core.errors import UsageError

UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
         "hour": 3600.0}
_RATE = re.compile(r"\s*([0-9]{1,9})\s*/\s*([a-z]+)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``seconds``, at most ``burst`` at once."""

    count: int
    seconds: float
    burst: int

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def parse_rate(raw: str, burst: int = 0, name: str = "IMGCLF_RATE_LIMIT") -> Rate | None:
    """Return the rate ``raw`` ("10/s", "600/min", "1000/hour") with its burst (0: the count); "" gives None.

    Raises:
        UsageError: not COUNT/UNIT with a count of at least 1 and a unit of s, min or hour.
    """
    if not raw or not raw.strip():
        return None
    found = _RATE.fullmatch(raw)
    unit = found and UNITS.get(found.group(2).lower())
    if not found or not unit or int(found.group(1)) < 1:
        raise UsageError(f"{name} must be COUNT/UNIT with a count of at least 1 and a unit of s, min or hour "
                         f"(e.g. 600/min); received {raw!r}")
    count = int(found.group(1))
    return Rate(count, unit, int(burst) if burst else count)


class TokenBuckets:
    """One token bucket per key name."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, name: str) -> float:
        """Take a token of ``name``'s bucket: return 0.0, or the seconds until one is back (nothing taken)."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(name, (float(self.rate.burst), now))
            tokens = min(float(self.rate.burst), tokens + (now - then) * self.rate.per_second)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / self.rate.per_second


def retry_after(seconds: float) -> str:
    """Return a Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
