"""Benchmark: imgclf against the runtimes a user would pick instead, and on phone-size photos, in one run.

One process tree, one run, the same full-size random-weight Inception-v3 graph
(built once into bench/out/, shared with bench/featurize.py) and the same
generated photos (about 500×375, and 12-megapixel 4000×3000 "phone" JPEGs):

* imgclf featurize end to end (files in, cached features out; decoding
  included) with its best backend and precision (``--backend auto
  --precision best``: OpenVINO int8 calibrated on the photos, where OpenVINO
  is installed on an x86 CPU), beside its own model-only rate on the same
  decoded images and the share of the wall time its graph was busy;
* OpenVINO, model only, written directly on the openvino API: the same graph
  (after imgclf's old-op rewrite), images decoded before its clock, batch 32,
  THROUGHPUT hint, an AsyncInferQueue, bf16 asked for (the CPU plugin runs f32
  where the CPU has no native bf16; the precision it ran is printed);
* Keras ``InceptionV3(include_top=False, pooling="avg")`` with the same
  weights under mixed_bfloat16 where the CPU has native bf16, float32
  otherwise (emulated bf16 is slower: not what a Keras user would run), fed by
  a tf.data pipeline from the files (read, decode, resize, batch 32, prefetch);
* TensorFlow one image per session run (the 2015 script's way: JPEG bytes in,
  fp32), and imgclf fp32 batched (end to end and model only, batch 32 vs 1);
* phone photos: 12-MP JPEGs end to end with ``--decode fast`` and ``exact``
  against the small photos' rate;
* the service (gunicorn, batching on, a model trained on imgclf's backend and
  precision, whose card the service follows) at concurrency 16 on one 500×375
  JPEG against the featurizer's end-to-end rate on that JPEG.

Fidelity is the per-image cosine to TensorFlow fp32 features of the same images.
The compute limit is derived from the CPU's widest matrix unit (usable cores ×
clock × its vendor rate: AMX, AVX512_BF16, AVX-512 or AVX2 FMA, int8 with or
without VNNI; :data:`PEAKS_PER_CYCLE`) and set beside what OpenVINO reaches on
large matrix multiplies; Inception-v3 needs 11.5 GFLOP per image.

Every path is measured once per round, one after the other, with nothing
else alive beside it (the peers run in a child process per round, the service
in gunicorn); a ratio is taken within each round, and the
median of the rounds is reported beside each round's value, because the
machine's speed drifts between minutes and not equally for every path. The
phone photos' ceiling on this CPU is printed beside their ratio: with every
core busy, a 12-MP image costs what a 500×375 one does (cores / its end-to-end
rate) plus the extra CPU its decoding takes (measured on one thread). Not a
test: no assertions.

    python -m bench.peers [--rounds 3] [--images 320] [--phone-images 96] [--requests 320] [--backend auto]
                           [--precision best] [--batching-off]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.featurize import make_images
from bench.serve import GRAPH, OUT, Server, build_graph, drive, train_model
from imgclf.core.precision import PRECISIONS, cpu_flags, native_bf16_flags, resolve_precision
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT
from imgclf.featurizer.graph.load import SingleImageGraph, ThreadConfig, load_graph, usable_cpus
from imgclf.featurizer.images.folders import scan_image_dir
from imgclf.featurizer.jobs.pipeline import WorkItem, extract
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.store.cache import FeatureCache

GFLOP_PER_IMAGE = 11.5  # Inception-v3 at 299×299: ~5.7 G multiply-adds
BATCH = 32


def _jpeg_with_comment(data: bytes, text: str) -> bytes:
    """Return the same JPEG with a COM segment after SOI: other bytes (a cache miss), the same pixels."""
    body = text.encode()
    return data[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


def make_phone_photos(folder: Path, count: int) -> list[Path]:
    """Write ``count`` photo-like 4000×3000 JPEGs (quality 90, fine noise), reusing ones already there."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"phone_{i:03d}.jpg"
        if not path.exists():
            rng = np.random.default_rng(1000 + i)
            field = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((4000, 3000),
                                                                                             Image.BICUBIC)
            noise = rng.integers(-6, 7, (3000, 4000, 1), dtype=np.int16)
            pixels = np.clip(np.asarray(field, np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def featurizer_config(graph: Path, precision: str, decode: str = "exact", backend: str = "tensorflow"
                      ) -> FeaturizerConfig:
    """Return a featurizer config (int8 calibrates on the images :func:`end_to_end` is given to calibrate on)."""
    return FeaturizerConfig(graph, contract=DEFAULT_CONTRACT.with_overrides(decode=decode), precision=precision,
                            backend=backend)


def best_of_backend(backend: str, precision: str) -> tuple[str, str]:
    """Return imgclf's (backend, precision) for the command line's choice; ``best`` = the fastest it offers.

    ``best``: int8 on OpenVINO (NNCF, calibrated on the benchmark's photos),
    else TensorFlow's ``auto`` (bf16 with native bf16, fp32 otherwise).
    """
    from imgclf.featurizer.runtime.backend import resolve_backend

    backend = resolve_backend(backend)
    if backend == "openvino":
        from imgclf.featurizer.runtime.openvino import resolve_openvino_precision

        return backend, "int8" if precision == "best" else resolve_openvino_precision(precision)
    return backend, resolve_precision("auto" if precision == "best" else precision)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the per-row cosine of two [N, D] arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def fidelity(features: np.ndarray, reference: np.ndarray) -> str:
    """Return "cos min/mean" of features against the fp32 reference."""
    c = cosines(features, reference)
    return f"cos min {c.min():.5f} mean {c.mean():.5f}"


def end_to_end(config: FeaturizerConfig, folder: Path, label: str, calibration: Path | None = None) -> dict:
    """Featurize every image of ``folder`` (one class sub-folder) into a fresh cache; return rates and features.

    int8 calibrates on (up to the default number of) ``calibration``'s images.
    """
    featurizer = Featurizer(config, calibration_for(config, calibration) if calibration else None)
    directory = scan_image_dir(folder)
    items = [WorkItem(entry.rel_path, entry.path.read_bytes) for entry in directory.entries]
    inputs = np.stack([featurizer.preprocess(items[i % len(items)].read()) for i in range(BATCH)])
    featurizer.run(inputs)  # warm-up: graph optimisation, kernel selection (as every path here gets one)
    with tempfile.TemporaryDirectory() as tmp, FeatureCache(Path(tmp) / "c.sqlite") as cache:
        result = extract(featurizer, items, cache, batch_size=BATCH, progress=False)
        vectors = cache.get_many(featurizer.fingerprint, result.keys)
    assert result.computed == len(items) and not result.failures, result.failures
    started, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - started < 3:  # model only, on the decoded batch
        featurizer.run(inputs)
        calls += 1
    model_only = calls * BATCH / (time.perf_counter() - started)
    out = {"label": label, "rate": result.computed / result.seconds, "model_only": model_only,
           "busy": result.model_busy, "features": np.stack([vectors[key] for key in result.keys]),
           "describe": featurizer.describe()}
    featurizer.close()
    print(f"  {label:<46} {out['rate']:7.2f} img/s end to end; model only {model_only:7.2f} img/s; "
          f"graph busy {100 * result.model_busy:3.0f}% of the run", flush=True)
    return out


class OpenVINOPeer:
    """OpenVINO on pre-decoded ``inputs``, written directly on its API: batch 32, THROUGHPUT hint, AsyncInferQueue.

    It asks for bf16 (what a user of OpenVINO gets by default on a CPU with
    native bf16); without native bf16 the CPU plugin runs f32, and
    :attr:`ran` is the precision it actually ran. Converted and compiled once;
    :meth:`measure` is one timed round.
    """

    def __init__(self, featurizer: Featurizer, inputs: np.ndarray):
        import openvino as ov

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bottleneck.pb"  # the graph after imgclf's old-op rewrite, image input → bottleneck
            path.write_bytes(featurizer.graph.graph.as_graph_def().SerializeToString())
            model = ov.convert_model(str(path), input=[BATCH, *inputs.shape[1:]])
        self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                               "PERFORMANCE_HINT": "THROUGHPUT"})
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.ran = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.queue = ov.AsyncInferQueue(self.compiled, self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.batches = [inputs[i:i + BATCH] for i in range(0, len(inputs) - BATCH + 1, BATCH)]
        self._features: dict[int, np.ndarray] = {}
        self.queue.set_callback(lambda request, index: self._features.__setitem__(
            index, request.get_output_tensor(0).data.copy()))
        for index, batch in enumerate(self.batches[:2]):  # warm-up
            self.queue.start_async({0: batch}, index)
        self.queue.wait_all()

    def measure(self, seconds: float) -> float:
        """Return img/s over at least ``seconds`` and one pass over every batch."""
        started, done = time.perf_counter(), 0
        while done < len(self.batches) or time.perf_counter() - started < seconds:
            self.queue.start_async({0: self.batches[done % len(self.batches)]}, done % len(self.batches))
            done += 1
        self.queue.wait_all()
        return done * BATCH / (time.perf_counter() - started)

    def features(self) -> np.ndarray:
        return np.concatenate([self._features[i] for i in range(len(self.batches))])


class KerasPeer:
    """Keras InceptionV3 under ``policy`` with the benchmark graph's weights, fed by tf.data from the files."""

    def __init__(self, paths: list[Path], policy: str):
        import keras

        from imgclf.featurizer.graph.export import build_inception

        reference = build_inception("random", seed=0).body  # the weights the benchmark graph was frozen from
        keras.mixed_precision.set_global_policy(policy)
        try:
            self.model = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")
            self.model.set_weights(reference.get_weights())
        finally:
            keras.mixed_precision.set_global_policy("float32")
        self.paths = paths
        self.features = np.zeros(0, np.float32)
        self.model.predict(self._dataset(paths[:BATCH]), verbose=0)  # warm-up

    def _dataset(self, files: list[Path]):
        import keras
        import tensorflow as tf

        def load(path):
            image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
            return keras.applications.inception_v3.preprocess_input(tf.image.resize(image, (299, 299)))

        return (tf.data.Dataset.from_tensor_slices([str(p) for p in files])
                .map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE))

    def measure(self) -> float:
        """Return img/s of one pass over the files (model.predict on the tf.data pipeline)."""
        started = time.perf_counter()
        self.features = np.asarray(self.model.predict(self._dataset(self.paths), verbose=0), np.float32)
        return len(self.paths) / (time.perf_counter() - started)


def one_image_per_run(single: SingleImageGraph, paths: list[Path]) -> float:
    """Return img/s of the 2015 way: one JPEG per session run through the graph's own decoding, fp32."""
    started = time.perf_counter()
    for path in paths:
        single.run(path.read_bytes())
    return len(paths) / (time.perf_counter() - started)


def fp32_model_rates(featurizer: Featurizer, inputs: np.ndarray, seconds: float) -> dict[str, float]:
    """Return imgclf fp32's model-only img/s at batch 1, at batch 32 in micro-batches, and in one session run."""
    graph, rates = featurizer.graph, {}
    for name, size, micro in (("batch 1", 1, graph.micro_batch),
                              ("batch 32 (micro-batches)", BATCH, graph.micro_batch),
                              ("batch 32, one session run (before)", BATCH, 0)):
        graph.micro_batch, kept = micro, graph.micro_batch
        try:
            featurizer.run(inputs[:size])  # warm-up of the shape
            started, images = time.perf_counter(), 0
            while images < 2 * BATCH or time.perf_counter() - started < seconds:
                featurizer.run(inputs[images % (len(inputs) - size + 1):][:size])
                images += size
            rates[name] = images / (time.perf_counter() - started)
        finally:
            graph.micro_batch = kept
    return rates


def decode_cpu_ms(featurizer: Featurizer, paths: list[Path]) -> float:
    """Return the CPU milliseconds (this thread) the featurizer's decoding takes per image of ``paths``."""
    blobs = [path.read_bytes() for path in paths]
    featurizer.preprocess(blobs[0])  # warm-up: tracing
    started = time.thread_time()
    for blob in blobs:
        featurizer.preprocess(blob)
    return 1000 * (time.thread_time() - started) / len(blobs)


# Peak operations per cycle and core of the widest matrix unit a CPU flag announces, counting multipliers on two
# ports: (flag, float precision, float FLOP/cycle, int8 op/cycle). int8 without AMX: VPMADDUBSW (or VNNI's
# VPDPBUSD, which needs one instruction where the older sequence needs two or three, so it reaches that peak).
PEAKS_PER_CYCLE = (
    ("amx_bf16", "bf16", 1024, 2048),  # AMX: one 16x32 · 32x16 tile multiply-add per 16 cycles (TDPBF16PS/TDPBSSD)
    ("avx512_bf16", "bf16", 128, 256),  # VDPBF16PS, and int8 on 512 bits
    ("avx512f", "fp32", 64, 256),  # FMA on 512 bits
    ("avx2", "fp32", 32, 128),  # FMA on 256 bits
)


def cpu_mhz() -> float | None:
    """Return the clock /proc/cpuinfo reports for the first CPU, or None."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return next(float(line.split(":")[1]) for line in fh if line.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        return None


def derived_peak() -> tuple[str, float, float, str] | None:
    """Return (float precision, float FLOP/s, int8 op/s, the unit) of usable cores × clock × the unit's rate."""
    flags, mhz = cpu_flags(), cpu_mhz()
    if mhz is None:
        return None
    for flag, precision, flop, int8 in PEAKS_PER_CYCLE:
        if flag in flags:
            scale = usable_cpus() * mhz * 1e6
            return precision, scale * flop, scale * int8, f"{flag}: {flop} {precision} FLOP, {int8} int8 op/cycle"
    return None


def measured_peak(seconds: float = 3.0, n: int = 2048) -> float:
    """Return the FLOP/s OpenVINO reaches on n×n×n matrix multiplies (bf16 where native, else f32; THROUGHPUT)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], ov.Type.f32)
    model = ov.Model([ops.matmul(x, ops.constant(rng.standard_normal((n, n), np.float32)), False, False)], [x])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                      "PERFORMANCE_HINT": "THROUGHPUT"})
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    data = rng.standard_normal((n, n), np.float32)
    for _ in range(2):
        queue.start_async({0: data})
    queue.wait_all()
    started, calls = time.perf_counter(), 0
    while calls < 4 or time.perf_counter() - started < seconds:
        queue.start_async({0: data})
        calls += 1
    queue.wait_all()
    return calls * 2 * n ** 3 / (time.perf_counter() - started)


def service(graph: Path, jpeg: bytes, backend: str, precision: str, concurrency: int, requests: int,
            batching: bool) -> dict:
    """Serve a model of ``graph`` with gunicorn and drive POST /predict with ``jpeg``; return rate and latencies.

    The model is trained on ``backend``/``precision`` features, and the service
    runs the featurizer its card names (an OpenVINO export carries its IR).
    """
    model_dir = OUT / f"serve-models-{backend}-{precision}"
    train_model(graph, model_dir, backend, precision)
    log = OUT / f"peers-gunicorn-batching{int(batching)}.log"
    tf_precision = precision if precision in PRECISIONS else resolve_precision("auto")  # the head's, on TensorFlow
    server = Server(model_dir, batching, workers=1, threads=concurrency, log=log, precision=tf_precision)
    try:
        server.wait_ready(1)
        drive(server.url, jpeg, concurrency, 2 * concurrency, 60)  # warm the connections
        result = drive(server.url, jpeg, concurrency, requests, 240)
    finally:
        server.stop()
    ms = np.percentile(np.asarray(result.latencies) * 1000, [50, 99]) if result.latencies else [np.nan] * 2
    return {"rate": len(result.latencies) / result.seconds if result.seconds else 0.0, "p50": ms[0], "p99": ms[1],
            "errors": result.errors, "first_error": result.first_error}


def main() -> None:
    args = parse_args()
    setup = prepare(args)
    ours_label = f"{setup['backend']} {setup['best']}"
    runs = [measure_round(r, args, setup["graph"], setup["backend"], setup["best"], ours_label, setup["small"],
                          setup["phones"], setup["small_dir"], setup["phone_dir"], setup["same_dir"], setup["jpeg"],
                          setup["keras_policy"]) for r in range(args.rounds)]
    report(args, runs, ours_label, setup)


def parse_args() -> argparse.Namespace:
    """Return the command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=320, help="~500x375 photos (default: %(default)s)")
    parser.add_argument("--phone-images", type=int, default=96,
                        help="12-MP JPEGs; several batches, so decoding overlaps the graph (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=320, help="service requests (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="service clients (default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorflow", "openvino"),
                        help="imgclf's featurizer backend (default: %(default)s: OpenVINO on an x86 CPU where "
                             "installed)")
    parser.add_argument("--precision", default="best",
                        help="imgclf's precision: best (int8 on OpenVINO, else TensorFlow's auto), auto, fp32, "
                             "bf16, int8 (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=6.0, help="minimum timing window of model-only loops")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each measuring every path once; a ratio is taken within each round and "
                             "the median of the rounds is reported (the machine's speed drifts between "
                             "minutes) (default: %(default)s)")
    parser.add_argument("--batching-off", action="store_true", help="also serve with batching off (the ratio)")
    parser.add_argument("--graph", type=Path, help="use this graph instead of the random-weight export")
    return parser.parse_args()


def prepare(args: argparse.Namespace) -> dict:
    """Build the graph and the image sets, print the machine and its compute limit; return what a round needs."""
    OUT.mkdir(parents=True, exist_ok=True)
    graph = build_graph(args.graph or GRAPH)
    # One class sub-folder each (what `imgclf featurize` reads); a rerun with other counts starts afresh.
    small_dir, phone_dir, same_dir = OUT / "peers-small", OUT / "peers-phone", OUT / "peers-same"
    for folder, count in ((small_dir, args.images), (phone_dir, args.phone_images)):
        if folder.exists() and len(list((folder / "all").glob("*.jpg"))) != count:
            shutil.rmtree(folder)
    small = make_images(small_dir / "all", args.images)
    phones = make_phone_photos(phone_dir / "all", args.phone_images)
    # The service's JPEG, and copies of it that differ only in a comment (so the cache misses on each).
    jpeg = _jpeg_with_comment(small[0].read_bytes(), "peers")
    shutil.rmtree(same_dir, ignore_errors=True)
    (same_dir / "all").mkdir(parents=True)
    for i in range(BATCH * 4):
        (same_dir / "all" / f"{i:03d}.jpg").write_bytes(_jpeg_with_comment(small[0].read_bytes(), f"copy {i}"))
    backend, best = best_of_backend(args.backend, args.precision)
    native = native_bf16_flags()
    keras_policy = "mixed_bfloat16" if native else "float32"  # what a Keras user picks here: emulated bf16 is slower
    print(f"CPU: {platform.processor() or platform.machine()}, {usable_cpus()} usable cores "
          f"(of {os.cpu_count()}), {cpu_mhz() or float('nan'):.0f} MHz, load average {os.getloadavg()[0]:.1f}; "
          f"native bf16: {', '.join(native) or 'none'}; amx: "
          f"{', '.join(sorted(f for f in cpu_flags() if f.startswith('amx'))) or 'none'}; vnni: "
          f"{', '.join(sorted(f for f in cpu_flags() if 'vnni' in f)) or 'none'}", flush=True)
    measured, derived = measured_peak(), derived_peak()
    float_precision = derived[0] if derived else ("bf16" if native else "fp32")
    float_peak = derived[1] if derived else measured
    int8_peak = derived[2] if derived else 2 * measured
    unit = derived[3] if derived else "unknown unit: the measured rate, int8 twice it"
    print(f"compute limit: derived {float_peak / 1e12:.2f} TFLOP/s {float_precision}, {int8_peak / 1e12:.2f} "
          f"TOP/s int8 (usable cores x the reported clock x {unit}), "
          f"against {measured / 1e12:.2f} TFLOP/s reached by OpenVINO 2048^3 {float_precision} matmuls (a floor, "
          f"not the peak); at {GFLOP_PER_IMAGE} GFLOP/image: {float_peak / (GFLOP_PER_IMAGE * 1e9):.0f} img/s "
          f"{float_precision}, {int8_peak / (GFLOP_PER_IMAGE * 1e9):.0f} img/s int8", flush=True)
    print(f"{len(small)} photos ~500x375, {len(phones)} phone JPEGs 4000x3000, graph {graph.name}, batch {BATCH}; "
          f"imgclf: {backend} {best}", flush=True)

    return {"graph": graph, "small": small, "phones": phones, "small_dir": small_dir, "phone_dir": phone_dir,
            "same_dir": same_dir, "jpeg": jpeg, "backend": backend, "best": best, "keras_policy": keras_policy,
            "float_precision": float_precision, "float_peak": float_peak, "int8_peak": int8_peak}


def report(args: argparse.Namespace, runs: list[dict], ours_label: str, setup: dict) -> None:
    """Print every rate and ratio: the median of the rounds beside each round's value, then the fidelity."""
    best, keras_policy = setup["best"], setup["keras_policy"]
    float_precision, float_peak, int8_peak = setup["float_precision"], setup["float_peak"], setup["int8_peak"]
    # The phone photos' ceiling: with every core busy, a 12-MP image costs what a 500x375 one does
    # (cores / its end-to-end rate) plus the extra CPU of decoding it (measured on one thread in the same round).
    for run in runs:
        small_ms = 1000 * usable_cpus() / run["ours"]["rate"]
        run["phone_ceiling"] = small_ms / (small_ms + run["decode_ms"][0] - run["decode_ms"][1])
    extra_ms = float(np.median([run["decode_ms"][0] - run["decode_ms"][1] for run in runs]))

    first = runs[0]
    reference = first["fp32"]["features"]  # TensorFlow fp32, same images
    ov_ran = first["peers"]["ov_ran"]
    ov_label = f"OpenVINO {ov_ran}, model only" + ("" if ov_ran == "bf16" else " (bf16 asked; no native bf16)")
    limit_precision = "int8" if best == "int8" else float_precision
    limit = (int8_peak if best == "int8" else float_peak) / (GFLOP_PER_IMAGE * 1e9)
    print(f"\nrates, median of {len(runs)} rounds (each round's value; img/s, req/s):")
    rates = [
        (f"imgclf {ours_label} e2e, 500x375", lambda m: m["ours"]["rate"]),
        (f"imgclf {ours_label}, its own model only", lambda m: m["ours"]["model_only"]),
        (f"imgclf {ours_label} e2e, 12 MP --decode fast", lambda m: m["phone_fast"]["rate"]),
        (f"imgclf {ours_label} e2e, 12 MP --decode exact", lambda m: m["phone_exact"]["rate"]),
        ("imgclf tensorflow fp32 e2e, 500x375", lambda m: m["fp32"]["rate"]),
        (ov_label, lambda m: m["peers"]["ov"]),
        (f"Keras InceptionV3 {keras_policy}, tf.data", lambda m: m["peers"]["keras"]),
        ("TensorFlow one image per session run, fp32", lambda m: m["peers"]["single"]),
        *((f"imgclf fp32 model only, {name}", lambda m, name=name: m["fp32_model"][name])
          for name in first["fp32_model"]),
        (f"imgclf e2e, one 500x375 JPEG x {BATCH * 4}", lambda m: m["same_jpeg"]["rate"]),
        *((f"service c{args.concurrency}, batching {'on' if on else 'off'}", lambda m, on=on: m["served"][on]["rate"])
          for on in first["served"]),
    ]
    for name, value in rates:
        print_row(name, [value(m) for m in runs], "", digits=1)

    print(f"\nsummary: ratios within each round, median of {len(runs)} (imgclf {ours_label}; targets from "
          "issue 14):")
    rows = [
        (f"imgclf e2e / OpenVINO {ov_ran} model only", lambda m: m["ours"]["rate"] / m["peers"]["ov"], ">= 1.5"),
        (f"imgclf e2e / Keras {keras_policy}", lambda m: m["ours"]["rate"] / m["peers"]["keras"], ">= 3"),
        ("imgclf e2e / TF one image per run", lambda m: m["ours"]["rate"] / m["peers"]["single"], ""),
        ("imgclf e2e / its own model only", lambda m: m["ours"]["rate"] / m["ours"]["model_only"],
         "1 = decoding fully hidden"),
        (f"share of the {limit_precision} compute limit ({limit:.0f} img/s)", lambda m: m["ours"]["rate"] / limit,
         ""),
        ("12 MP --decode fast / 500x375", lambda m: m["phone_fast"]["rate"] / m["ours"]["rate"], ">= 0.6"),
        ("  its ceiling on this CPU (decode CPU measured)", lambda m: m["phone_ceiling"],
         f"+{extra_ms:.0f} ms CPU/image"),
        ("12 MP --decode exact / 500x375", lambda m: m["phone_exact"]["rate"] / m["ours"]["rate"], ""),
        ("fp32 batched e2e / one image per run", lambda m: m["fp32"]["rate"] / m["peers"]["single"], ">= 1"),
        ("fp32 model only, batch 32 / batch 1",
         lambda m: m["fp32_model"]["batch 32 (micro-batches)"] / m["fp32_model"]["batch 1"], ">= 1"),
        ("  the same before the fix (one session run)",
         lambda m: m["fp32_model"]["batch 32, one session run (before)"] / m["fp32_model"]["batch 1"], ""),
        (f"service c{args.concurrency} / featurizer e2e, same JPEG",
         lambda m: m["served"][True]["rate"] / m["same_jpeg"]["rate"], ">= 0.9"),
        ("service p99 / p50", lambda m: m["served"][True]["p99"] / m["served"][True]["p50"], "<= 2"),
    ]
    if False in first["served"]:
        rows.append(("service batching on / off",
                     lambda m: m["served"][True]["rate"] / m["served"][False]["rate"], "reported"))
    for name, value, target in rows:
        print_row(name, [value(m) for m in runs], target)
    errors = [m["served"][True]["errors"] for m in runs]
    print(f"  {'service errors, all rounds':<54} {sum(errors):7d}   {'0':<26} ({', '.join(map(str, errors))})")
    print(f"  fidelity, imgclf {ours_label} vs TF fp32: {fidelity(first['ours']['features'], reference)}")
    ov_features = first["peers"]["ov_features"]
    print(f"  fidelity, {ov_label} vs TF fp32: {fidelity(ov_features, reference[:len(ov_features)])}")
    keras_features = first["peers"]["keras_features"]
    print(f"  fidelity, Keras {keras_policy} vs TF fp32: {fidelity(keras_features, reference)} (its own resize and "
          "scaling)")


def print_row(name: str, values: list[float], target: str, digits: int = 2) -> None:
    """Print ``name``, the median of ``values``, the target, and every value (the rounds' spread)."""
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    print(f"  {name:<54} {float(np.median(values)):7.{digits}f}   {target:<26} ({each})", flush=True)


def measure_round(index: int, args, graph: Path, backend: str, best: str, ours_label: str, small: list[Path],
                  phones: list[Path], small_dir: Path, phone_dir: Path, same_dir: Path, jpeg: bytes,
                  keras_policy: str) -> dict:
    """Measure every path once, one after the other, so each ratio compares rates taken minutes apart.

    Nothing stays alive between measurements: each featurizer is closed after
    its run, the peers run in a child process that exits after the round, the
    service in gunicorn (an idle compiled model or TensorFlow session beside a
    measurement slowed it by several percent).
    """
    print(f"round {index + 1} of {args.rounds}:", flush=True)
    m: dict = {}
    for key, config, folder, label in (
            ("ours", featurizer_config(graph, best, "exact", backend), small_dir, f"{ours_label}, 500x375"),
            ("phone_fast", featurizer_config(graph, best, "fast", backend), phone_dir,
             f"{ours_label}, 12 MP, --decode fast"),
            ("phone_exact", featurizer_config(graph, best, "exact", backend), phone_dir,
             f"{ours_label}, 12 MP, --decode exact"),
            ("fp32", featurizer_config(graph, "fp32"), small_dir, "tensorflow fp32, 500x375"),
            ("same_jpeg", featurizer_config(graph, best, "exact", backend), same_dir,
             f"{ours_label}, one 500x375 JPEG x {BATCH * 4}")):
        m[key] = end_to_end(config, folder, label, calibration=small_dir)  # int8: every one on the small photos
    featurizer = Featurizer(featurizer_config(graph, "fp32", "fast"))  # fast decodes the 500x375 photos as exact
    try:
        inputs = np.stack([featurizer.preprocess(path.read_bytes()) for path in small])
        m["fp32_model"] = fp32_model_rates(featurizer, inputs, args.seconds / 2)
        m["decode_ms"] = decode_cpu_ms(featurizer, phones[:8]), decode_cpu_ms(featurizer, small[:64])
    finally:
        featurizer.close()
    for name, rate in m["fp32_model"].items():
        print(f"  {'imgclf fp32 model only, ' + name:<46} {rate:7.2f} img/s", flush=True)
    print(f"  decoding on one thread, --decode fast: {m['decode_ms'][0]:.1f} ms CPU per 12-MP JPEG, "
          f"{m['decode_ms'][1]:.1f} ms per 500x375 one", flush=True)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        m["peers"] = child.submit(peer_rates, graph, small, args.seconds, keras_policy).result()
    m["served"] = {True: service(graph, jpeg, backend, best, args.concurrency, args.requests, True)}
    if args.batching_off:
        m["served"][False] = service(graph, jpeg, backend, best, args.concurrency, args.requests, False)
    for batching, s in m["served"].items():
        print(f"  service, gunicorn 1 worker, c{args.concurrency}, {args.requests} requests, batching "
              f"{'on ' if batching else 'off'}: {s['rate']:7.2f} req/s, p50 {s['p50']:.0f} ms, p99 {s['p99']:.0f} ms, "
              f"errors {s['errors']}" + (f" ({s['first_error']})" if s["errors"] else ""), flush=True)
    return m


def peer_rates(graph: Path, paths: list[Path], seconds: float, keras_policy: str) -> dict:
    """Measure each peer once, one after the other, in this (child) process; return rates and features."""
    featurizer = Featurizer(featurizer_config(graph, "fp32"))  # the same decoded inputs as imgclf's fp32
    inputs = np.stack([featurizer.preprocess(path.read_bytes()) for path in paths])
    ov_peer = OpenVINOPeer(featurizer, inputs)
    featurizer.close()
    out = {"ov": ov_peer.measure(seconds), "ov_ran": ov_peer.ran, "ov_features": ov_peer.features()}
    print(f"  {f'OpenVINO {ov_peer.ran}, model only':<46} {out['ov']:7.2f} img/s", flush=True)
    del ov_peer, inputs
    gc.collect()
    keras_peer = KerasPeer(paths, keras_policy)
    out["keras"] = keras_peer.measure()
    out["keras_features"] = keras_peer.features
    print(f"  {'Keras InceptionV3 ' + keras_policy + ', tf.data':<46} {out['keras']:7.2f} img/s", flush=True)
    del keras_peer
    gc.collect()
    single = SingleImageGraph(load_graph(graph)[0], threads=ThreadConfig(intra_op=0, inter_op=0))
    single_paths = paths[:min(len(paths), 64)]
    single.run(single_paths[0].read_bytes())  # warm-up
    out["single"] = one_image_per_run(single, single_paths)
    single.close()
    print(f"  {'TensorFlow one image per session run, fp32':<46} {out['single']:7.2f} img/s", flush=True)
    return out


if __name__ == "__main__":
    main()
