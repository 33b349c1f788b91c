"""TensorFlow's start-up lines: kept out of a command's output, and shown when the command fails.

``import tensorflow`` prints lines of its own on stderr (absl's "All log messages
before absl::InitializeLog() ...", ``cpu_feature_guard``, oneDNN's notice, and on
CUDA builds the cuDNN/cuFFT/cuBLAS "Unable to register factory" errors). They are
written by C++ straight to file descriptor 2, before Python's logging exists, so
neither a logging filter nor ``sys.stderr`` can catch them, and
``TF_CPP_MIN_LOG_LEVEL`` hides only some: the factory errors and absl's line come
at level 2 too. What works is to point fd 2 at a temporary file for the time of
the import: :func:`capture_import` installs an import hook that does that the
first time anything imports ``tensorflow`` (whichever module it is, after the
command has checked its arguments), and keeps the text; :func:`captured` returns
it, for the command line to print when the command fails.

Lines TensorFlow prints after its import still follow ``TF_CPP_MIN_LOG_LEVEL``
(the command line sets 2, and 0 for ``-vv``). Standard library only: this module
must not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import sys
import threading
from collections.abc import Iterator

MODULE = "tensorflow"
_lock = threading.Lock()
_captured: list[str] = []


@contextlib.contextmanager
def stderr_fd_to_buffer(into: list[str]) -> Iterator[None]:
    """Point file descriptor 2 at a temporary file inside the block; append what was written there to ``into``."""
    import tempfile  # here: `imgclf --help` imports this module

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()  # Python's own writes during the block land in the buffer too
            os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            text = buffer.read().decode("utf-8", "replace")
            if text:
                into.append(text)


class _QuietLoader:
    """Run the real loader of ``tensorflow`` with fd 2 captured (a loader by protocol: importlib.abc is slow to
    import, and `imgclf --help` imports this module)."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader  # what TensorFlow sees of itself stays its own
        module.__spec__.loader = self.loader
        with stderr_fd_to_buffer(_captured):
            self.loader.exec_module(module)


class _TensorFlowFinder:
    """Find ``tensorflow`` as the other finders do, and give it :class:`_QuietLoader`; only once."""

    def find_spec(self, name, path=None, target=None):
        if name != MODULE:
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


_finder = _TensorFlowFinder()


def capture_import() -> bool:
    """Capture what the first ``import tensorflow`` writes to fd 2; return False if TensorFlow is already imported."""
    with _lock:
        if MODULE in sys.modules:
            return False
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        return True


def uninstall() -> None:
    """Stop capturing (the hook is gone after the one import anyway)."""
    with _lock, contextlib.suppress(ValueError):
        sys.meta_path.remove(_finder)


def captured(clear: bool = True) -> str:
    """Return what TensorFlow's import wrote to stderr ("" when nothing, or not captured); forget it if ``clear``."""
    with _lock:
        text = "".join(_captured)
        if clear:
            _captured.clear()
        return text
