"""Prometheus metrics: requests, latency, model batches, load time and the batching settings.

Two modes, chosen by prometheus-client itself when it is first imported:

* **one process** (tests, ``flask run``): every app gets its own
  ``CollectorRegistry``, so each test app starts from zero;
* **several gunicorn workers**: ``imgclf.service.server.gunicorn_conf`` sets
  ``PROMETHEUS_MULTIPROC_DIR`` in the master before any worker starts; each
  worker writes its values to files there and ``GET /metrics`` — whichever
  worker answers — merges every worker's files with ``MultiProcessCollector``.

The ``route`` label is the URL rule (``/v1/models/<name>:predict``), never the
raw path, so the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from imgclf.service.settings import ServingSettings


log = logging.getLogger(__name__)

EXTENSION = "imgclf.metrics"
UNMATCHED = "unmatched"  # route label of requests that matched no URL rule (404, 405)
# Any other method string a client sends is counted as "other": labels must stay bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_mode() -> bool:
    """Return whether values go to per-process files (prometheus-client decides once, at import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False)) and bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


@dataclass
class Metrics:
    """The metric objects of one app (one worker)."""

    registry: CollectorRegistry | None  # None in multiprocess mode: values live in the shared directory
    requests: Counter
    request_seconds: Histogram
    batch_size: Histogram
    batch_seconds: Histogram
    model_load_seconds: Gauge
    batch_max_size: Gauge
    batch_max_wait_seconds: Gauge
    grpc_requests: Counter
    grpc_request_seconds: Histogram

    @classmethod
    def create(cls, multiprocess: bool) -> Metrics:
        """Create the metrics in a fresh registry, or unregistered for multiprocess collection."""
        registry = None if multiprocess else CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("imgclf_requests", "HTTP requests answered.", ["route", "method", "status"],
                             registry=registry),
            request_seconds=Histogram("imgclf_request_seconds", "Time to answer a request.", ["route"],
                                      buckets=LATENCY_BUCKETS, registry=registry),
            batch_size=Histogram("imgclf_batch_size", "Images per model call (batched requests share one).",
                                 ["model"], buckets=BATCH_SIZE_BUCKETS, registry=registry),
            batch_seconds=Histogram("imgclf_batch_seconds", "Time of one model call.", ["model"],
                                    buckets=BATCH_SECONDS_BUCKETS, registry=registry),
            # One series per live worker (a "pid" label is added): how long each took to load and warm up.
            model_load_seconds=Gauge("imgclf_model_load_seconds", "Time to load and warm up a model.", ["model"],
                                     multiprocess_mode="liveall", registry=registry),
            # The same in every worker; "max" merges them to one value.
            batch_max_size=Gauge("imgclf_batch_max_size", "Most images per model call (config).",
                                 multiprocess_mode="max", registry=registry),
            batch_max_wait_seconds=Gauge("imgclf_batch_max_wait_seconds",
                                         "How long a batch waits for more requests (config).",
                                         multiprocess_mode="max", registry=registry),
            # gRPC calls (--grpc-bind) by full method name (/tensorflow.serving.PredictionService/Predict: the
            # protocol and the call) and status code name; unknown methods never reach a handler: bounded.
            grpc_requests=Counter("imgclf_grpc_requests", "gRPC calls answered.", ["method", "code"],
                                  registry=registry),
            grpc_request_seconds=Histogram("imgclf_grpc_request_seconds", "Time to answer a gRPC call.", ["method"],
                                           buckets=LATENCY_BUCKETS, registry=registry),
        )

    def collect_registry(self) -> CollectorRegistry:
        """Return the registry to expose: this app's, or one merging every worker's files."""
        if self.registry is not None:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return merged

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        """Return a callback(images, seconds) recording one model call of ``model`` in these metrics."""
        size = self.batch_size.labels(model)
        seconds = self.batch_seconds.labels(model)

        def observe(images: int, took: float) -> None:
            size.observe(images)
            seconds.observe(took)

        return observe

    def observe_load(self, model: str, seconds: float) -> None:
        """Record how long loading and warming up ``model`` took."""
        self.model_load_seconds.labels(model).set(seconds)


def init_app(app: Flask, config: ServingSettings) -> Metrics:
    """Create the app's own metrics (the batching settings of ``config`` as gauges), install the request hooks
    and the /metrics route; return the metrics.

    The metrics belong to this app alone (its ``extensions``): the version manager
    takes its callbacks from :func:`current_metrics` of its own app, so two apps in
    one process (tests) never record into each other's metrics.
    """
    multiprocess = multiprocess_mode()
    metrics = Metrics.create(multiprocess)
    log.debug("metrics: %s", f"merged from {os.environ['PROMETHEUS_MULTIPROC_DIR']}" if multiprocess
              else "this process only")
    metrics.batch_max_size.set(config.batch_max_size)
    metrics.batch_max_wait_seconds.set(config.batch_max_wait_ms / 1000.0)
    app.extensions[EXTENSION] = metrics

    @app.before_request
    def _start_timer() -> None:
        g.imgclf_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.get("imgclf_started")
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        metrics.requests.labels(route, method, str(response.status_code)).inc()
        if started is not None:
            metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    app.add_url_rule("/metrics", "metrics", _expose, methods=["GET"])
    return metrics


def current_metrics(app: Flask | None = None) -> Metrics:
    """Return the metrics of ``app`` (by default the app handling this request)."""
    return (app or current_app).extensions[EXTENSION]


def _expose() -> Response:
    """Answer GET /metrics in the Prometheus text format (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(current_metrics().collect_registry()), status=200, content_type=content_type)
