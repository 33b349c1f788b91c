"""Where imgclf keeps downloaded and generated files by default."""

from __future__ import annotations

from pathlib import Path

from imgclf.core.settings import ENV_HOME, env_path


def imgclf_home() -> Path:
    """Return the data directory: ``$IMGCLF_HOME``, else ``~/.cache/imgclf``."""
    return env_path(ENV_HOME) or Path.home() / ".cache" / "imgclf"


def inception_dir() -> Path:
    """Return where `imgclf fetch-inception` puts the real Inception-v3 graph."""
    return imgclf_home() / "inception"
