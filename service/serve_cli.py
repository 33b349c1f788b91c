"""`imgclf serve`: run the HTTP service under gunicorn on a model repository.

The options become ``IMGCLF_*`` variables and the process becomes gunicorn
(``exec``), so signals from a terminal or a container runtime reach gunicorn's
master directly: SIGTERM lets in-flight requests finish, then exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from imgclf.core.errors import UsageError

log = logging.getLogger(__name__)

CONF = "python:imgclf.service.gunicorn_conf"
APP = "imgclf.service:create_app()"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf serve`."""
    p = sub.add_parser("serve", help="serve a model repository over HTTP (gunicorn)",
                       description="Serve every model of a model repository: POST /predict, the TF-Serving "
                                   "REST API, /metrics and the upload page. Runs gunicorn with gthread "
                                   "workers; each worker loads the models itself. Unset options fall back to "
                                   "IMGCLF_* variables, then to the defaults shown.")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="model repository, <dir>/<name>/<version>/ (default: $IMGCLF_MODEL_REPOSITORY or ./models)")
    add_server_options(p)
    p.add_argument("--allow-unsafe-ops", action="store_true",
                   help="load models whose graphs hold ops outside the inference allow-list (file, process, "
                        "network ops): only models you trust (sets IMGCLF_ALLOW_UNSAFE_OPS=1)")
    p.set_defaults(func=cmd_serve)


def add_server_options(p: argparse._ActionsContainer) -> None:
    """Add --bind, --workers and --threads (shared with `imgclf demo --serve`)."""
    p.add_argument("--bind", default=None, metavar="HOST:PORT",
                   help="address to listen on (default: $IMGCLF_BIND or 127.0.0.1:8000; 0.0.0.0:8000 in a container)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, each loading the models (default: $IMGCLF_WORKERS or 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="request threads per worker; concurrent requests share model calls "
                        "(default: $IMGCLF_THREADS or 8)")


def gunicorn_argv() -> list[str]:
    """Return the command line that runs gunicorn with this package's settings, in this interpreter."""
    return [sys.executable, "-m", "gunicorn", "-c", CONF, APP]


def serve_env(model_dir: Path, bind: str | None = None, workers: int | None = None, threads: int | None = None,
              base: dict | None = None) -> dict[str, str]:
    """Return the environment for gunicorn: ``base`` (default os.environ) with the given options as IMGCLF_*."""
    for name, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1; received {value}")
    env = dict(os.environ if base is None else base)
    env["IMGCLF_MODEL_REPOSITORY"] = str(Path(model_dir).expanduser().resolve())
    for key, value in (("IMGCLF_BIND", bind), ("IMGCLF_WORKERS", workers), ("IMGCLF_THREADS", threads)):
        if value is not None:
            env[key] = str(value)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def default_model_dir() -> Path:
    """Return the repository served when --model-dir is not given."""
    from imgclf.service.config import ServiceConfig

    return ServiceConfig.from_env().model_repository


def exec_gunicorn(model_dir: Path, bind: str | None = None, workers: int | None = None,
                  threads: int | None = None) -> None:
    """Replace this process with gunicorn serving ``model_dir``; returns only if exec fails."""
    env = serve_env(model_dir, bind, workers, threads)
    argv = gunicorn_argv()
    print(f"serving {env['IMGCLF_MODEL_REPOSITORY']} on http://{env.get('IMGCLF_BIND') or '127.0.0.1:8000'}/ "
          f"(Ctrl-C to stop)", flush=True)
    sys.stderr.flush()  # exec discards whatever is still buffered
    os.execve(argv[0], argv, env)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run `imgclf serve`."""
    from imgclf.core.repository import list_models

    model_dir = (args.model_dir or default_model_dir()).expanduser().absolute()
    models = list_models(model_dir)
    if not models:
        print(f"imgclf serve: no model in {model_dir} (a model is <dir>/<name>/<version>/ as written by "
              f"`imgclf train`).\n"
              f"  To try the service now, run `imgclf demo --serve`: it builds the demo model and serves it.\n"
              f"  To serve your own, train one with `imgclf train --model-dir {model_dir} ...` "
              f"or pass --model-dir.", file=sys.stderr)
        return 1
    log.info("serving %s", ", ".join(f"{name} v{max(v)}" for name, v in models.items()))
    if args.allow_unsafe_ops:
        os.environ["IMGCLF_ALLOW_UNSAFE_OPS"] = "1"  # the workers' ServiceConfig reads it
    exec_gunicorn(model_dir, args.bind, args.workers, args.threads)
    return 0  # not reached: exec replaced this process
