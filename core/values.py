"""Describe a received value briefly, for error messages that say what was received without echoing it."""

from __future__ import annotations

_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
          int: "a number", float: "a number"}


def json_type(value) -> str:
    """Name a JSON value's type as a client would say it ("an object", "a string", "null"...)."""
    return _KINDS.get(type(value), type(value).__name__)


def short(value, limit: int = 60) -> str:
    """Return the repr of a received value, cut to ``limit`` characters so a huge one cannot flood the message."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:  # JSON allows 4300 digits
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(value) -> str:
    """Describe a JSON value: a list by its length, an object by its first keys, anything else by its short repr."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    return short(value, 40)


def is_number(value) -> bool:
    """Return whether a JSON value is a number (not a bool, string, null or list)."""
    return type(value) in (int, float)
