"""A cached virtualenv for a client whose dependencies clash with imgclf's (its protobuf, its pins).

Such a client runs in its own interpreter, as a subprocess: the venv is created
once from a pinned requirements file and reused while that file (and the Python
version) stays the same, under ``$XDG_CACHE_HOME/imgclf/client-venvs`` (default
``~/.cache``). Creation is serialised by a file lock, so parallel test workers
build it once; a venv whose creation was interrupted has no completion marker
and is rebuilt. pip needs PyPI or its cache, nothing else.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

INSTALL_WITHIN_S = 900
MARKER = ".imgclf-complete"


def cache_root() -> Path:
    """Return the folder that holds the client venvs."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgclf" / "client-venvs"


def venv_key(requirements: Path) -> str:
    """Return what identifies a venv: the requirements' bytes and this Python's version and platform."""
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{sys.version_info[:3]} {sys.platform} {os.uname().machine}".encode())
    return digest.hexdigest()[:16]


def client_python(name: str, requirements: Path, root: Path | None = None) -> Path:
    """Return the interpreter of the venv ``name`` with ``requirements`` installed, creating it once.

    Raises:
        RuntimeError: the venv could not be created or pip failed (its output is in the message).
    """
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"{name}-{venv_key(requirements)}"
    python = venv / "bin" / "python"
    with open(root / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (venv / MARKER).is_file() and python.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)  # an interrupted creation
        steps = ([sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
                  "-r", str(requirements)])
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_WITHIN_S)
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise RuntimeError(f"creating the {name} venv failed: {' '.join(argv)} exited {done.returncode}:\n"
                                   f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        (venv / MARKER).write_text(requirements.read_text())
    return python


def no_deps_target(name: str, requirement: str, root: Path | None = None) -> Path:
    """Return a folder with ``requirement`` installed alone (``pip install --no-deps --target``), once.

    For a client whose own pins clash but whose imports this interpreter already has: the TF Serving stubs
    (tensorflow-serving-api) require the ``tensorflow`` distribution, whose module tensorflow-cpu provides.
    Put the folder on ``sys.path`` to import it.

    Raises:
        RuntimeError: pip failed (its output is in the message).
    """
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{requirement} {sys.version_info[:3]}".encode()).hexdigest()[:16]
    target = root / f"{name}-{key}"
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / MARKER).is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)
        argv = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
                "--no-deps", "--target", str(target), requirement]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_WITHIN_S)
        if done.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise RuntimeError(f"installing {requirement} failed: {' '.join(argv)} exited {done.returncode}:\n"
                               f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        (target / MARKER).write_text(requirement)
    return target
