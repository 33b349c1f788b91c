"""One worker's gRPC server: the protocols' handlers behind access keys, metrics, deadlines and limits.

Made in the worker, after gunicorn's fork, never in the master (gRPC's core
does not survive ``fork``): every worker binds the same port with
``SO_REUSEPORT`` and the kernel spreads new connections over them, as
gunicorn's own socket spreads HTTP ones. One gRPC process feeding the workers
would put a second hop (and a second copy of each picture) on every call; with
a server per worker a call runs in the process that holds the models.
``grpc.max_connection_age_ms`` closes each connection now and then (clients
reconnect at once), so long-lived HTTP/2 connections do not stay piled on one
worker after a restart.

Every call goes through :meth:`GrpcServer._call`: the API key from the call's
metadata (``authorization: Bearer <key>`` or ``x-api-key``) when keys are
required (the health service and ServerLive/ServerReady are open, as their
REST routes are), the per-method counter and latency histogram, and the
error map: the REST message with the gRPC code (400/413/415 ->
INVALID_ARGUMENT, 404 -> NOT_FOUND, 503 -> UNAVAILABLE; a pixel budget over
the request's -> RESOURCE_EXHAUSTED). A call whose client cancelled or whose
deadline passed leaves the batch queue (:func:`~imgclf.service.servables.batching.cancellable`)
and costs no model time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import CancelledError
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from imgclf.core.errors import BadRequest, InvalidImage, ModelNotFound, NotReady, PayloadTooLarge, UnsupportedMediaType
from imgclf.service.access.api_keys import match, presented_key
from imgclf.service.access.settings import AccessSettings
from imgclf.service.dataplane.plane import DataPlane
from imgclf.service.protocols.grpc.inference import Inference
from imgclf.service.protocols.grpc.messages import message, service
from imgclf.service.protocols.grpc.tfserving import TFServing
from imgclf.service.servables.batching import Cancellation, cancellable
from imgclf.service.server.settings import ServerSettings

log = logging.getLogger(__name__)

OPEN_METHODS = frozenset({"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"})
UNAUTHENTICATED = "an API key is required: send metadata authorization: Bearer <key> or x-api-key: <key>"
CODES = (  # most specific first, as the REST error map
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidImage, grpc.StatusCode.INVALID_ARGUMENT),
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedMediaType, grpc.StatusCode.INVALID_ARGUMENT),
)
KEEPALIVE_TIME_MS = 60_000  # the server pings an idle connection this often ...
KEEPALIVE_TIMEOUT_MS = 20_000  # ... and closes it when no answer comes within this
CONNECTION_AGE_MS = 300_000  # then the client reconnects, maybe to another worker
CONNECTION_AGE_GRACE_MS = 30_000  # calls in flight on an aged connection get this long
MAX_PING_STRIKES = 2  # pings more often than allowed, this many times: GOAWAY (too_many_pings)


def status_code(exc: Exception) -> grpc.StatusCode:
    """Return the gRPC status code for an imgclf error (INTERNAL for anything unexpected)."""
    for kind, code in CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


@dataclass
class Refused(Exception):
    """A call refused before its handler ran."""

    code: grpc.StatusCode
    message: str


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Return the channel arguments of a worker's server: message size, streams, keepalive enforcement."""
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.max_upload_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_streams),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(settings.grpc_min_ping_seconds * 1000)),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.max_connection_age_ms", CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
    ]


class Health(health.HealthServicer):
    """grpc.health.v1 whose Check of the server ("") or one of its services answers the server's readiness now.

    The same readiness as ``/readyz`` (every worker has its models loaded), so Kubernetes' gRPC readiness probe
    means what the HTTP one does whichever worker the probe's connection lands on; Watch streams the worker's
    own state changes (:meth:`GrpcServer.set_serving`).
    """

    def __init__(self, services: set[str], ready: Callable[[], bool]):
        super().__init__()
        self._services, self._ready = services, ready

    def Check(self, request, context):
        if request.service in self._services:
            serving = self._ready()
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING if serving
                                                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        return super().Check(request, context)


class GrpcServer:
    """The gRPC server of one worker over its data plane; :meth:`start` binds and serves."""

    def __init__(self, plane: DataPlane, settings: ServerSettings, access: AccessSettings, metrics=None,
                 buckets=None, ready: Callable[[], bool] | None = None):
        self.plane, self.settings, self.access = plane, settings, access
        self.metrics = metrics  # imgclf.service.metrics.Metrics, or None
        self.buckets = buckets  # the REST API's per-key token buckets (shared), or None
        self.port: int | None = None
        self.started = threading.Event()  # set once serving (tests and the worker's hooks wait on it)
        self._server: grpc.Server | None = None
        self._services = {**TFServing(plane).handlers(), **Inference(plane).handlers()}
        self.health = Health({"", *self._services}, ready or (lambda: plane.models.ready))

    def start(self, bind: str | None = None) -> int:
        """Bind ``bind`` (default: the grpc_bind setting), start serving, and return the port bound.

        Raises:
            RuntimeError: the address cannot be bound.
        """
        address = bind or self.settings.grpc_bind
        threads = self.settings.threads
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
                             options=server_options(self.settings), maximum_concurrent_rpcs=threads * 8)
        for name, methods in self._services.items():
            server.add_generic_rpc_handlers((self._generic_handler(name, methods),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        port = server.add_insecure_port(address)
        if not port:
            raise RuntimeError(f"cannot bind the gRPC address {address!r}")
        server.start()
        self._server, self.port = server, port
        self.started.set()
        log.info("gRPC on %s (port %d): %s", address, port, ", ".join(self._services))
        return port

    def set_serving(self, serving: bool) -> None:
        """Say SERVING (or NOT_SERVING) in grpc.health.v1, for the server and each service."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._services):
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, give those in flight ``grace`` seconds, then stop."""
        if self._server is not None:
            self.health.enter_graceful_shutdown()
            self._server.stop(grace).wait()
            self._server = None

    # --- calls ------------------------------------------------------------------------------------------------

    def _generic_handler(self, name: str, methods: dict[str, Callable]) -> grpc.GenericRpcHandler:
        descriptor = service(name)
        handlers = {}
        for method, handler in methods.items():
            rpc = descriptor.methods_by_name[method]
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                self._call(f"/{name}/{method}", handler),
                request_deserializer=message(rpc.input_type.full_name).FromString,
                response_serializer=message(rpc.output_type.full_name).SerializeToString)
        return grpc.method_handlers_generic_handler(name, handlers)

    def _call(self, method: str, handler: Callable) -> Callable:
        """Return ``handler`` behind the key check, the metrics, cancellation and the error map."""

        def call(request, context: grpc.ServicerContext):
            started = time.perf_counter()
            code, text = grpc.StatusCode.OK, ""
            try:
                if method not in OPEN_METHODS:
                    self._check_key(context)
                if not context.is_active():
                    raise Refused(grpc.StatusCode.CANCELLED, "the call ended before it was handled")
                cancellation = Cancellation()
                context.add_callback(cancellation.cancel)  # the client cancelled, the deadline passed, or done
                with cancellable(cancellation):
                    return handler(request, context)
            except Refused as exc:
                code, text = exc.code, exc.message
            except CancelledError:
                code, text = grpc.StatusCode.CANCELLED, "the call was cancelled before its prediction"
            except Exception as exc:
                code = status_code(exc)
                if code == grpc.StatusCode.INTERNAL:  # a bug: say so without leaking internals, keep serving
                    log.exception("unhandled error in %s", method)
                    text = f"internal error ({type(exc).__name__}); see the server log"
                else:
                    text = str(exc)
            finally:
                self._observe(method, code, time.perf_counter() - started)
            context.abort(code, text)

        return call

    def _check_key(self, context: grpc.ServicerContext) -> None:
        """Raise Refused unless the call's metadata presents a key that opens the API (or none is needed)."""
        if not self.access.keys_required:
            return
        metadata = {key.lower(): value for key, value in context.invocation_metadata() if isinstance(value, str)}
        key = presented_key(metadata.get("authorization", ""), metadata.get("x-api-key", ""))
        name = None if key is None else match(self.access.keys, key)
        metrics_keys = self.access.metrics_key_names
        if name is None or (metrics_keys and name in metrics_keys):  # /metrics keys open /metrics alone
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        if self.buckets is not None:
            wait = self.buckets.take(name)
            if wait:
                rate = self.access.rate
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"too many requests for this key: at most {rate.count} per {rate.seconds:g} s; "
                              f"try again in {wait:.1f} s")

    def _observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.grpc_requests.labels(method, code.name).inc()
            self.metrics.grpc_request_seconds.labels(method).observe(seconds)
