"""Benchmark: POST /predict through gunicorn under closed-loop load, batching on and off, in one run.

Builds (once) the full-size random-weight Inception-v3 graph in bench/out/
(shared with bench/featurize.py), trains a tiny model on generated demo
pictures into bench/out/serve-models, then for IMGCLF_BATCHING=1 and =0 starts
gunicorn on it and drives POST /predict with a ~100 KB JPEG from N client
threads (each with one keep-alive HTTP/1.1 connection and a multipart body built
once, each sending its next request as soon as the last one is answered) at each concurrency level. Prints requests/s,
p50/p95/p99 latency, errors and the mean images per model call, and, measured
first on the same machine, what the model computes on its own: the featurizer's
``Featurizer.run`` on batches of 32 (fp32, and bf16 where the CPU has it), the
featurizer end to end on the same JPEG (decode, resize, normalise, batch of 32:
the work a request also has to do), and
the served SavedModel (fp32) on batches of 32 and of 1 — the ceilings the
service is compared with.

One gunicorn worker by default: TensorFlow already spreads one model call over
every core, so a second worker on a small machine competes for the same cores
(and halves what each batch can gather) instead of adding throughput. The load
generator runs on the same machine and takes some CPU from the server too
(kept small: bench.loadgen's one-thread raw-socket clients, one body built once).
Not a test: no assertions. Every step is bounded in time.

    python -m bench.serve [--requests 300] [--concurrency 1 4 16] [--workers 1] [--threads 16]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests
from PIL import Image

from bench.loadgen import post_request, run_load
from imgclf.service.cli import serve as serve_cli
from imgclf.service.server import launch
from tests.support.processes import children_of, free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
GRAPH = OUT / "inception_v3_random_seed0.pb"  # the same file bench/featurize.py builds
MODEL_NAME = "bench"
READY_WITHIN_S = 240
STOP_WITHIN_S = 60


def build_graph(graph: Path) -> Path:
    """Return the random-weight full-size graph, exporting it once."""
    if not graph.exists():
        from imgclf.featurizer.graph.export import export_inception

        print(f"building {graph} (once, about a minute) ...", flush=True)
        export_inception(graph, weights="random", seed=0)
    return graph


def train_model(graph: Path, model_dir: Path, backend: str = "tensorflow", precision: str = "fp32") -> Path:
    """Return a version of the tiny benchmark model, training it once on generated demo pictures.

    ``backend``/``precision`` are the featurizer's (an OpenVINO export carries
    its IR, so the service runs the featurizer the card names).
    """
    from imgclf.core.repository import list_versions, resolve
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.train_job import TrainJob, run_train

    if list_versions(model_dir, MODEL_NAME):
        return resolve(model_dir / MODEL_NAME)
    print("training the benchmark model (once) ...", flush=True)
    images = write_demo_images(OUT / "serve-images", per_class=8)
    featurizer = FeaturizerConfig(graph, precision=precision, backend=backend)  # int8: run_train calibrates on images
    # What is served matters here, not how well: 8 photos a class cannot pass the publish gate.
    outcome = run_train(TrainJob(image_dir=images, featurizer=featurizer,
                                 cache=OUT / "serve-features.sqlite", model_dir=model_dir, name=MODEL_NAME,
                                 progress=False, gate=GateConfig(publish="always")))
    return outcome.version_dir


def make_jpeg(target_bytes: int = 100_000) -> bytes:
    """Return a photo-like 800x600 JPEG whose size is the closest to ``target_bytes`` over a few qualities."""
    rng = np.random.default_rng(7)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((800, 600), Image.BICUBIC)
    image = Image.fromarray(np.clip(np.asarray(coarse) + rng.normal(0, 6, (600, 800, 3)), 0, 255).astype(np.uint8))
    best = b""
    for quality in range(70, 96):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        if not best or abs(buffer.tell() - target_bytes) < abs(len(best) - target_bytes):
            best = buffer.getvalue()
    return best


def timed_rate(run, batch: np.ndarray, seconds: float) -> float:
    """Return images/s of ``run(batch)``, repeated for about ``seconds`` after one warm-up call."""
    run(batch)  # graph optimisation and kernel selection
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        run(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - started)


def model_rates(graph: Path, version_dir: Path, jpeg: bytes, seconds: float, precision: str) -> dict[str, float]:
    """Measure the featurizer and the served model on their own, in this process, before any server runs."""
    from imgclf.core.precision import resolve_precision
    from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
    from imgclf.service.servables.runtime import apply_precision
    from imgclf.training.classifier import load_model

    rates = {}
    for precision_ in ("fp32", "bf16") if resolve_precision("auto") == "bf16" else ("fp32",):
        featurizer = Featurizer(FeaturizerConfig(graph, precision=precision_))
        one = featurizer.preprocess(jpeg)
        rates[f"featurizer Featurizer.run, batch 32, {precision_}"] = timed_rate(featurizer.run,
                                                                              np.stack([one] * 32), seconds)
        # What `imgclf featurize` does per image: decode, resize, normalise, then the batch (one thread).
        rates[f"featurizer end to end, batch 32, {precision_}"] = timed_rate(
            lambda batch, f=featurizer: f.run(np.stack([f.preprocess(data) for data in batch])), [jpeg] * 32,
            seconds)
        featurizer.close()
    # The served model in the precision the server will use (a process-wide switch: measured last).
    apply_precision(precision)
    model = load_model(version_dir)
    one = model.to_input(model.decode(jpeg))
    rates[f"served model predict_inputs, batch 32, {precision}"] = timed_rate(model.predict_inputs,
                                                                             np.stack([one] * 32), seconds)
    rates[f"served model predict_inputs, batch 1, {precision}"] = timed_rate(model.predict_inputs, one[None],
                                                                            seconds)
    # What batching off does under load: many requests, each calling the model with its one image at the
    # same time. TensorFlow runs those calls side by side, which already uses the cores well.
    rates[f"served model, {CONCURRENT_CALLS} concurrent calls of batch 1, {precision}"] = concurrent_rate(
        model.predict_inputs, one[None], CONCURRENT_CALLS, seconds)
    return rates


CONCURRENT_CALLS = 16


def concurrent_rate(run, one: np.ndarray, threads: int, seconds: float) -> float:
    """Return images/s of ``threads`` threads each calling ``run(one)`` in a loop for about ``seconds``."""
    run(one)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            run(one)
            counts[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) * len(one) / (time.perf_counter() - started)


@dataclass
class LoadResult:
    """What one concurrency level measured."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    seconds: float = 0.0
    first_error: str = ""
    generator_cpu_seconds: float = 0.0  # the load generator's own CPU over the run

    def row(self, mean_batch: float, cpu_seconds: float) -> str:
        """Return one table row: sent, errors, req/s, p50/p95/p99 ms, images per model call, worker CPU per request."""
        ms = np.percentile(np.asarray(self.latencies) * 1000, [50, 95, 99]) if self.latencies else [np.nan] * 3
        rate = len(self.latencies) / self.seconds if self.seconds else 0.0
        cpu_ms = 1000 * cpu_seconds / len(self.latencies) if self.latencies else float("nan")
        return (f"{self.concurrency:>5} {len(self.latencies) + self.errors:>6} {self.errors:>6} {rate:>8.2f} "
                f"{ms[0]:>8.1f} {ms[1]:>8.1f} {ms[2]:>8.1f} {mean_batch:>8.2f} {cpu_ms:>8.1f}")


def multipart_image(jpeg: bytes, field_name: str = "image", filename: str = "bench.jpg") -> tuple[bytes, str]:
    """Return (body, Content-Type) of a multipart/form-data upload of ``jpeg``, as a browser form sends it."""
    boundary = "imgclf-bench-" + os.urandom(8).hex()
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + jpeg + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def drive(url: str, jpeg: bytes, concurrency: int, total: int, max_seconds: float) -> LoadResult:
    """Send ``total`` POST /predict requests from ``concurrency`` closed-loop clients; stop at ``max_seconds``.

    The clients are :mod:`bench.loadgen`'s: one thread drives every keep-alive connection and sends one
    body built once, so on a 2-core machine the load generator takes little of the CPU of the server it
    measures (its own CPU per request is in ``generator_cpu_seconds``).
    """
    target = urlsplit(url)
    body, content_type = multipart_image(jpeg)
    request = post_request(target.hostname, "/predict?top_k=1", body, content_type)
    ran = run_load(target.hostname, target.port, request, concurrency, max_seconds, max_requests=total)
    return LoadResult(concurrency, ran.latencies, ran.errors, ran.seconds, ran.first_error, ran.cpu_seconds)


def workers_cpu_seconds(master: int) -> float:
    """Return the user + system CPU seconds the gunicorn workers (children of ``master``) have used so far."""
    total = 0.0
    for pid in children_of(master):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def batch_totals(url: str) -> tuple[float, float]:
    """Return (model calls, images) so far, from the server's imgclf_batch_size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    calls = images = 0.0
    text = requests.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "imgclf_batch_size_count":
                calls += sample.value
            elif sample.name == "imgclf_batch_size_sum":
                images += sample.value
    return calls, images




class Server:
    """gunicorn serving the benchmark repository, started and stopped by the benchmark."""

    def __init__(self, model_dir: Path, batching: bool, workers: int, threads: int, log: Path, precision: str):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = serve_cli.serve_env(model_dir, bind=f"127.0.0.1:{port}", workers=workers, threads=threads)
        env["IMGCLF_BATCHING"] = "1" if batching else "0"
        env["IMGCLF_PRECISION"] = precision
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(launch.gunicorn_argv(), env=env, stdout=out,
                                            stderr=subprocess.STDOUT)

    def wait_ready(self, workers: int) -> None:
        """Wait until every worker has loaded and warmed up its model."""
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.log}")
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200 and \
                        batch_totals(self.url)[0] >= workers:  # each worker's warm-up call is one batch
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"gunicorn not ready within {READY_WITHIN_S} s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (default 1: see the docstring)")
    parser.add_argument("--threads", type=int, default=0,
                        help="request threads per worker (default: the highest concurrency, so every "
                             "waiting request can join a batch)")
    parser.add_argument("--level-seconds", type=float, default=150.0, help="time limit of one concurrency level")
    parser.add_argument("--graph", type=Path, help="use this graph instead of the random-weight export")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="serving precision (IMGCLF_PRECISION; default auto)")
    args = parser.parse_args()
    from imgclf.core.precision import resolve_precision

    precision = resolve_precision(args.precision)
    threads = args.threads or max(args.concurrency)

    OUT.mkdir(parents=True, exist_ok=True)
    graph = build_graph(args.graph or GRAPH)
    model_dir = OUT / "serve-models"
    version_dir = train_model(graph, model_dir)
    jpeg = make_jpeg()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; graph {graph.name}; "
          f"model {version_dir}; JPEG 800x600, {len(jpeg) / 1000:.0f} KB; {args.workers} worker(s) x "
          f"{threads} threads; {args.requests} requests per level", flush=True)

    rates = model_rates(graph, version_dir, jpeg, seconds=8.0, precision=precision)
    for name, rate in rates.items():
        print(f"{name:<44} {rate:8.2f} img/s", flush=True)
    ceilings = {"the featurizer's batched rate (graph only)":
                    rates[f"featurizer Featurizer.run, batch 32, {precision}"],
                "the featurizer end to end (decode + resize + graph)":
                    rates[f"featurizer end to end, batch 32, {precision}"]}

    header = (f"{'conc':>5} {'sent':>6} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'img/call':>8} {'cpu ms':>8}  (cpu ms: the workers' CPU time per answered request)")
    best = {}
    for batching in (True, False):
        log = OUT / f"serve-gunicorn-batching{int(batching)}.log"
        server = Server(model_dir, batching, args.workers, threads, log, precision)
        try:
            server.wait_ready(args.workers)
            print(f"\nbatching {'ON' if batching else 'OFF'} (server log: {log})\n{header}", flush=True)
            for concurrency in args.concurrency:
                drive(server.url, jpeg, concurrency, min(2 * concurrency, 16), 30)  # warm the connections
                calls0, images0 = batch_totals(server.url)
                cpu0 = workers_cpu_seconds(server.process.pid)
                result = drive(server.url, jpeg, concurrency, args.requests, args.level_seconds)
                cpu1 = workers_cpu_seconds(server.process.pid)
                calls1, images1 = batch_totals(server.url)
                mean_batch = (images1 - images0) / (calls1 - calls0) if calls1 > calls0 else float("nan")
                print(result.row(mean_batch, cpu1 - cpu0), flush=True)
                if result.latencies:
                    print(f"      the load generator's own CPU: "
                          f"{1000 * result.generator_cpu_seconds / len(result.latencies):.2f} ms per request",
                          flush=True)
                if result.first_error:
                    print(f"      first error: {result.first_error}", flush=True)
                if result.seconds:
                    best[(batching, concurrency)] = len(result.latencies) / result.seconds
        finally:
            server.stop()
    for what, ceiling in ceilings.items():
        print(f"\nreq/s as a share of {what}, {precision}, batch 32 ({ceiling:.2f} img/s):")
        for (batching, concurrency), rate in best.items():
            print(f"  batching {'on ' if batching else 'off'} concurrency {concurrency:>3}: {rate / ceiling:6.2f}")
    print("\nbatching on / off, req/s:")
    for concurrency in args.concurrency:
        if (True, concurrency) in best and best.get((False, concurrency)):
            print(f"  concurrency {concurrency:>3}: {best[(True, concurrency)] / best[(False, concurrency)]:5.2f}x")
    batched = rates[f"served model predict_inputs, batch 32, {precision}"]
    side_by_side = rates[f"served model, {CONCURRENT_CALLS} concurrent calls of batch 1, {precision}"]
    print(f"\nthe model alone, batch 32 / {CONCURRENT_CALLS} concurrent calls of batch 1: "
          f"{batched / side_by_side:.2f}x — the most batching can gain over batching off at concurrency "
          f"{CONCURRENT_CALLS}, before any per-request work (HTTP, decoding, resizing) dilutes it")


if __name__ == "__main__":
    main()
