"""`imgclf serve`: run the HTTP service (the front, and gunicorn behind it) on a model repository.

The options become ``IMGCLF_*`` variables and the process becomes the front
(``exec`` of :mod:`imgclf.service.front.main`), which listens on the port, reads
requests under deadlines and starts gunicorn on a private socket; with
``IMGCLF_FRONT=0`` it becomes gunicorn itself, straight on the port (for a proxy
of your own in front). Either way signals from a terminal or a container runtime
reach it directly: SIGTERM lets in-flight requests finish, then exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from imgclf.core.errors import UsageError
from imgclf.core.paths import MODEL_REPOSITORY_HELP, model_repository
from imgclf.core.precision import PRECISIONS
from imgclf.service.front.settings import FrontSettings
from imgclf.service.server.launch import gunicorn_argv
from imgclf.service.server.settings import ServerSettings
from imgclf.service.settings import Settings
from imgclf.training.serving_backend import SERVING_BACKENDS

log = logging.getLogger(__name__)

FRONT = "imgclf.service.front.main"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf serve`."""
    p = sub.add_parser("serve", help="serve a model repository over HTTP (imgclf's front, gunicorn behind it)",
                       description="Serve every model of a model repository: POST /predict, the TF-Serving "
                                   "REST API, /metrics and the upload page. A front reads every request "
                                   "under deadlines (IMGCLF_HEADER_TIMEOUT, IMGCLF_BODY_TIMEOUT, ...) and "
                                   "hands it to gunicorn (gthread workers; each worker loads the models "
                                   "itself); IMGCLF_FRONT=0 runs gunicorn alone on the address. Unset options "
                                   "fall back to IMGCLF_* variables, then to the defaults shown.")
    p.add_argument("--model-dir", type=Path, default=None, metavar="DIR", help=MODEL_REPOSITORY_HELP)
    add_server_options(p)
    p.add_argument("--grpc-bind", default=None, metavar="HOST:PORT",
                   help="also serve gRPC on this address: TF Serving's PredictionService and ModelService, the "
                        "v2 GRPCInferenceService, grpc.health.v1; each worker binds it (SO_REUSEPORT) once its "
                        "models are loaded (default: $IMGCLF_GRPC_BIND; unset: no gRPC)")
    p.add_argument("--backend", choices=SERVING_BACKENDS, default=None,
                   help="what runs the image classifiers' featurizer: card = the backend and precision each "
                        "model card names, tensorflow, openvino or auto (sets IMGCLF_BACKEND; default: "
                        "$IMGCLF_BACKEND or card)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="serving precision: auto = fp16 on a GPU of compute capability >= 7.0, else bf16 on a "
                        "CPU with AMX/AVX512_BF16, else fp32 (sets IMGCLF_PRECISION; default: $IMGCLF_PRECISION "
                        "or auto)")
    p.add_argument("--allow-unsafe-ops", action="store_true",
                   help="load models whose graphs hold ops outside the inference allow-list (file, process, "
                        "network ops): only models you trust (sets IMGCLF_ALLOW_UNSAFE_OPS=1)")
    p.add_argument("--model-config-file", type=Path, default=None, metavar="FILE",
                   help="serve the models this file lists, with their version policies and labels (TF "
                        "Serving's model_config_list text format; sets IMGCLF_MODEL_CONFIG_FILE)")
    p.set_defaults(func=cmd_serve)


def add_server_options(p: argparse._ActionsContainer) -> None:
    """Add --bind, --workers and --threads (shared with `imgclf demo --serve`)."""
    d = ServerSettings()  # the defaults, stated once
    p.add_argument("--bind", default=None, metavar="HOST:PORT",
                   help=f"address to listen on (default: $IMGCLF_BIND or {d.bind}; 0.0.0.0:8000 in a container)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"worker processes, each loading the models (default: $IMGCLF_WORKERS or {d.workers})")
    p.add_argument("--threads", type=int, default=None,
                   help=f"request threads per worker; concurrent requests share model calls "
                        f"(default: $IMGCLF_THREADS or {d.threads})")


def front_argv() -> list[str]:
    """Return the command line that runs the front (which starts gunicorn itself), in this interpreter."""
    return [sys.executable, "-P", "-m", FRONT]


def serve_argv(env: Mapping[str, str] | None = None) -> list[str]:
    """Return what `imgclf serve` execs: the front, or gunicorn alone when ``IMGCLF_FRONT=0``."""
    return front_argv() if FrontSettings.from_env(env).enabled else gunicorn_argv()


def check_server_options(workers: int | None = None, threads: int | None = None) -> None:
    """Raise UsageError for a --workers or --threads below 1 (checked before anything else is looked at)."""
    for name, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1; received {value}")


def serve_env(model_dir: Path, bind: str | None = None, workers: int | None = None, threads: int | None = None,
              base: dict | None = None) -> dict[str, str]:
    """Return the environment for gunicorn: ``base`` (default os.environ) with the given options as IMGCLF_*."""
    check_server_options(workers, threads)
    env = dict(os.environ if base is None else base)
    env["IMGCLF_MODEL_REPOSITORY"] = str(Path(model_dir).expanduser().resolve())
    for key, value in (("IMGCLF_BIND", bind), ("IMGCLF_WORKERS", workers), ("IMGCLF_THREADS", threads)):
        if value is not None:
            env[key] = str(value)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def check_settings(env: Mapping[str, str]) -> Settings:
    """Return the settings tree of ``env``; raise UsageError if a variable gunicorn, the front or a worker reads is bad.

    The workers read the tree again, each in its own process: whether the device exists is theirs to check.
    """
    from imgclf.service.front.main import parse_bind

    settings = Settings.from_env(env)
    if settings.front.enabled:
        parse_bind(settings.server.bind)
    return settings


def exec_gunicorn(model_dir: Path, bind: str | None = None, workers: int | None = None,
                  threads: int | None = None) -> None:
    """Replace this process with the front (or gunicorn alone) serving ``model_dir``; returns only if exec fails.

    Raises:
        UsageError: a setting of gunicorn or of the workers is malformed (checked here: from gunicorn's master
            or workers it would be a traceback, or workers that fail to boot one after the other).
    """
    env = serve_env(model_dir, bind, workers, threads)
    settings = check_settings(env)
    argv = front_argv() if settings.front.enabled else gunicorn_argv()
    grpc = f" and gRPC on {settings.server.grpc_bind}" if settings.server.grpc_bind else ""
    print(f"serving {env['IMGCLF_MODEL_REPOSITORY']} on http://{settings.server.bind}/{grpc} (Ctrl-C to stop)",
          flush=True)
    sys.stderr.flush()  # exec discards whatever is still buffered
    os.execve(argv[0], argv, env)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run `imgclf serve`."""
    from imgclf.core.repository import list_models

    check_server_options(args.workers, args.threads)  # a bad argument is named before the repository is looked at
    for variable, value in (("IMGCLF_BACKEND", args.backend), ("IMGCLF_PRECISION", args.precision)):
        if value is not None:
            os.environ[variable] = value  # the workers' settings read it; checked with them before exec
    model_dir = model_repository(args.model_dir).expanduser().absolute()
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
        os.environ["IMGCLF_ALLOW_UNSAFE_OPS"] = "1"  # the workers' settings read it
    if args.grpc_bind:
        os.environ["IMGCLF_GRPC_BIND"] = args.grpc_bind
    if args.model_config_file:  # checked (line by line) with the other settings before gunicorn starts
        os.environ["IMGCLF_MODEL_CONFIG_FILE"] = str(args.model_config_file.expanduser().absolute())
    exec_gunicorn(model_dir, args.bind, args.workers, args.threads)
    return 0  # not reached: exec replaced this process
