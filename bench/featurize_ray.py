"""Benchmark: images/s of the local engine vs the Ray engine with 1 and 2 actors, same photos, one run.

Every engine featurizes the same generated photos (300 JPEGs of about 500×375 in
two class folders, as bench/featurize.py builds them) with the full-size
Inception-v3 graph (seeded random weights, bench/out/) in fp32 into a fresh
feature dataset. Ray runs a local instance started for each job (``ray.init``
with this machine's CPUs). Prints, for each engine, the wall time and images/s,
its start-up (Ray: until the first batch reached the driver, workers and graph
loads included; local: the graph load) and its steady rate after it, with the
ratio to the local engine's steady rate; Ray's overhead per image (steady Ray
seconds per image minus the local engine's); and a projection for N actors:
the measured per-actor rate × N, capped by the measured read/decode rate per
CPU-second × the CPUs given to decoding.
Not a test: no assertions on speed.

    python -m bench.featurize_ray [--images 300] [--batch-size 16] [--decode-cpus-per-actor 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.featurize import OUT, make_images
from imgclf.featurizer.graph.load import ThreadConfig
from imgclf.featurizer.images.decode import decode_to_input
from imgclf.featurizer.jobs.featurize import FeaturizeJob, run_featurize
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig


def photo_folder(count: int) -> Path:
    """Return a two-class folder with ``count`` generated photos (built once under bench/out/)."""
    root = OUT / f"ray_photos_{count}"
    if not (root / "b").is_dir() or sum(1 for _ in root.rglob("*.jpg")) != count:
        for i, path in enumerate(make_images(root / ".tmp", count)):
            label = root / ("a" if i < count // 2 else "b")
            label.mkdir(parents=True, exist_ok=True)
            path.rename(label / path.name)
    return root


def decode_rate_per_cpu(graph: Path, folder: Path, limit: int = 60) -> float:
    """Return images per CPU-second of reading + decoding + preprocessing (what the decode tasks do)."""
    featurizer = Featurizer(FeaturizerConfig(graph, precision="fp32"))
    c = featurizer.contract
    paths = sorted(folder.rglob("*.jpg"))[:limit]
    decode_to_input(paths[0].read_bytes(), c.input_size, c.input_mean, c.input_std, 10**8, c.jpeg_dct_method)
    start = time.process_time()  # CPU seconds of this process, all threads: images per CPU-second
    for path in paths:
        decode_to_input(path.read_bytes(), c.input_size, c.input_mean, c.input_std, 10**8, c.jpeg_dct_method)
    seconds = time.process_time() - start
    featurizer.close()
    return len(paths) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--graph", type=Path, help="use this graph instead of the random-weight export")
    parser.add_argument("--decode-cpus-per-actor", type=int, default=8,
                        help="CPUs for decode tasks per GPU actor in the projection (default: %(default)s)")
    args = parser.parse_args()

    from imgclf.featurizer.jobs.ray_engine import RayOptions, run_featurize_ray

    OUT.mkdir(parents=True, exist_ok=True)
    graph = args.graph or OUT / "inception_v3_random_seed0.pb"
    if not graph.exists():
        from imgclf.featurizer.graph.export import export_inception

        print(f"building {graph} (once) ...", flush=True)
        export_inception(graph, weights="random", seed=0)
    folder = photo_folder(args.images)
    cpus = len(os.sched_getaffinity(0))
    print(f"{args.images} JPEGs ~500x375, graph {graph.name}, fp32, batch {args.batch_size}, {cpus} CPUs")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def job(name: str, intra: int) -> FeaturizeJob:
            return FeaturizeJob(folder, FeaturizerConfig(graph, precision="fp32", threads=ThreadConfig(intra, 1)),
                                cache=None, batch_size=args.batch_size, progress=False,
                                output_dataset=str(Path(tmp) / name))

        start = time.perf_counter()
        local = run_featurize(job("local", 0))
        wall = time.perf_counter() - start
        rows.append(("local engine", wall, local.extract.computed, wall - local.extract.seconds,
                     local.extract.computed / local.extract.seconds))
        # Each actor gets its share of the cores for TensorFlow (and half a logical CPU in Ray, so that one
        # CPU is left for the decode tasks on a 2-core machine).
        for actors in (1, 2):
            start = time.perf_counter()
            summary = run_featurize_ray(job(f"ray{actors}", max(1, cpus // actors)),
                                        RayOptions(actors=actors, cpus_per_actor=0.5))
            wall = time.perf_counter() - start
            d = summary.dataset
            steady = (summary.extract.computed - d["first_batch_rows"]) / (summary.extract.seconds
                                                                          - d["first_batch_seconds"])
            rows.append((f"ray, {actors} actor(s)", wall, summary.extract.computed, d["first_batch_seconds"],
                         steady))
    local_rate = rows[0][4]  # steady rates compare the engines; wall times include each one's start-up
    print(f"| {'engine':<18} | {'wall s':>6} | {'wall img/s':>10} | {'start-up s':>10} | {'steady img/s':>12} | "
          f"{'steady x local':>14} |")
    for name, wall, n, startup, steady in rows:
        print(f"| {name:<18} | {wall:6.1f} | {n / wall:10.2f} | {startup:10.1f} | {steady:12.2f} | "
              f"{steady / local_rate:14.2f} |")
    one_actor = rows[1][4]
    print(f"Ray overhead per image (steady, 1 actor): {1000 * (1 / one_actor - 1 / local_rate):+.1f} ms "
          f"(local {1000 / local_rate:.1f} ms/img, Ray {1000 / one_actor:.1f} ms/img); "
          f"fixed start-up {rows[1][3]:.1f} s")
    decode = decode_rate_per_cpu(graph, folder)
    print(f"read+decode+preprocess: {decode:.1f} img per CPU-second; per-actor graph rate (measured, this CPU): "
          f"{one_actor:.2f} img/s")
    print(f"\nprojection for N actors: min(N x {one_actor:.2f}, N x {args.decode_cpus_per_actor} decode CPUs x "
          f"{decode:.1f}) img/s")
    print(f"| {'N actors':>8} | {'N x per-actor':>13} | {'decode cap':>10} | {'projected img/s':>15} |")
    for n in (1, 2, 4, 8, 16, 32):
        compute, cap = n * one_actor, n * args.decode_cpus_per_actor * decode
        print(f"| {n:>8} | {compute:>13.1f} | {cap:>10.1f} | {min(compute, cap):>15.1f} |")


if __name__ == "__main__":
    main()
