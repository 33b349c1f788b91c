"""The HTTP server's settings: gunicorn's (bind, workers, threads, timeouts, logs) and the upload limit.

Read by gunicorn's master (:mod:`imgclf.service.server.gunicorn_conf`), by the front
(:mod:`imgclf.service.front.main`) and checked by `imgclf serve` before it execs either
(gunicorn's own config-file errors are a traceback). Standard library only, through
:mod:`imgclf.core.settings`: the gunicorn master must stay free of TensorFlow, Flask and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.core.errors import UsageError
from imgclf.core.settings import Section, setting

LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")  # what gunicorn and logging accept


def parse_grpc_bind(name: str, raw: str) -> str:
    """Return a gRPC address HOST:PORT ([v6]:PORT; port 0-65535), or raise UsageError naming ``name``."""
    host, _, port = raw.strip().rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{name}={raw!r} is not HOST:PORT (e.g. 0.0.0.0:8500, [::]:8500)")
    return raw.strip()


@dataclass(frozen=True)
class ServerSettings(Section):
    """How the service listens and runs its workers; each field is the variable ``IMGCLF_<FIELD>``."""

    bind: str = setting("127.0.0.1:8000", "address to listen on, HOST:PORT or unix:PATH (the container: "
                                          "0.0.0.0:8000)")
    workers: int = setting(2, "worker processes, each loading its own models", minimum=1)
    threads: int = setting(8, "request threads per worker (gthread); concurrent requests share model calls",
                           minimum=1)
    timeout: int = setting(120, "seconds a silent worker lives (covers model loading)", minimum=1)
    graceful_timeout: int = setting(30, "seconds in-flight requests get after SIGTERM", minimum=0)
    log_level: str = setting("info", "log level of gunicorn, the front and the service", choices=LOG_LEVELS)
    access_log: bool = setting(False, "one access-log line per request on stdout")
    lean_predict: bool = setting(True, "answer the common POST /predict (a JPEG, JSON back) without Flask's "
                                       "request machinery; the same answer, less CPU (0: Flask answers all)")
    malloc_trim_seconds: int = setting(1, "a worker hands freed heap memory back to the system this often "
                                          "(glibc's malloc_trim; 0: never)", minimum=0)
    max_upload_bytes: int = setting(20 * 1024 * 1024, "request bodies above this get 413 (from the front before "
                                                      "they arrive, else from the app); gRPC messages above it "
                                                      "get RESOURCE_EXHAUSTED", minimum=1)
    # gRPC beside REST (imgclf.service.protocols.grpc): off unless set, so that no second port opens unasked;
    # the Kubernetes manifests set 0.0.0.0:8500 (TF Serving's gRPC port).
    grpc_bind: str = setting("", "address of the gRPC port, HOST:PORT (TF Serving's PredictionService and "
                                 "ModelService, the v2 GRPCInferenceService, grpc.health.v1); unset: no gRPC",
                             parse=parse_grpc_bind)
    grpc_max_streams: int = setting(64, "concurrent gRPC calls on one connection at most", minimum=1)
    grpc_min_ping_seconds: float = setting(10.0, "a gRPC client that pings more often than this (keepalive) is "
                                                 "disconnected", minimum=0.1, maximum=86_400)
    # POST /predict sends one file and a few fields; the parser stops at the first part over the limit.
    max_form_parts: int = setting(100, "parts of a multipart body at most: more gets 413 naming the limit",
                                  minimum=1)
