"""gRPC in the app's worker: :func:`init_app` starts a worker's gRPC server once its models are loaded.

Called by ``create_app`` when ``grpc_bind`` is set (``--grpc-bind``,
``IMGCLF_GRPC_BIND``). The app is made in each gunicorn worker after the fork,
so the server is too. It binds once the models have loaded (or failed to, to
say why): until then the port refuses connections, so a connection never
lands on a worker that cannot answer it. grpc.health.v1's Check answers
SERVING when ``/readyz`` would answer 200 (every worker ready), so the
Kubernetes manifests probe readiness over gRPC.
The worker's exit (gunicorn's ``worker_exit`` hook) stops it, giving calls in
flight the graceful timeout.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from imgclf.service.access import auth
from imgclf.service.dataplane.extension import current_plane
from imgclf.service.metrics import current_metrics
from imgclf.service.protocols.grpc.server import GrpcServer
from imgclf.service.server import worker_states

if TYPE_CHECKING:
    from flask import Flask

    from imgclf.service.settings import Settings

log = logging.getLogger(__name__)

EXTENSION = "imgclf.grpc"


def init_app(app: Flask, settings: Settings) -> GrpcServer:
    """Create the app's gRPC server; it starts when the models leave loading. Return it."""
    plane = current_plane(app)
    checker = app.extensions.get(auth.EXTENSION)
    models = plane.models
    server = GrpcServer(plane, settings.server, settings.access, current_metrics(app),
                        checker.buckets if checker is not None else None,
                        ready=lambda: worker_states.server_readiness(models.state, models.error).ready)
    lock = threading.Lock()

    def on_state(state: str, error: str) -> None:
        if state == worker_states.LOADING:
            return
        with lock:
            if not server.started.is_set():
                server.start()
        server.set_serving(state == worker_states.READY)

    models.on_state(on_state)
    app.extensions[EXTENSION] = server
    return server
