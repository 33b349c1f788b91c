"""Where imgclf keeps its files by default: its data folder (``IMGCLF_HOME``) and the model repository."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgclf.core.settings import ENV_HOME, ENV_MODEL_REPOSITORY, Env, Section, env_path, setting


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


DEFAULT_MODEL_REPOSITORY = Path("models")  # relative: ./models of the folder a command runs in
MODEL_REPOSITORY_HELP = ("model repository, <dir>/<name>/<version>/ in TensorFlow Serving's layout (default: "
                         f"${ENV_MODEL_REPOSITORY}, else ./{DEFAULT_MODEL_REPOSITORY})")


def model_repository(flag: Path | str | None = None, env: Env | None = None) -> Path:
    """Return the model repository of a command: ``flag`` (its --model-dir) when given, else
    ``$IMGCLF_MODEL_REPOSITORY``, else ``./models`` — the one rule of every command and of the service."""
    if flag is not None and str(flag).strip():
        return Path(flag).expanduser()
    return env_path(ENV_MODEL_REPOSITORY, DEFAULT_MODEL_REPOSITORY, env)
