"""The real service under gunicorn on 127.0.0.1 (an ephemeral port), for system tests and benchmarks."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from imgclf.service.cli import serve as serve_cli
from tests.support.processes import free_port


@dataclass
class Server:
    """A started gunicorn: ``address`` is ``127.0.0.1:PORT``, ``process`` its master, ``log`` its output."""

    address: str
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        """Return the base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    def log_text(self) -> str:
        """Return what gunicorn and its workers wrote so far."""
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def gunicorn(repo: Path, tmp: Path, workers: int = 1, threads: int = 4, env: Mapping[str, str] | None = None,
             ready_within: float = 120.0) -> Iterator[Server]:
    """Start gunicorn on ``repo``, wait until ``/readyz`` answers 200, yield it; stop it (SIGTERM, then SIGKILL).

    ``env`` adds or overrides variables (``IMGCLF_*``); ``tmp`` holds the log and is the working directory.
    """
    port = free_port()
    full_env = serve_cli.serve_env(repo, bind=f"127.0.0.1:{port}", workers=workers, threads=threads)
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full_env.update({"TMPDIR": str(tmp), "IMGCLF_GRACEFUL_TIMEOUT": "10", **(env or {})})
    log = tmp / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_cli.gunicorn_argv(), env=full_env, cwd=tmp, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server(f"127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + ready_within
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early ({process.returncode}):\n{server.log_text()}")
            try:
                if requests.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or no worker has imported the app yet (a loaded machine)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready in {ready_within:.0f} s:\n{server.log_text()}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
