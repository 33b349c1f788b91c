"""Benchmark: gRPC against REST on the same server, the same image and the same concurrency, in one run.

Starts gunicorn (no front: the front proxies HTTP only) with ``--grpc-bind``
on the benchmark model (``--model full``: the full-size random-weight
Inception-v3 of bench/serve.py; ``--model tiny``: the tests' tiny graph, where
the protocol's own cost is most of a request), then drives each protocol with
``--concurrency`` closed-loop clients sending the same ~100 KB JPEG, in turns
(``--rounds``, each protocol once per round, so drift hits all alike):

* REST ``POST /v1/models/NAME:predict`` (TF Serving's JSON, the picture in base64) — the baseline;
* REST ``POST /predict`` (the raw JPEG as the body);
* gRPC ``PredictionService/Predict`` (a DT_STRING tensor), one channel per client;
* gRPC ``GRPCInferenceService/ModelInfer`` (BYTES in raw_input_contents), one channel per client.

Each REST client keeps one keep-alive HTTP/1.1 connection (http.client); each
gRPC client its own channel, with request bytes built once (the clients'
serialisation stays out of the server's measurement as far as it can on a
shared 2-core machine). Prints req/s, p50, p99 and errors per protocol and
each one's req/s as a ratio to the baseline. Not a test: no assertions; every
step is bounded in time.

    python -m bench.grpc_rest [--model full|tiny] [--concurrency 16] [--requests 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import requests

from bench.serve import GRAPH, MODEL_NAME, OUT, LoadResult, build_graph, make_jpeg, train_model
from imgclf.service.cli import serve as serve_cli
from imgclf.service.protocols.grpc.messages import message
from tests.support.processes import free_port

READY_WITHIN_S = 240
ROUND_WITHIN_S = 300


def prepare(model: str) -> Path:
    """Return the model repository for ``model`` (full or tiny), building what it needs once."""
    if model == "full":
        repo = OUT / "serve-models"
        train_model(build_graph(GRAPH), repo)
        return repo
    from tests.support.legacy_graph import write_legacy_graph

    repo = OUT / "grpc-tiny-models"
    graph = OUT / "legacy_inception.pb"
    if not graph.exists():
        write_legacy_graph(graph)
    train_model(graph, repo)
    return repo


def start(repo: Path, workers: int, threads: int, log: Path) -> tuple[subprocess.Popen, str, str]:
    """Start gunicorn with gRPC on ``repo``; return (process, http address, grpc address) once both answer."""
    http_address, grpc_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = serve_cli.serve_env(repo, bind=http_address, workers=workers, threads=threads)
    env.update({"IMGCLF_GRPC_BIND": grpc_address, "IMGCLF_FRONT": "0"})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_cli.gunicorn_argv(), env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({process.returncode}); see {log}")
        try:
            if requests.get(f"http://{http_address}/readyz", timeout=5).status_code == 200:
                with grpc.insecure_channel(grpc_address) as channel:
                    grpc.channel_ready_future(channel).result(timeout=30)
                return process, http_address, grpc_address
        except (requests.RequestException, grpc.FutureTimeoutError):
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"not ready in {READY_WITHIN_S} s; see {log}")


def rest_call(address: str, path: str, body: bytes, content_type: str) -> Callable[[], Callable[[], bool]]:
    """Return a factory of per-client calls: POST ``body`` on one keep-alive connection."""
    host, port = address.rsplit(":", 1)

    def client() -> Callable[[], bool]:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}

        def call() -> bool:
            nonlocal connection
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.will_close:
                    connection.close()
                    connection = http.client.HTTPConnection(host, int(port), timeout=60)
                return response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
                return False

        return call

    return client


def grpc_call(address: str, method: str, request: bytes) -> Callable[[], Callable[[], bool]]:
    """Return a factory of per-client calls: the serialized ``request`` to ``method`` over the client's channel."""

    def client() -> Callable[[], bool]:
        channel = grpc.insecure_channel(address)
        stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)

        def call() -> bool:
            try:
                stub(request, timeout=60)
                return True
            except grpc.RpcError:
                return False

        return call

    return client


def drive(factory: Callable[[], Callable[[], bool]], concurrency: int, total: int) -> LoadResult:
    """Make ``total`` calls from ``concurrency`` closed-loop clients; stop at ROUND_WITHIN_S."""
    result, lock, remaining = LoadResult(concurrency), threading.Lock(), [total]
    deadline = time.monotonic() + ROUND_WITHIN_S
    calls = [factory() for _ in range(concurrency)]
    calls[0]()  # one warm call: connection set-up stays out of the numbers

    def run(call: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            with lock:
                if not remaining[0]:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            ok = call()
            took = time.perf_counter() - started
            with lock:
                if ok:
                    result.latencies.append(took)
                else:
                    result.errors += 1

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ROUND_WITHIN_S + 60)
    result.seconds = time.perf_counter() - started
    return result


def protocols(http_address: str, grpc_address: str, jpeg: bytes) -> dict[str, Callable]:
    """Return each protocol's client factory, sending the same picture."""
    tfs_json = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()
    predict = message("tensorflow.serving.PredictRequest")()
    predict.model_spec.name = MODEL_NAME
    tensor = predict.inputs["image_bytes"]
    tensor.dtype = 7  # DT_STRING
    tensor.tensor_shape.dim.add(size=1)
    tensor.string_val.append(jpeg)
    infer = message("inference.ModelInferRequest")(model_name=MODEL_NAME)
    infer.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    infer.raw_input_contents.append(len(jpeg).to_bytes(4, "little") + jpeg)
    return {
        "REST TF Serving :predict (b64 JSON)": rest_call(http_address, f"/v1/models/{MODEL_NAME}:predict", tfs_json,
                                                         "application/json"),
        "REST /predict (raw JPEG)": rest_call(http_address, f"/predict?model={MODEL_NAME}&top_k=1", jpeg,
                                              "image/jpeg"),
        "gRPC TF Serving Predict": grpc_call(grpc_address, "/tensorflow.serving.PredictionService/Predict",
                                             predict.SerializeToString()),
        "gRPC v2 ModelInfer (raw)": grpc_call(grpc_address, "/inference.GRPCInferenceService/ModelInfer",
                                              infer.SerializeToString()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("full", "tiny"), default="full")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="calls per protocol and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=16, help="gunicorn threads (the gRPC pool has as many)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    repo = prepare(args.model)
    jpeg = make_jpeg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; model {args.model}; "
          f"{len(jpeg)} byte JPEG; concurrency {args.concurrency}; {args.workers} worker(s) x {args.threads} threads",
          flush=True)
    process, http_address, grpc_address = start(repo, args.workers, args.threads, OUT / "grpc-rest-gunicorn.log")
    try:
        clients = protocols(http_address, grpc_address, jpeg)
        results: dict[str, list[LoadResult]] = {name: [] for name in clients}
        for index in range(args.rounds):
            for name, factory in clients.items():
                result = drive(factory, args.concurrency, args.requests)
                results[name].append(result)
                print(f"round {index + 1}: {name}: {len(result.latencies) / result.seconds:.2f} req/s, "
                      f"{result.errors} errors", flush=True)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    report(results)


def report(results: dict[str, list[LoadResult]]) -> None:
    """Print req/s, p50, p99 and errors per protocol over every round, and req/s against the first (baseline)."""
    print(f"\n{'protocol':<38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'vs base':>8}")
    baseline = None
    for name, rounds in results.items():
        latencies = np.concatenate([np.asarray(r.latencies) for r in rounds]) * 1000
        rate = sum(len(r.latencies) for r in rounds) / sum(r.seconds for r in rounds)
        baseline = baseline or rate
        p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (np.nan, np.nan)
        print(f"{name:<38} {rate:>8.2f} {p50:>8.1f} {p99:>8.1f} {sum(r.errors for r in rounds):>7} "
              f"{rate / baseline:>7.2f}x")


if __name__ == "__main__":
    main()
