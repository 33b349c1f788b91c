"""Where imgclf keeps downloaded and generated files by default (``IMGCLF_HOME``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgclf.core.settings import ENV_HOME, Section, setting


@dataclass(frozen=True)
class PathSettings(Section):
    """Where imgclf's own files live."""

    home: Path = setting(Path("~/.cache/imgclf"), "imgclf's data folder: the downloaded graph (inception/), "
                                                  "MNIST (data/mnist.npz), the demo (demo/), OpenVINO models",
                         env=ENV_HOME)


def imgclf_home() -> Path:
    """Return the data directory: ``$IMGCLF_HOME``, else ``~/.cache/imgclf``."""
    return PathSettings.from_env().home.expanduser()


def inception_dir() -> Path:
    """Return where `imgclf fetch-inception` puts the real Inception-v3 graph."""
    return imgclf_home() / "inception"
