"""Benchmark: how faithful OpenVINO int8 is to TensorFlow fp32, per image, and what each recipe costs in speed.

On the full-size Inception-v3 graph (seeded random weights, bench/out/) and two
sets of 64 generated JPEGs, each calibrated on its own folder as `imgclf
featurize` would:

- ``photos``: photo-like JPEGs of about 500×375 (``bench.featurize``'s);
- ``drawn``: the demo set's drawn pictures (bubbles, checkers, stripes, sunsets;
  sharp edges, flat colours), the kind on which int8 loses most.

For each set it prints the per-image cosine to TensorFlow fp32 (worst, second
worst, mean) of OpenVINO fp32, bf16 (where the CPU has it), and int8 with round
2's recipe and the current one, each calibrated on the default number of images
(300: the whole folder) and on 32; then the speed of the featurizer alone
(normalised images in, img/s over batches of 32, the median of five passes,
the variants interleaved) of each, with ratios to the old int8 recipe and to OpenVINO fp32, all in the same
run. Beside each int8 variant's cosines it prints those of its quantized model run
as exact int8 arithmetic, whatever the CPU's int8 kernels (:func:`exact_int8`):
the recipe's own loss, which a CPU without VNNI or AMX can measure for the
recipe those CPUs run, and the cosine of this CPU's int8 output to the exact
one: what its kernels lose on their own. Prints the CPU and its int8/bf16 flags.

The fidelity floor (``--int8-floor``): the int8 rows are built as ``featurize``
builds them, at the default floor, so on a CPU whose kernels miss it they are
the kept-float models. One more row holds this CPU's recipe to a floor just
above what its fully int8 model reaches on the checked images (``--floor-gap``,
default 0.0001: the size of the gap measured on the AMX machine, 0.9899 against
0.99), so a CPU that meets the default floor still shows what keeping layers
float costs: build time, layers kept, cosines and speed. Not a test: no
assertions; about 20 minutes on 2 cores (``--quick``: fp32, this CPU's int8 and
the floor row only).

    python -m bench.int8_fidelity [--images 64] [--rounds 5] [--floor-gap 0.0001] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.featurize import OUT, cosines, make_images
from imgclf.core.precision import cpu_flags
from imgclf.featurizer.graph.load import load_graph
from imgclf.featurizer.images.demo import DEMO_CLASSES, write_demo_images
from imgclf.featurizer.runtime.calibration import DEFAULT_CALIBRATION_IMAGES
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.runtime.openvino import OpenVINOGraph, int8_recipe, native_bf16


def image_sets(root: Path, count: int) -> dict[str, Path]:
    """Write the two image folders (deterministic) and return them by name."""
    make_images(root / "photos" / "photo", count)
    write_demo_images(root / "drawn", per_class=count // len(DEMO_CLASSES), seed=3)
    return {"photos": root / "photos", "drawn": root / "drawn"}


def exact_int8(graph: OpenVINOGraph, inputs: np.ndarray) -> np.ndarray:
    """Return the bottlenecks of ``graph``'s quantized IR run as exact int8 arithmetic, not by this CPU's kernels.

    With OpenVINO's low-precision transformations off (``LP_TRANSFORMS_MODE``), the CPU plugin runs the
    IR's FakeQuantize operations and convolutions in fp32: the values are the int8 grid's, the sums
    exact, whatever int8 instructions (AVX2, VNNI, AMX) the CPU has. What this loses against TensorFlow fp32
    is the recipe's (its scales and ranges); what a CPU's int8 kernels lose beyond it is theirs.
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(graph.ir_dir / "model.xml"))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "LP_TRANSFORMS_MODE": False})
    return np.concatenate([compiled(inputs[i:i + 1])[0].reshape(1, -1) for i in range(len(inputs))])


def rates(graphs: dict, inputs: np.ndarray, rounds: int, batch: int = 32) -> dict[str, float]:
    """Return each graph's median img/s over ``rounds`` passes of ``inputs`` in batches, the graphs interleaved.

    Interleaving spreads the machine's own changes in load over every variant alike.
    """
    for graph in graphs.values():
        graph.run(inputs[:batch])  # warm-up
    found: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, graph in graphs.items():
            start = time.perf_counter()
            for i in range(0, len(inputs), batch):
                graph.run(inputs[i:i + batch])
            found[name].append(len(inputs) / (time.perf_counter() - start))
    return {name: float(np.median(values)) for name, values in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per set")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per variant, interleaved (median)")
    parser.add_argument("--graph", type=Path, help="use this graph instead of the random-weight export")
    parser.add_argument("--floor-gap", type=float, default=0.0001,
                        help="the floor row's floor: this CPU's fully int8 worst on the checked images plus this "
                             "(0: no floor row)")
    parser.add_argument("--quick", action="store_true", help="fp32, this CPU's int8 and the floor row only")
    args = parser.parse_args()

    graph_path = args.graph or OUT / "inception_v3_random_seed0.pb"
    if not graph_path.exists():
        from imgclf.featurizer.graph.export import export_inception

        print(f"building {graph_path} (once) ...", flush=True)
        export_inception(graph_path, weights="random", seed=0)
    flags = cpu_flags()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").is_file() else None
    print(f"CPU: {model or platform.processor() or platform.machine()}, {os.cpu_count()} cores; int8/bf16 flags: "
          f"{', '.join(sorted(f for f in flags if 'vnni' in f or f.startswith('amx') or 'bf16' in f)) or 'none'}"
          f"; avx2 {'yes' if 'avx2' in flags else 'no'}, avx512f {'yes' if 'avx512f' in flags else 'no'}")
    old, new = int8_recipe(), int8_recipe(full_range=True)
    print(f"graph {graph_path.name}; int8 recipes: old {old}, new {new}", flush=True)
    graph_def, sha = load_graph(graph_path)
    reference = Featurizer(FeaturizerConfig(graph_path, precision="fp32"))
    variants = [("OpenVINO fp32", "fp32", None, None)] + ([("OpenVINO bf16", "bf16", None, None)]
                                                          if native_bf16() and not args.quick else [])
    for calibration in (DEFAULT_CALIBRATION_IMAGES,) if args.quick else (DEFAULT_CALIBRATION_IMAGES, 32):
        for label, recipe in (("old", old),) if args.quick else (("old", old), ("new", new)):
            variants.append((f"int8 {label} ({recipe}), calib {calibration}", "int8", recipe, calibration))
    plain = f"int8 old ({old}), calib {DEFAULT_CALIBRATION_IMAGES}"
    floor_row = f"int8 {old}, floor +{args.floor_gap:g}" if args.floor_gap > 0 else None
    if floor_row:  # held to a floor just above its own fully int8 worst: what keeping layers float costs here
        variants.append((floor_row, "int8", old, DEFAULT_CALIBRATION_IMAGES))
    if old != "vnni" and not args.quick:  # the recipe of VNNI and AMX CPUs: its exact int8 figures hold there
        variants.append((f"int8 vnni, calib {DEFAULT_CALIBRATION_IMAGES}", "int8", "vnni", DEFAULT_CALIBRATION_IMAGES))
    rows: dict[str, dict] = {name: {} for name, *_ in variants}
    with tempfile.TemporaryDirectory(prefix="int8-fidelity-") as tmp:
        sets = image_sets(Path(tmp) / "images", args.images)
        for set_name, folder in sets.items():
            files = sorted(folder.rglob("*.jpg"))
            inputs = np.stack([reference.preprocess(f.read_bytes()) for f in files])
            expected = np.concatenate([reference.run(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])
            graphs = {}
            plain_worst = None
            for name, precision, recipe, n in variants:
                started = time.perf_counter()
                calibration = calibration_for(FeaturizerConfig(graph_path, precision="int8", backend="openvino",
                                                               calibration_images=n), folder) if n else None
                floor = {"int8_floor": min(round(plain_worst + args.floor_gap, 6), 0.999999)} \
                    if name == floor_row else {}
                graph = OpenVINOGraph.from_graph_def(graph_def, sha, precision=precision,
                                                     cache_dir=Path(tmp) / "openvino", calibration=calibration,
                                                     preprocess=reference.preprocess, recipe=recipe, **floor)
                setup = time.perf_counter() - started
                checked = graph.info.get("int8_fidelity") or {}
                if name == plain:
                    plain_worst = checked["worst_cosine"]
                if precision == "int8":
                    print(f"  {set_name:<7} {name:<40} on the {checked.get('images')} checked images: worst "
                          f"{checked.get('worst_cosine')} (floor {checked.get('floor')}), "
                          f"{len(checked.get('kept_float') or [])} op(s) take float inputs"
                          + (f", {checked['kept_float_seconds']} s to choose them (worst before "
                             f"{checked['before_kept_float']['worst_cosine']})" if checked.get("kept_float_seconds")
                             is not None else ""), flush=True)
                output = graph.run(inputs)
                found = cosines(output, expected)
                exact = kernels = None
                if precision == "int8":
                    exact_output = exact_int8(graph, inputs)
                    exact = cosines(exact_output, expected)
                    kernels = cosines(output, exact_output)  # what this CPU's int8 kernels lose on their own
                if set_name == "photos":  # timed below, all variants interleaved
                    graphs[name] = graph
                else:
                    graph.close()
                cos, worst = np.sort(found), files[int(np.argmin(found))].relative_to(folder)
                rows[name][set_name] = cos
                rows[name][set_name + " exact"] = np.sort(exact) if exact is not None else None
                simulated = f"; exact int8 worst {np.min(exact):.5f}, mean {np.mean(exact):.5f}; kernels " \
                    f"against exact worst {np.min(kernels):.5f}" if exact is not None else ""
                print(f"  {set_name:<7} {name:<40} worst {cos[0]:.5f} ({worst}), 2nd {cos[1]:.5f}, "
                      f"mean {cos.mean():.5f}{simulated}  (setup {setup:.0f} s)", flush=True)
            if graphs:
                speeds = rates(graphs, inputs, args.rounds)
                for graph in graphs.values():
                    graph.close()
    reference.close()

    print(f"\nper-image cosine to TensorFlow fp32, {args.images} images per set; speed: the featurizer alone on "
          f"the photos, batches of 32, median of {args.rounds} interleaved passes")
    print(f"{'variant':<40} {'photos worst/mean':>17} {'drawn worst/2nd/mean':>25} {'img/s':>6} "
          f"{'x old':>6} {'x fp32':>6}  exact int8 worst: photos / drawn")
    for name, _, _, n in variants:
        photos, drawn = rows[name]["photos"], rows[name]["drawn"]
        old_name = f"int8 old ({old}), calib {n}" if n else None  # vnni and floor rows too: against this CPU's
        ratio = f"{speeds[name] / speeds[old_name]:6.2f}" if old_name else f"{'':>6}"
        exact = rows[name]["photos exact"], rows[name]["drawn exact"]
        simulated = f"  {exact[0][0]:.5f} / {exact[1][0]:.5f}" if exact[0] is not None else ""
        print(f"{name:<40} {photos[0]:.5f}/{photos.mean():.5f} {drawn[0]:.5f}/{drawn[1]:.5f}/{drawn.mean():.5f} "
              f"{speeds[name]:6.1f} {ratio} {speeds[name] / speeds['OpenVINO fp32']:6.2f}{simulated}")


if __name__ == "__main__":
    main()
