"""The installed imgclf's version, as its package metadata gives it."""

from __future__ import annotations

from importlib import metadata

UNKNOWN = "0"  # a plain checkout, run without installing: no package metadata to read


def package_version() -> str:
    """Return imgclf's installed version (``UNKNOWN`` when it is not installed)."""
    try:
        return metadata.version("imgclf")
    except metadata.PackageNotFoundError:
        return UNKNOWN
