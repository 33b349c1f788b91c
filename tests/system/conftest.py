"""Everything under tests/system/ is a system test: ``make test-fast`` (``-m "not system"``) leaves it out."""

from __future__ import annotations

from pathlib import Path

import pytest

SYSTEM_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Mark every test collected from this folder ``system`` (pytest passes all items, so key on the path)."""
    for item in items:
        if SYSTEM_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.system)
