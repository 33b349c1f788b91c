"""Benchmark: what a POST /predict costs beyond the featurizer, with and without the front, in one run.

The featurizer's work per image (decode the JPEG, run the model) is what any
request has to cost; everything the service spends beyond it (HTTP parsing,
the front's relay, Flask, the multipart form, batching hand-offs, the answer's
JSON) is the request path. This benchmark measures both on the same JPEG (a
photo-like 500x375, as phones' thumbnails and the issue's photos) and the same
backend, in the same run:

1. The featurizer as users run it: ``imgclf featurize`` on copies of the JPEG
   (made distinct by a comment segment, so the feature cache holds each),
   with the served model's graph, backend and precision. Its CPU
   milliseconds per image and its end-to-end rate are the difference between
   featurizing 320 and 32 copies in fresh processes, so TensorFlow's start-up
   and the model's loading cancel out.
2. ``imgclf serve`` with its defaults, with the front and without it
   (``IMGCLF_FRONT=0``), each for ``--seconds`` at ``--concurrency`` and then
   one client at a time: requests/s, p50 and p99 latency, errors, and the
   service's CPU milliseconds per request (every process of it: the front,
   gunicorn's master and workers) minus the featurizer's per image — the
   request path's cost.
3. The served model itself, in this process, after the services: decode +
   model CPU per image at the batch sizes the service ran (its mean images
   per model call), so that what the batch size changes in the model's own
   cost is told apart from the request path; and one image's latency (decode
   + model, batch of 1), the single-client target's reference.

The load generator (:mod:`bench.loadgen`: one thread, raw sockets, the request
built once) runs on the same machine; its own CPU per request is printed beside
the service's and is not in the service's figure (but it does take CPU from the
service on a small machine). Not a test: no assertions; every step is bounded.

    python -m bench.request_path [--seconds 20] [--concurrency 16] [--backend auto] [--precision int8]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from bench.loadgen import post_request, run_load
from bench.serve import GRAPH, OUT, build_graph, multipart_image, train_model
from tests.support.images import jpeg as photo_jpeg
from tests.support.processes import children_of, free_port

READY_WITHIN_S = 300
IMGCLF = [sys.executable, "-c", "from imgclf.service.cli.main import main; main()"]  # the installed command


def cpu_flags_line() -> str:
    """Return the CPU's model name and the flags that decide the kernels (AVX-512, VNNI, AMX)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni"))
    return f"{name}, {os.cpu_count()} cores; {' '.join(wanted) or 'no AVX2'}"


def tree_cpu_seconds(root: int) -> float:
    """Return the user + system CPU seconds of ``root`` and every live descendant so far (Linux /proc)."""
    total, pending, tick = 0.0, [root], os.sysconf("SC_CLK_TCK")
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        pending.extend(children_of(pid))
    return total


def photo_folder(jpeg: bytes, count: int) -> Path:
    """Return a folder of ``count`` copies of ``jpeg`` in two classes, each made distinct by a JPEG comment.

    The feature cache keys images by content: distinct bytes make every copy a decode and a model run,
    and a comment segment changes nothing a decoder computes.
    """
    folder = OUT / f"request-photos-{len(jpeg)}-{count}"
    if not folder.exists():
        work = folder.with_name(folder.name + ".partial")
        for index in range(count):
            payload = f"imgclf bench copy {index}".encode()
            data = jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]
            path = work / ("a" if index % 2 else "b") / f"{index:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        work.rename(folder)
    return folder


def featurize_run(graph: Path, backend: str, precision: str, folder: Path, cache: Path) -> tuple[float, float]:
    """Run ``imgclf featurize`` on ``folder`` into a fresh ``cache``; return (its CPU seconds, wall seconds)."""
    cache.unlink(missing_ok=True)
    argv = [*IMGCLF, "featurize", str(folder),
            "--graph", str(graph), "--backend", backend, "--precision", precision, "--cache", str(cache),
            "--calibration-images", "32", "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cache.unlink(missing_ok=True)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def featurizer_figures(graph: Path, backend: str, precision: str, jpeg: bytes, small: int = 32,
                       large: int = 320) -> dict[str, float]:
    """Measure ``imgclf featurize`` end to end on copies of ``jpeg``: CPU ms per image and images/s.

    Both are the difference between featurizing ``large`` and ``small`` copies (fresh processes, fresh
    caches), so TensorFlow's start-up and the model's loading cancel out.
    """
    cache = OUT / "request-featurize.sqlite"
    for count in (small, large):  # converts (and for int8 quantizes: the calibration sample depends on the folder)
        featurize_run(graph, backend, precision, photo_folder(jpeg, count), cache)
    cpu_small, wall_small = featurize_run(graph, backend, precision, photo_folder(jpeg, small), cache)
    cpu_large, wall_large = featurize_run(graph, backend, precision, photo_folder(jpeg, large), cache)
    return {"cpu_ms": 1000 * (cpu_large - cpu_small) / (large - small),
            "rate": (large - small) / (wall_large - wall_small)}


def served_model_figures(version_dir: Path, jpeg: bytes, batches: list[int], seconds: float) -> dict:
    """Measure the served model in this process: decode + model CPU ms per image at each batch size, and one
    image's latency (decode + model, batch of 1), as the service calls them (``preprocess_input``,
    ``infer_inputs``)."""
    from imgclf.training.classifier import load_model

    model = load_model(version_dir)
    figures: dict = {"backend": model.backend, "cpu_ms": {}}
    decode = getattr(model, "preprocess_input", lambda data: model.preprocess(data)[1])  # older trees: no RGB-less call
    x = decode(jpeg)
    model.infer_inputs(x[None])
    latencies = []
    for _ in range(max(20, int(seconds * 20))):
        t0 = time.perf_counter()
        model.infer_inputs(decode(jpeg)[None])
        latencies.append(time.perf_counter() - t0)
    figures["single_ms"] = 1000 * float(np.median(latencies))
    for batch in sorted(set(batches)):
        model.infer_inputs(np.stack([x] * batch))
        images, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while images < 32 or time.perf_counter() - wall0 < seconds:
            model.infer_inputs(np.stack([decode(jpeg) for _ in range(batch)]))
            images += batch
        figures["cpu_ms"][batch] = 1000 * (time.process_time() - cpu0) / images
    close = getattr(model.featurizer_graph, "close", None)
    if close is not None:
        close()
    return figures


class Service:
    """``imgclf serve`` on the benchmark's repository, with its defaults, started and stopped here."""

    def __init__(self, model_dir: Path, front: bool, log: Path, extra_env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "IMGCLF_FRONT": "1" if front else "0", **extra_env}
        argv = [*IMGCLF, "serve", "--model-dir", str(model_dir), "--bind", f"127.0.0.1:{self.port}"]
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"imgclf serve exited; see {self.log}")
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"imgclf serve not ready within {READY_WITHIN_S} s; see {self.log}")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(service: Service, request: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    """Run one load level; return req/s, p50, p99 (ms), errors, service and generator CPU ms per request."""
    from bench.serve import batch_totals

    calls0, images0 = batch_totals(service.url)
    cpu0 = service.cpu_seconds()
    result = run_load("127.0.0.1", service.port, request, concurrency, seconds)
    cpu1 = service.cpu_seconds()
    calls1, images1 = batch_totals(service.url)
    answered = max(len(result.latencies), 1)
    if result.first_error:
        print(f"      first error: {result.first_error[:200]!r}", flush=True)
    return {"rate": result.rate, "p50": result.percentile_ms(50), "p99": result.percentile_ms(99),
            "errors": result.errors, "service_cpu_ms": 1000 * (cpu1 - cpu0) / answered,
            "loadgen_cpu_ms": 1000 * result.cpu_seconds / answered, "answered": len(result.latencies),
            "batch": (images1 - images0) / (calls1 - calls0) if calls1 > calls0 else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load per level (default 20)")
    parser.add_argument("--single-seconds", type=float, default=8.0, help="seconds of one client at a time")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backend", default="auto", help="featurizer backend the model is trained with")
    parser.add_argument("--precision", default="int8", help="its precision (int8: OpenVINO's NNCF int8)")
    parser.add_argument("--graph", type=Path, help="use this graph instead of the random-weight export")
    parser.add_argument("--fronts", default="on,off", help="which services to run: on, off or on,off")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra IMGCLF_* setting for the services (repeatable)")
    args = parser.parse_args()
    from imgclf.featurizer.runtime.backend import resolve_backend

    backend = resolve_backend(args.backend, precision=args.precision)
    OUT.mkdir(parents=True, exist_ok=True)
    graph = build_graph(args.graph or GRAPH)
    model_dir = OUT / f"request-models-{backend}-{args.precision}" if args.graph is None else \
        OUT / f"request-models-{args.graph.stem}-{backend}-{args.precision}"
    version_dir = train_model(graph, model_dir, backend=backend, precision=args.precision)
    jpeg = photo_jpeg(31, (500, 375), 90)
    body, content_type = multipart_image(jpeg)
    request = post_request("127.0.0.1", "/predict?top_k=1", body, content_type)
    extra_env = dict(item.split("=", 1) for item in args.env)
    print(f"CPU: {cpu_flags_line()}\ngraph {graph.name}; model {version_dir} ({backend} {args.precision}); "
          f"JPEG 500x375, {len(jpeg) / 1000:.0f} KB; imgclf serve defaults"
          + (f" + {' '.join(args.env)}" if args.env else ""), flush=True)

    base = featurizer_figures(graph, backend, args.precision, jpeg)
    print(f"\nimgclf featurize ({backend} {args.precision}), copies of the same JPEG: {base['cpu_ms']:.2f} CPU ms/img, "
          f"end to end {base['rate']:.1f} img/s", flush=True)

    rows = {}
    for front in [f.strip() == "on" for f in args.fronts.split(",")]:
        name = "front" if front else "no front"
        log = OUT / f"request-path-{'front' if front else 'nofront'}.log"
        service = Service(model_dir, front, log, extra_env)
        try:
            service.wait_ready()
            run_load("127.0.0.1", service.port, request, args.concurrency, 2.0)  # warm every thread and batch size
            rows[(name, args.concurrency)] = measure(service, request, args.concurrency, args.seconds)
            rows[(name, 1)] = measure(service, request, 1, args.single_seconds)
        finally:
            service.stop()

    # The served model alone, at the batch sizes the service ran (the model's own cost per image changes with
    # the batch: what is left beyond it is the request path itself).
    batches = {key: max(1, round(row["batch"])) for key, row in rows.items()}
    served = served_model_figures(version_dir, jpeg, list(batches.values()), seconds=min(args.seconds, 8.0))
    print(f"served model in this process ({served['backend']}): decode + model "
          + ", ".join(f"{ms:.2f} CPU ms/img at batch {b}" for b, ms in served["cpu_ms"].items())
          + f"; one image {served['single_ms']:.1f} ms", flush=True)

    print(f"\n{'service':<9} {'conc':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'img/call':>8} "
          f"{'cpu ms':>7} {'beyond f':>8} {'beyond m':>8} {'gen ms':>7}")
    for key, row in rows.items():
        name, concurrency = key
        print(f"{name:<9} {concurrency:>4} {row['rate']:>7.1f} {row['p50']:>7.1f} {row['p99']:>7.1f} "
              f"{row['errors']:>6} {row['batch']:>8.2f} {row['service_cpu_ms']:>7.2f} "
              f"{row['service_cpu_ms'] - base['cpu_ms']:>8.2f} "
              f"{row['service_cpu_ms'] - served['cpu_ms'][batches[key]]:>8.2f} {row['loadgen_cpu_ms']:>7.2f}")
    print("cpu ms: the service's CPU per answered request (front, gunicorn's master and workers); beyond f: minus "
          f"imgclf featurize's {base['cpu_ms']:.2f} ms per image; beyond m: minus the served model's decode + model "
          "per image at the service's batch size (img/call); gen ms: the load generator's own CPU per request")
    print("\ntargets:")
    for name in ("front", "no front"):
        many, one = rows.get((name, args.concurrency)), rows.get((name, 1))
        if many is None:
            continue
        print(f"  {name:<8}: CPU beyond the featurizer {many['service_cpu_ms'] - base['cpu_ms']:.2f} ms/request "
              f"(target <= 1.5; beyond the served model at batch {batches[(name, args.concurrency)]}: "
              f"{many['service_cpu_ms'] - served['cpu_ms'][batches[(name, args.concurrency)]]:.2f}); "
              f"c{args.concurrency} {many['rate'] / base['rate']:.2f}x the featurizer's {base['rate']:.1f} img/s "
              f"(target >= 0.8 on AMX); p99/p50 {many['p99'] / many['p50']:.2f} (target <= 2); one client p50 "
              f"{one['p50']:.1f} ms = decode + model {one['p50'] - served['single_ms']:+.1f} ms (target <= +2)")
    if ("front", args.concurrency) in rows and ("no front", args.concurrency) in rows:
        cost = 1 - rows[("front", args.concurrency)]["rate"] / rows[("no front", args.concurrency)]["rate"]
        print(f"  the front costs {100 * cost:.1f}% of the throughput at c{args.concurrency} (target <= 3%)")

if __name__ == "__main__":
    main()
