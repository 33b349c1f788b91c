"""Publish versions of an exported model for lifecycle tests: a copy of one version, as an export writes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from imgclf.core import export_names as names
from imgclf.core.repository import publish_version


def publish_copy(repo: Path, source: Path, name: str = "shapes") -> Path:
    """Publish a copy of version directory ``source`` as the next version of ``name`` (one atomic rename)."""

    def write(work: Path) -> dict:
        shutil.copytree(source, work, dirs_exist_ok=True)
        card = json.loads((work / names.MODEL_CARD_FILE).read_text(encoding="utf-8"))
        card.pop("version", None)
        return card

    return publish_version(repo, name, write)
