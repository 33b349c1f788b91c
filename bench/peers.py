"""Benchmark: imgclf against the runtimes a user would pick instead, and on phone-size photos, in one run.

One process tree, one run, the same full-size random-weight Inception-v3 graph
(built once into bench/out/, shared with bench/featurize.py) and the same
generated photos (about 500×375, and 12-megapixel 4000×3000 "phone" JPEGs):

* imgclf featurize end to end (files in, cached features out; decoding
  included) with its best backend and precision (``--backend``/``--precision``,
  default auto), beside its own model-only rate on the same decoded images and
  the share of the wall time its graph was busy (decoding overlaps the model);
* OpenVINO bf16, model only, written directly on the openvino API: the same
  graph (after imgclf's old-op rewrite), images decoded before its clock,
  batch 32, THROUGHPUT hint, an AsyncInferQueue;
* Keras ``InceptionV3(include_top=False, pooling="avg")`` under the
  mixed_bfloat16 policy with the same weights, fed by a tf.data pipeline from
  the files (read, decode, resize, batch 32, prefetch);
* TensorFlow one image per session run (the 2015 script's way: JPEG bytes in,
  fp32), and imgclf fp32 batched (end to end and model only, batch 32 vs 1);
* phone photos: 12-MP JPEGs end to end with ``--decode fast`` and ``exact``
  against the small photos' rate;
* the service (gunicorn, batching on, the same precision) at concurrency 16 on
  one 500×375 JPEG against the featurizer's end-to-end rate on that JPEG.

Fidelity is the per-image cosine to TensorFlow fp32 features of the same images.
The compute limit is derived (usable cores × clock × 1024 bf16 FLOP per cycle
of AMX) and checked against bf16 matrix multiplies through OpenVINO; Inception-v3
needs 11.5 GFLOP per image; int8 counts twice bf16's peak. Not a test: no assertions; ratios are from this run only.

    python -m bench.peers [--images 320] [--phone-images 96] [--requests 320] [--backend auto]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from bench.featurize import make_images
from bench.serve import GRAPH, OUT, Server, build_graph, drive, train_model
from imgclf.core.precision import cpu_flags, native_bf16_flags, resolve_precision
from imgclf.featurizer.contract import DEFAULT_CONTRACT
from imgclf.featurizer.extractor import Featurizer, FeaturizerConfig
from imgclf.featurizer.feature_cache import FeatureCache
from imgclf.featurizer.graph import SingleImageGraph, ThreadConfig, load_graph, usable_cpus
from imgclf.featurizer.image_dir import scan_image_dir
from imgclf.featurizer.pipeline import WorkItem, extract

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


def featurizer_config(graph: Path, precision: str, decode: str = "exact", backend: str | None = None
                      ) -> FeaturizerConfig:
    """Return a config; ``backend`` is passed where this imgclf has the option (the OpenVINO backend adds it)."""
    extra = {}
    if backend is not None and "backend" in {f.name for f in fields(FeaturizerConfig)}:
        extra["backend"] = backend
    elif backend not in (None, "auto", "tensorflow"):
        raise SystemExit(f"--backend {backend}: this imgclf has no featurizer backends yet")
    return FeaturizerConfig(graph, contract=DEFAULT_CONTRACT.with_overrides(decode=decode), precision=precision,
                            **extra)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the per-row cosine of two [N, D] arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def fidelity(features: np.ndarray, reference: np.ndarray) -> str:
    """Return "cos min/mean" of features against the fp32 reference."""
    c = cosines(features, reference)
    return f"cos min {c.min():.5f} mean {c.mean():.5f}"


def end_to_end(config: FeaturizerConfig, folder: Path, label: str) -> dict:
    """Featurize every image of ``folder`` (one class sub-folder) into a fresh cache; return rates and features."""
    featurizer = Featurizer(config)
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


def openvino_bf16(featurizer: Featurizer, inputs: np.ndarray, seconds: float, rounds: int = 1
                  ) -> tuple[float, np.ndarray]:
    """Return (img/s, features) of OpenVINO bf16 on pre-decoded ``inputs``: batch 32, THROUGHPUT, async queue."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bottleneck.pb"  # the graph after imgclf's old-op rewrite, image input → bottleneck
        path.write_bytes(featurizer.graph.graph.as_graph_def().SerializeToString())
        model = ov.convert_model(str(path), input=[BATCH, *inputs.shape[1:]])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                      "PERFORMANCE_HINT": "THROUGHPUT"})
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    batches = [inputs[i:i + BATCH] for i in range(0, len(inputs) - BATCH + 1, BATCH)]
    features: dict[int, np.ndarray] = {}
    queue.set_callback(lambda request, index: features.__setitem__(index, request.get_output_tensor(0).data.copy()))
    for index, batch in enumerate(batches[:2]):  # warm-up
        queue.start_async({0: batch}, index)
    queue.wait_all()
    rate = 0.0
    for _ in range(rounds):  # the best round: the one least disturbed by other work on the machine
        started, done = time.perf_counter(), 0
        while done < len(batches) or time.perf_counter() - started < seconds:
            queue.start_async({0: batches[done % len(batches)]}, done % len(batches))
            done += 1
        queue.wait_all()
        rate = max(rate, done * BATCH / (time.perf_counter() - started))
    return rate, np.concatenate([features[i] for i in range(len(batches))])


def keras_bf16(paths: list[Path], rounds: int = 1) -> tuple[float, np.ndarray]:
    """Return (img/s, features) of Keras InceptionV3 mixed_bfloat16 fed by tf.data from the files."""
    import keras
    import tensorflow as tf

    from imgclf.featurizer.export_inception import build_inception

    reference = build_inception("random", seed=0).body  # the weights the benchmark graph was frozen from
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")
        model.set_weights(reference.get_weights())
    finally:
        keras.mixed_precision.set_global_policy("float32")

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return keras.applications.inception_v3.preprocess_input(tf.image.resize(image, (299, 299)))

    def dataset(files):
        return (tf.data.Dataset.from_tensor_slices([str(p) for p in files])
                .map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE))

    model.predict(dataset(paths[:BATCH]), verbose=0)  # warm-up
    rate = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        features = model.predict(dataset(paths), verbose=0)
        rate = max(rate, len(paths) / (time.perf_counter() - started))
    return rate, np.asarray(features, np.float32)


def one_image_per_run(graph: Path, paths: list[Path], rounds: int = 1) -> float:
    """Return img/s of the 2015 way: one JPEG per session run through the graph's own decoding, fp32."""
    single = SingleImageGraph(load_graph(graph)[0], threads=ThreadConfig(intra_op=0, inter_op=0))
    single.run(paths[0].read_bytes())
    rate = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for path in paths:
            single.run(path.read_bytes())
        rate = max(rate, len(paths) / (time.perf_counter() - started))
    single.close()
    return rate


AMX_BF16_FLOP_PER_CYCLE = 1024  # per core: one 16x32 · 32x16 tile multiply-add (TDPBF16PS) per 16 cycles


def derived_bf16_peak() -> float | None:
    """Return usable cores × clock × 1024 FLOP/cycle (AMX-BF16), or None on a CPU without AMX."""
    if "amx_bf16" not in cpu_flags():
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            mhz = next(float(line.split(":")[1]) for line in fh if line.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        return None
    return usable_cpus() * mhz * 1e6 * AMX_BF16_FLOP_PER_CYCLE


def measured_bf16_peak(seconds: float = 3.0, n: int = 2048) -> float:
    """Return the FLOP/s OpenVINO reaches on n×n×n bf16 matrix multiplies (THROUGHPUT, async queue)."""
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


def service(graph: Path, jpeg: bytes, precision: str, concurrency: int, requests: int, batching: bool) -> dict:
    """Serve a model of ``graph`` with gunicorn and drive POST /predict with ``jpeg``; return rate and latencies."""
    model_dir = OUT / "serve-models"
    train_model(graph, model_dir)
    log = OUT / f"peers-gunicorn-batching{int(batching)}.log"
    server = Server(model_dir, batching, workers=1, threads=concurrency, log=log, precision=precision)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=320, help="~500x375 photos (default: %(default)s)")
    parser.add_argument("--phone-images", type=int, default=96,
                        help="12-MP JPEGs; several batches, so decoding overlaps the graph (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=320, help="service requests (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="service clients (default: %(default)s)")
    parser.add_argument("--backend", default=None,
                        help="imgclf featurizer backend, passed through where imgclf has the option "
                             "(default: its auto)")
    parser.add_argument("--precision", default="auto", help="imgclf precision (default: auto)")
    parser.add_argument("--seconds", type=float, default=6.0, help="minimum timing window of model-only loops")
    parser.add_argument("--rounds", type=int, default=2,
                        help="timed rounds of each measurement, interleaved where they are compared; the best "
                             "counts (a shared machine disturbs some rounds) (default: %(default)s)")
    parser.add_argument("--batching-off", action="store_true", help="also serve with batching off (the ratio)")
    parser.add_argument("--graph", type=Path, help="use this graph instead of the random-weight export")
    args = parser.parse_args()

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
    if args.backend:
        os.environ["IMGCLF_BACKEND"] = args.backend  # the service's featurizer backend, where it has one
    best = resolve_precision(args.precision)
    print(f"CPU: {platform.processor() or platform.machine()}, {usable_cpus()} usable cores "
          f"(of {os.cpu_count()}), load average {os.getloadavg()[0]:.1f}; native bf16: "
          f"{', '.join(native_bf16_flags()) or 'none'}; amx: "
          f"{', '.join(sorted(f for f in cpu_flags() if f.startswith('amx'))) or 'none'}", flush=True)
    measured, derived = measured_bf16_peak(), derived_bf16_peak()
    peak = derived or measured
    print(f"bf16 compute limit: derived {derived / 1e12 if derived else float('nan'):.2f} TFLOP/s (cores x clock x "
          f"{AMX_BF16_FLOP_PER_CYCLE} FLOP/cycle AMX), against {measured / 1e12:.2f} TFLOP/s reached by OpenVINO "
          f"2048^3 bf16 matmuls (fp32 in and out, other work on the machine included: a floor, not the peak); "
          f"limit used {peak / 1e12:.2f} TFLOP/s = {peak / (GFLOP_PER_IMAGE * 1e9):.0f} img/s at "
          f"{GFLOP_PER_IMAGE} GFLOP/image (int8: twice that)", flush=True)
    print(f"{len(small)} photos ~500x375, {len(phones)} phone JPEGs 4000x3000, graph {graph.name}, batch {BATCH}",
          flush=True)

    print(f"imgclf featurize ({args.rounds} interleaved rounds; the best of each is used):", flush=True)
    runs: dict[str, dict] = {}
    for _ in range(args.rounds):
        for key, config, folder, label in (
                ("ours", featurizer_config(graph, args.precision, backend=args.backend), small_dir,
                 f"best ({best}), 500x375"),
                ("phone_fast", featurizer_config(graph, args.precision, "fast", args.backend), phone_dir,
                 f"best ({best}), 12 MP, --decode fast"),
                ("phone_exact", featurizer_config(graph, args.precision, "exact", args.backend), phone_dir,
                 f"best ({best}), 12 MP, --decode exact"),
                ("fp32", featurizer_config(graph, "fp32"), small_dir, "fp32, 500x375")):
            run = end_to_end(config, folder, label)
            if key not in runs or run["rate"] > runs[key]["rate"]:
                runs[key] = run
    ours, phone_fast, phone_exact, fp32 = (runs[key] for key in ("ours", "phone_fast", "phone_exact", "fp32"))
    reference = fp32["features"]  # TensorFlow fp32, same images

    print("peers:", flush=True)
    featurizer = Featurizer(featurizer_config(graph, "fp32"))
    inputs = np.stack([featurizer.preprocess(path.read_bytes()) for path in small])
    graph_fp32 = featurizer.graph
    fp32_rates = {"batch 1": 0.0, "batch 32 (micro-batches)": 0.0, "batch 32 in one session run (before)": 0.0}
    for _ in range(args.rounds):  # interleaved: the fp32 fix, before and after
        for name, size, micro in (("batch 1", 1, graph_fp32.micro_batch),
                                  ("batch 32 (micro-batches)", BATCH, graph_fp32.micro_batch),
                                  ("batch 32 in one session run (before)", BATCH, 0)):
            graph_fp32.micro_batch, kept = micro, graph_fp32.micro_batch
            featurizer.run(inputs[:size])  # warm-up of the shape
            started, images = time.perf_counter(), 0
            while images < 2 * BATCH or time.perf_counter() - started < args.seconds / 2:
                featurizer.run(inputs[images % (len(inputs) - size + 1):][:size])
                images += size
            fp32_rates[name] = max(fp32_rates[name], images / (time.perf_counter() - started))
            graph_fp32.micro_batch = kept
    for name, rate in fp32_rates.items():
        print(f"  {'imgclf fp32 model only, ' + name:<46} {rate:7.2f} img/s", flush=True)
    ov_rate, ov_features = openvino_bf16(featurizer, inputs, args.seconds, args.rounds)
    featurizer.close()
    print(f"  {'OpenVINO bf16, model only':<46} {ov_rate:7.2f} img/s; "
          f"{fidelity(ov_features, reference[:len(ov_features)])}", flush=True)
    keras_rate, keras_features = keras_bf16(small, args.rounds)
    print(f"  {'Keras InceptionV3 mixed_bfloat16, tf.data':<46} {keras_rate:7.2f} img/s; "
          f"{fidelity(keras_features, reference)} (its own resize and scaling)", flush=True)
    single_rate = one_image_per_run(graph, small[:min(len(small), 64)], args.rounds)
    print(f"  {'TensorFlow one image per session run, fp32':<46} {single_rate:7.2f} img/s", flush=True)

    same_jpeg = end_to_end(featurizer_config(graph, args.precision, backend=args.backend), same_dir,
                           f"best ({best}), one 500x375 JPEG x {BATCH * 4}")
    print(f"service, gunicorn, 1 worker, {args.concurrency} clients, {args.requests} requests:", flush=True)
    served = {True: service(graph, jpeg, best, args.concurrency, args.requests, True)}
    if args.batching_off:
        served[False] = service(graph, jpeg, best, args.concurrency, args.requests, False)
    for batching, s in served.items():
        print(f"  batching {'on ' if batching else 'off'}: {s['rate']:7.2f} req/s, p50 {s['p50']:.0f} ms, "
              f"p99 {s['p99']:.0f} ms, errors {s['errors']}" + (f" ({s['first_error']})" if s["errors"] else ""),
              flush=True)

    limit = peak / (GFLOP_PER_IMAGE * 1e9) * (2 if best == "int8" else 1)
    on = served[True]
    print("\nsummary (this run; targets from issue 14):")
    rows = [
        ("imgclf e2e / OpenVINO bf16 model only", ours["rate"] / ov_rate, ">= 1.5"),
        ("imgclf e2e / Keras mixed_bfloat16", ours["rate"] / keras_rate, ">= 3"),
        ("imgclf e2e / TF one image per run", ours["rate"] / single_rate, ""),
        ("imgclf e2e / its own model only", ours["rate"] / ours["model_only"], "1 = decoding fully hidden"),
        (f"share of the {'int8' if best == 'int8' else 'bf16'} compute limit ({limit:.0f} img/s)",
         ours["rate"] / limit, ""),
        ("12 MP --decode fast / 500x375", phone_fast["rate"] / ours["rate"], ">= 0.6"),
        ("12 MP --decode exact / 500x375", phone_exact["rate"] / ours["rate"], ""),
        ("fp32 batched e2e / one image per run", fp32["rate"] / single_rate, ">= 1"),
        ("fp32 model only, batch 32 / batch 1", fp32_rates["batch 32 (micro-batches)"] / fp32_rates["batch 1"],
         ">= 1"),
        ("  the same before the fix (one session run)",
         fp32_rates["batch 32 in one session run (before)"] / fp32_rates["batch 1"], ""),
        ("service c16 / featurizer e2e, same JPEG", on["rate"] / same_jpeg["rate"], ">= 0.9"),
        ("service p99 / p50", on["p99"] / on["p50"], "<= 2"),
    ]
    if False in served and served[False]["rate"]:
        rows.append(("service batching on / off", on["rate"] / served[False]["rate"], "reported"))
    for name, value, target in rows:
        print(f"  {name:<48} {value:6.2f}   {target}")
    print(f"  service errors                                   {on['errors']:6d}   0")
    print(f"  fidelity, imgclf best vs TF fp32: {fidelity(ours['features'], reference)}")


if __name__ == "__main__":
    main()
