"""Benchmark: images/s end to end (files in, cached features out), three ways, in one run.

(a) the one-image-per-run fp32 path through ``DecodeJpeg/contents:0`` — what the
    old retraining script did — writing each vector to the cache;
(b) the batched pipeline (threads decode, graph runs batches) in fp32;
(c) the same in bf16 (only where the CPU has native bf16);
(d)-(f) the same pipeline on the OpenVINO backend in fp32, bf16 and int8 (NNCF,
    calibrated on the benchmark's own images), where the imgclf[openvino] extra
    is installed; conversion and quantization happen once before the clock
    (they are cached on disk) and their time is printed apart.

Beside each batched rate: its ratio to (a), to (b) TensorFlow fp32 and (c)
TensorFlow bf16, and the fidelity of its features, the lowest and mean cosine
per image to (b)'s.

Uses a full-size Inception-v3 graph with seeded random weights (built once with
``export_inception`` into bench/out/) and 200 generated photo-like JPEGs of
about 500×375. Prints rates and the ratios to (a). Not a test: no assertions.

    python -m bench.featurize [--images 200] [--batch-size 32] [--calibration-images 300] [--no-openvino]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.core.precision import cpu_flags, native_bf16_flags, onednn_enabled
from imgclf.featurizer.graph.load import SingleImageGraph, ThreadConfig, load_graph
from imgclf.featurizer.jobs.pipeline import WorkItem, extract
from imgclf.featurizer.runtime.backend import openvino_installed
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.featurizer.store.identity import sha256_bytes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def make_images(folder: Path, count: int) -> list[Path]:
    """Write ``count`` photo-like JPEGs of about 500×375 (sizes vary a little)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        size = (500 + int(rng.integers(-20, 21)), 375 + int(rng.integers(-15, 16)))
        image = coarse.resize(size, Image.BICUBIC)
        noise = rng.normal(0, 6, (size[1], size[0], 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
        path = folder / f"img_{i:04d}.jpg"
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def run_single(graph_path: Path, paths: list[Path], cache_path: Path, commit_every: int,
               threads: ThreadConfig) -> float:
    """Time (a): one JPEG per session run through the graph's own decoding, cached."""
    single = SingleImageGraph(load_graph(graph_path)[0], threads=threads)
    single.run(paths[0].read_bytes())  # warm-up, as every path gets one
    with FeatureCache(cache_path) as cache:
        start = time.perf_counter()
        pending = {}
        for path in paths:
            data = path.read_bytes()
            pending[sha256_bytes(data)] = single.run(data)
            if len(pending) >= commit_every:
                cache.put_many("single-fp32", pending)
                pending = {}
        if pending:
            cache.put_many("single-fp32", pending)
        seconds = time.perf_counter() - start
    single.close()
    return len(paths) / seconds


def run_batched(graph_path: Path, paths: list[Path], cache_path: Path, precision: str, batch_size: int,
                backend: str = "tensorflow", calibration_dir: Path | None = None,
                **options) -> tuple[float, np.ndarray, float]:
    """Time (b)-(f): the batched pipeline with decoding threads, cached; return (img/s, features, setup seconds)."""
    setup = time.perf_counter()  # int8's setup: choosing and reading the calibration images, then quantizing
    config = FeaturizerConfig(graph_path, precision=precision, backend=backend, **options)
    featurizer = Featurizer(config, calibration_for(config, calibration_dir) if calibration_dir else None)
    setup = time.perf_counter() - setup
    warm = np.stack([featurizer.preprocess(paths[0].read_bytes())] * batch_size)
    featurizer.run(warm)  # warm-up: graph optimisation and oneDNN kernel selection
    items = [WorkItem(path.name, path.read_bytes) for path in paths]
    with FeatureCache(cache_path) as cache:
        start = time.perf_counter()
        result = extract(featurizer, items, cache, batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - start
        found = cache.get_many(featurizer.fingerprint, result.keys)
    featurizer.close()
    assert result.computed == len(paths) and not result.failures, result.failures
    return len(paths) / seconds, np.stack([found[key] for key in result.keys]), setup


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the cosine of each row of ``a`` to the same row of ``b``."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--graph", type=Path, help="use this graph instead of the random-weight export")
    parser.add_argument("--calibration-images", type=int, default=300, help="int8 calibration images")
    parser.add_argument("--no-openvino", action="store_true", help="leave out (d)-(f)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    graph = args.graph or OUT / "inception_v3_random_seed0.pb"
    if not graph.exists():
        from imgclf.featurizer.graph.export import export_inception

        print(f"building {graph} (once) ...", flush=True)
        export_inception(graph, weights="random", seed=0)
    paths = make_images(OUT / "images" / "photos", args.images)  # a class folder: int8 calibrates on the set
    bf16_ok = bool(native_bf16_flags()) and onednn_enabled()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"native bf16 flags: {', '.join(native_bf16_flags()) or 'none'}; "
          f"amx: {', '.join(sorted(f for f in cpu_flags() if f.startswith('amx'))) or 'none'}")
    print(f"{len(paths)} JPEGs ~500x375, graph {graph.name}, batch {args.batch_size}")

    rates, features, setups = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # (a) as the old script ran it: a default session (TensorFlow picks both thread pools).
        rates["(a) one image per run, fp32"] = run_single(graph, paths, tmp / "a.sqlite", args.batch_size,
                                                          ThreadConfig(intra_op=0, inter_op=0))
        # The same path with imgclf's thread settings, to show what threading alone gives.
        rates["(a') (a) with inter-op threads 1"] = run_single(graph, paths, tmp / "a2.sqlite", args.batch_size,
                                                               ThreadConfig())
        runs = [("(b) batched pipeline, fp32", "tensorflow", "fp32")]
        if bf16_ok:
            runs.append(("(c) batched pipeline, bf16", "tensorflow", "bf16"))
        else:
            print("(c) skipped: this CPU has no native bf16 (AMX_BF16/AVX512_BF16) or oneDNN is off")
        openvino = not args.no_openvino and openvino_installed()
        if openvino:
            from imgclf.featurizer.runtime.openvino import native_bf16

            runs.append(("(d) OpenVINO, fp32", "openvino", "fp32"))
            if native_bf16():
                runs.append(("(e) OpenVINO, bf16", "openvino", "bf16"))
            runs.append(("(f) OpenVINO, int8", "openvino", "int8"))
        elif not args.no_openvino:
            print("(d)-(f) skipped: OpenVINO is not installed (pip install 'imgclf[openvino]')")
        for name, backend, precision in runs:
            options = {"openvino_cache": tmp / "openvino", "calibration_dir": paths[0].parents[1],
                       "calibration_images": args.calibration_images} if backend == "openvino" else {}
            rates[name], features[name], setups[name] = run_batched(graph, paths, tmp / f"{name[1]}.sqlite",
                                                                    precision, args.batch_size, backend, **options)
    baseline = rates["(a) one image per run, fp32"]
    tf32 = rates["(b) batched pipeline, fp32"]
    tf16 = rates.get("(c) batched pipeline, bf16")
    reference = features["(b) batched pipeline, fp32"]
    for name, rate in rates.items():
        line = f"{name:<32} {rate:8.2f} img/s   {rate / baseline:5.2f}x (a)"
        if name in features:
            line += f"   {rate / tf32:5.2f}x (b)" + (f"   {rate / tf16:5.2f}x (c)" if tf16 else "")
            cos = cosines(features[name], reference)
            line += f"   cos to (b): min {cos.min():.5f} mean {cos.mean():.5f}"
            if name.startswith(("(d)", "(e)", "(f)")):
                line += f"   (setup {setups[name]:.1f} s: convert/quantize/compile, cached)"
        print(line)


if __name__ == "__main__":
    main()
