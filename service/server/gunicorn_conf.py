"""gunicorn settings for ``gunicorn -c python:imgclf.service.server.gunicorn_conf "imgclf.service:create_app()"``.

Every setting comes from the server section of the settings tree,
:class:`imgclf.service.server.settings.ServerSettings` (``IMGCLF_BIND``, ``IMGCLF_WORKERS``,
``IMGCLF_THREADS``, ``IMGCLF_TIMEOUT``, ``IMGCLF_GRACEFUL_TIMEOUT``, ``IMGCLF_LOG_LEVEL``,
``IMGCLF_ACCESS_LOG``, ``IMGCLF_MALLOC_TRIM_SECONDS``: each field's default and help are there;
``imgclf serve`` sets the first three from its options). It is read through
:mod:`imgclf.core.settings`, standard library only: a malformed one (``IMGCLF_ACCESS_LOG=2``,
``IMGCLF_WORKERS=0``) stops gunicorn before it starts; `imgclf serve` checks them first and says so
in one line. Behind the front, `imgclf serve` binds gunicorn to a private unix socket.

Why two workers by default: a worker that dies (or restarts) leaves another one
answering while it reloads its models. Each model call already spreads over
every core, so on a small machine more workers add memory rather than
throughput; for the most throughput there, run one (``bench/serve.py
--workers N`` measures it). Requests of a worker that arrive together share one
model call (``imgclf.service.servables.batching``), so with one image per request a batch holds
at most ``IMGCLF_THREADS`` images.

No ``preload_app``: TensorFlow must never be imported in the master, because
its thread pools do not survive ``fork``. Each worker imports the app and loads
the models itself.

Readiness holds across workers (:mod:`imgclf.service.server.worker_states`): the
master makes a per-server folder where each worker's state (loading, held,
ready, failed) is a small file, and ``/readyz`` answers 200 only when every
worker that takes connections has loaded its models, so after a 200 no model
request gets a 503, whichever worker takes it. Each worker's file is also its
heartbeat, touched every second: a worker stopped (SIGSTOP) or hung makes
``/readyz`` 503 after 10 s, until gunicorn's timeout replaces it. A worker that replaces one that
died (killed, out of memory), and every new worker of a reload (SIGHUP), starts
accepting connections only once its models are loaded: the other workers take
every request meanwhile (during a reload, requests wait in the front, or with
``IMGCLF_FRONT=0`` in the listen backlog, until the first new worker is ready),
so clients lose only the requests that were in flight on a dead one. The
workers of the first start accept at once, so that ``/healthz`` answers while they load; ``/readyz`` says 503 until
all of them are ready, and a model request that reaches one of them meanwhile
waits for its models (at most ``REQUEST_WAIT_S`` seconds, and at most
``IMGCLF_THREADS - 1`` such requests at a time, so a thread stays free for the
probes) instead of getting a 503. A lone worker (``IMGCLF_WORKERS=1``) has
nobody to wait for: it accepts at once and answers 503 (Retry-After) while it
loads, also when it is replaced.

Memory: glibc keeps the heap memory a worker frees for reuse, but buffers of
varying sizes (decoded photos, TensorFlow's tensors, failed decodes of broken
JPEGs in particular) leave it scattered, so a worker's RSS climbs by hundreds
of MB under load before glibc gives some back. Each worker calls
``malloc_trim`` every ``IMGCLF_MALLOC_TRIM_SECONDS`` from a thread of its own:
RSS stays flat for about 2 % more CPU time (a fixed mmap threshold, the other
cure, costs 15 %); ``bench/soak.py`` measures the RSS.

Prometheus: the master points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before the first worker forks (or empties the one given), so every worker's
metrics land there and ``/metrics`` merges them; a dead worker's live gauges
are removed, and the directory is removed on exit when this file made it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import shutil
import sys
import tempfile
import threading
import time


def keep_working_folder_off_sys_path() -> None:
    """Remove the working folder from sys.path: a user's imgclf.py (or models.py) there must not shadow ours.

    gunicorn puts its working folder first on sys.path before it reads this file and again after;
    this runs at the top of this file (for its own imports) and in every worker before it imports the app.
    """
    here = os.path.realpath(os.getcwd())
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]


keep_working_folder_off_sys_path()

from imgclf.service.server import error_pages, grpc_port, worker_states  # noqa: E402 - after the working folder left sys.path
from imgclf.service.server.frames import BEHIND_FRONT_ENV  # noqa: E402
from imgclf.service.server.settings import ServerSettings  # noqa: E402

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REQUEST_WAIT_S = 30.0  # how long a model request waits for a first-start worker's models (then 503)

_server = ServerSettings.from_env()
wsgi_app = "imgclf.service:create_app()"
bind = [_server.bind]
# Behind the front, each worker serves the front's framed channel (imgclf.service.server.channel); otherwise
# gunicorn's own threaded HTTP worker.
_behind_front = os.environ.get(BEHIND_FRONT_ENV) == "1"
worker_class = "imgclf.service.server.channel.ChannelWorker" if _behind_front else "gthread"
workers = _server.workers
threads = _server.threads
timeout = _server.timeout
graceful_timeout = _server.graceful_timeout
_trim_seconds = _server.malloc_trim_seconds
# gthread behind a proxy of the user's own on the same host (IMGCLF_FRONT=0, IMGCLF_BIND=unix:PATH):
# one request per connection, and a worker accepts one only while it has a free thread.
# Requests then wait in the socket's backlog for whichever worker frees a thread first, where pooled
# keep-alive connections stayed with the worker that had accepted them (14 of 16 on one worker, measured).
# Straight on a TCP port, gunicorn's defaults stay (keep-alive 2 s, 1000 connections a worker).
_behind_proxy = _server.bind.startswith("unix:")
keepalive = 0 if _behind_proxy else 2
worker_connections = _server.threads if _behind_proxy else 1000
preload_app = False  # TensorFlow and fork do not mix: each worker loads its own
proc_name = "imgclf"
# gunicorn >= 25.1 opens a control socket at one per-user path ($HOME/.gunicorn/gunicorn.ctl), where a
# second server on the machine would clash with the first; signals do the same job. (Older versions
# ignore the name.)
control_socket_disable = True
# The heartbeat file is touched every second; tmpfs keeps a slow or overlay /tmp from stalling workers.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

loglevel = _server.log_level
_access = _server.access_log
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "generic": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"},
        "access": {"format": "%(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
    },
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "propagate": True},
        # A dict config turns gunicorn's access log on; the level is what keeps it quiet by default.
        "gunicorn.access": {"level": "INFO" if _access else "WARNING", "handlers": ["access"], "propagate": False},
        "tensorflow": {"level": "WARNING"},
        "absl": {"level": "WARNING"},
        "h5py": {"level": "WARNING"},
        "PIL": {"level": "WARNING"},
    },
}

_made_dirs: list[str] = []


def on_starting(server) -> None:
    """Check the gRPC port is free; give the workers an empty metrics directory before the first one forks."""
    if _server.grpc_bind:
        grpc_port.check_free(_server.grpc_bind)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # workers inherit it: no TensorFlow info lines
    directory = os.environ.get(MULTIPROC_ENV, "").strip()
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):  # values of an earlier run would add up
            os.remove(stale)
    else:
        directory = tempfile.mkdtemp(prefix="imgclf-metrics-")
        _made_dirs.append(directory)
        os.environ[MULTIPROC_ENV] = directory
    server.log.info("prometheus multiprocess directory: %s", directory)
    _made_dirs.append(str(worker_states.make_folder()))


def pre_fork(server, worker) -> None:
    """Count the worker before it exists: the others' /readyz waits for it unless it is held back."""
    folder = worker_states.server_folder()
    if folder is not None:  # on_starting made it
        held = worker_states.held_back(worker.age, worker.cfg.workers)
        worker_states.record(folder, worker.age, worker_states.HELD if held else worker_states.LOADING)


def when_ready(server) -> None:
    """Warn if TensorFlow got into the master: forked workers would inherit broken thread pools."""
    if "tensorflow" in sys.modules:
        server.log.warning("tensorflow is imported in the gunicorn master; workers must load it themselves")


def post_fork(server, worker) -> None:
    """Keep the working folder off sys.path; answer gunicorn's own errors as JSON; start malloc_trim (see "Memory")."""
    keep_working_folder_off_sys_path()  # gunicorn's second chdir put it back; the app is imported next
    error_pages.install()
    if not _trim_seconds or platform.libc_ver()[0] != "glibc":
        return
    trim = ctypes.CDLL(None).malloc_trim

    def trim_forever() -> None:
        while True:
            time.sleep(_trim_seconds)
            trim(0)

    threading.Thread(target=trim_forever, name="malloc-trim", daemon=True).start()


def post_worker_init(worker) -> None:
    """Record the worker's state for the others' /readyz; hold a replacement back until its models are loaded.

    Workers 1..N of the first start accept at once (their model requests wait for loading, bounded); a
    later one (:func:`~imgclf.service.server.worker_states.held_back`) waits here, so it takes no connection
    while it loads: the live workers answer, where it would answer 503. The heartbeat goes on meanwhile,
    so the master does not take the wait for a hang. A worker whose loading failed accepts, to say why on
    /readyz. With a single worker there is nobody else to answer: it accepts at once and says 503
    (Retry-After) while it loads.
    """
    models = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("imgclf.models")  # the version manager
    folder = worker_states.server_folder()
    if models is None:  # not the imgclf app (or wrapped): nothing to wait for, nothing to report
        if folder is not None:
            worker_states.forget(folder, worker.age)
        return
    held = worker_states.held_back(worker.age, worker.cfg.workers)
    if folder is not None:
        worker_states.start_heartbeat(folder, worker.age)  # /readyz of the others notices a stopped or hung one

        def record(state: worker_states.State, error: str) -> None:
            loading = worker_states.HELD if held else worker_states.LOADING
            worker_states.record(folder, worker.age, loading if state == worker_states.LOADING else state, worker.pid,
                                 error)

        models.on_state(record)
    if not held:
        if worker.cfg.workers >= 2:
            models.hold_requests(REQUEST_WAIT_S, at_most=worker.cfg.threads - 1)
        return
    started = time.monotonic()
    while worker.alive and models.state == worker_states.LOADING:
        worker.notify()
        models.wait(1.0)
    worker.log.info("replacement worker %s: models %s after %.1f s; accepting connections", worker.pid,
                    models.state, time.monotonic() - started)


def worker_exit(server, worker) -> None:
    """Stop the worker's gRPC server (``--grpc-bind``), giving its calls in flight the graceful timeout."""
    grpc_server = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("imgclf.grpc")
    if grpc_server is not None:
        grpc_server.stop(worker.cfg.graceful_timeout)


def child_exit(server, worker) -> None:
    """Forget the state of a worker that exited; drop its live gauges (its counters stay: they still count)."""
    from prometheus_client import multiprocess

    folder = worker_states.server_folder()
    if folder is not None:
        worker_states.forget(folder, worker.age)
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics and worker-state directories this file made."""
    for directory in _made_dirs:
        shutil.rmtree(directory, ignore_errors=True)
