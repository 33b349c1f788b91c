"""`imgclf demo`: the main job on its built-in default, offline.

Generates the demo image set, picks a featurizer graph — the real Inception-v3
graph when it has been fetched, else a seeded random-weight graph with the same
interface (said loudly: its features are not ImageNet features) — and
featurizes the set into a cache, printing the summary.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from featurizer.paths import imgclf_home, inception_dir

log = logging.getLogger(__name__)

REAL_GRAPH_NAME = "tensorflow_inception_graph.pb"
RANDOM_GRAPH_NAME = "inception_v3_random_seed0.pb"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf demo`."""
    p = sub.add_parser("demo", help="run the whole job on a built-in demo image set (offline)",
                       description="Generate a small demo image set, then featurize it with the real "
                                   "Inception-v3 graph if fetched, else a seeded random-weight graph.")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the demo images, graph and cache live (default: $IMGCLF_HOME/demo)")
    p.add_argument("--per-class", type=int, default=24, help="demo images per class (default: %(default)s)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="featurizer precision (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)


def demo_graph(workdir: Path) -> tuple[Path, bool]:
    """Return (graph path, is_real): the fetched real graph, else a random-weight one (exported once)."""
    real = inception_dir() / REAL_GRAPH_NAME
    if real.exists():
        return real, True
    random_graph = workdir / RANDOM_GRAPH_NAME
    if not random_graph.exists():
        from featurizer.export_inception import export_inception

        log.warning("building a random-weight Inception-v3 graph once (about a minute) at %s", random_graph)
        export_inception(random_graph, weights="random", seed=0)
    return random_graph, False


def cmd_demo(args: argparse.Namespace) -> int:
    """Run `imgclf demo`."""
    from featurizer.demo_images import write_demo_images
    from featurizer.extractor import FeaturizerConfig
    from featurizer.featurize_job import FeaturizeJob, run_featurize

    if args.per_class < 3:
        raise ValueError(f"--per-class must be at least 3; received {args.per_class}")
    workdir = (args.workdir or imgclf_home() / "demo").expanduser()
    images = write_demo_images(workdir / "images", per_class=args.per_class)
    graph, real = demo_graph(workdir)
    if not real:
        print("NOTICE: using a seeded RANDOM-WEIGHT Inception-v3 graph (the real one is not fetched; "
              "run `imgclf fetch-inception` online for ImageNet features).")
    job = FeaturizeJob(image_dir=images, featurizer=FeaturizerConfig(graph=graph, precision=args.precision),
                       cache=workdir / "features.sqlite", output=workdir / "features.npz",
                       report=workdir / "featurize-report.json", progress=False if args.quiet else None)
    summary = run_featurize(job)
    print(summary.format())
    print(f"features: {job.output}\nreport:   {job.report}")
    return 0 if summary.featurized else 1
