"""Where imgclf keeps downloaded and generated files by default."""

from __future__ import annotations

import os
from pathlib import Path


def imgclf_home() -> Path:
    """Return the data directory: ``$IMGCLF_HOME``, else ``~/.cache/imgclf``."""
    env = os.environ.get("IMGCLF_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imgclf"


def inception_dir() -> Path:
    """Return where `imgclf fetch-inception` puts the real Inception-v3 graph."""
    return imgclf_home() / "inception"
