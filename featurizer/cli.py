"""The featurizer's subcommands: featurize, fetch-inception, export-inception, inspect.

Each handler imports what it needs when it runs, so `imgclf --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from imgclf.core.cli import add_deprecated_alias
from imgclf.core.errors import UsageError
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT
from imgclf.featurizer.images.decode import DECODE_MODES, DEFAULT_DECODE, DEFAULT_MAX_PIXELS
from imgclf.featurizer.runtime.backend import (
    BACKENDS,
    DEFAULT_BACKEND,
    FEATURIZER_PRECISIONS,
    INSTALL_HINT,
    requested_backend,
)
from imgclf.featurizer.runtime.calibration import DEFAULT_CALIBRATION_IMAGES
from imgclf.featurizer.runtime.openvino import INT8_FIDELITY_FLOOR, INT8_FIDELITY_IMAGES, check_int8_floor


def add_featurizer_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose and run a featurizer graph (shared by `featurize` and `train`)."""
    group = parser.add_argument_group("featurizer graph")
    group.add_argument("--graph", type=Path, required=True,
                       help="frozen Inception-v3 GraphDef (.pb): the real tensorflow_inception_graph.pb "
                            "(imgclf fetch-inception) or one from imgclf export-inception")
    group.add_argument("--precision", choices=FEATURIZER_PRECISIONS, default=None,
                       help="auto = fp16 on a GPU of compute capability >= 7.0, bf16 on a CPU with "
                            "AMX/AVX512_BF16, else fp32; int8 (OpenVINO only: alone, it implies --backend "
                            "openvino) quantizes the graph, calibrated on the folder's own images (default: auto; "
                            "train --features: the precision the dataset holds)")
    group.add_argument("--decode", choices=DECODE_MODES, default=DEFAULT_DECODE,
                       help="exact = decode every pixel; fast = let the JPEG decoder scale large photos down by "
                            "DCT (1/2, 1/4, 1/8, keeping both sides >= 2x the network input) before the same "
                            "resize: phone photos decode several times faster; recorded in the model card and "
                            "served the same way (default: %(default)s)")
    group.add_argument("--backend", choices=BACKENDS, default=None,
                       help="runtime of the graph: tensorflow, openvino (needs " + INSTALL_HINT.replace("%", "%%")
                            + "), or auto = OpenVINO on an x86 CPU when installed, else TensorFlow "
                            f"(default: {DEFAULT_BACKEND}; openvino with --precision int8; train --features: the "
                            "backend the dataset holds)")
    group.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                       help="int8: calibrate on this many images of the folder (default: %(default)s)")
    group.add_argument("--int8-floor", type=float, default=INT8_FIDELITY_FLOOR,
                       help=f"int8: the worst cosine to fp32 the int8 featurizer keeps on the first "
                            f"{INT8_FIDELITY_IMAGES} calibration images, on this CPU; the layers that lose the most "
                            "stay float until it holds (0: only measure it; default: %(default)s)")
    group.add_argument("--openvino-cache", type=Path,
                       help="where converted OpenVINO models are cached (default: $IMGCLF_HOME/openvino)")
    group.add_argument("--image-tensor", default=DEFAULT_CONTRACT.image_input,
                       help="normalised image tensor the batches are fed to (default: %(default)s)")
    group.add_argument("--bottleneck-tensor", default=DEFAULT_CONTRACT.bottleneck,
                       help="batched bottleneck tensor (default: %(default)s)")
    group.add_argument("--intra-op-threads", type=int, default=0,
                       help="threads inside one TensorFlow op (default: 0 = all usable CPUs)")
    # ThreadConfig().inter_op, pinned by a test: imgclf.featurizer.graph.load imports TensorFlow, too slow for --help.
    group.add_argument("--inter-op-threads", type=int, default=1,
                       help="TensorFlow ops run side by side; more oversubscribes the cores that "
                            "--intra-op-threads already uses (default: %(default)s; 0 = TensorFlow picks)")
    group.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                       help="refuse images with more pixels, checked before decoding (default: %(default)s)")
    group.add_argument("--allow-unsafe-ops", action="store_true",
                       help="load a graph even if it holds ops outside imgclf's inference allow-list (file, "
                            "process or network ops); a graph is a program: only for graphs you trust")


def featurizer_config_from_args(args: argparse.Namespace, precision: str | None = None, backend: str | None = None):
    """Build a FeaturizerConfig from the options of :func:`add_featurizer_options`.

    ``precision`` and ``backend`` stand for flags that were not given (``train --features`` passes what the
    dataset holds); a flag given wins. Without either: precision auto, and the backend int8 implies or
    the default one.

    Raises:
        UsageError: a value out of range, or ``--precision int8 --backend tensorflow``.
    """
    check_featurizer_args(args)
    from imgclf.featurizer.graph.load import ThreadConfig  # TensorFlow: after the arguments are checked
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig

    contract = DEFAULT_CONTRACT.with_overrides(image_input=args.image_tensor, bottleneck=args.bottleneck_tensor,
                                               decode=getattr(args, "decode", None))
    precision = args.precision or precision or "auto"
    backend = requested_backend(precision, args.backend or backend)
    return FeaturizerConfig(graph=args.graph, contract=contract, precision=precision,
                            threads=ThreadConfig(args.intra_op_threads, args.inter_op_threads),
                            max_pixels=args.max_pixels, allow_unsafe_ops=args.allow_unsafe_ops,
                            backend=backend, calibration_images=args.calibration_images,
                            int8_floor=args.int8_floor,
                            openvino_cache=args.openvino_cache)


def check_featurizer_args(args: argparse.Namespace) -> None:
    """Raise UsageError for an option of :func:`add_featurizer_options` out of range, or a --graph that is no file.

    Imports nothing heavy: a bad argument is answered before TensorFlow loads.
    """
    for name in ("intra_op_threads", "inter_op_threads"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more; received {getattr(args, name)}")
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels must be positive; received {args.max_pixels}")
    if args.calibration_images < 1:
        raise UsageError(f"--calibration-images must be at least 1; received {args.calibration_images}")
    try:
        check_int8_floor(args.int8_floor)
    except UsageError:
        raise UsageError(f"--int8-floor is a cosine from 0 (no floor) up to, not including, 1; received "
                         f"{args.int8_floor}") from None
    requested_backend(args.precision or "auto", args.backend)  # int8 with --backend tensorflow
    check_file(args.graph, "--graph")


def check_file(path: Path, option: str) -> Path:
    """Return ``path`` if it is a readable file, else raise UsageError naming ``option`` (exit 2, nothing loaded)."""
    if not path.expanduser().is_file():
        why = "is a folder" if path.expanduser().is_dir() else "does not exist"
        raise UsageError(f"{option} {str(path)!r} {why}: give a file")
    if not os.access(path.expanduser(), os.R_OK):
        raise UsageError(f"{option} {str(path)!r} cannot be read (permission denied)")
    return path


def check_image_dir(image_dir: str | Path) -> None:
    """Raise UsageError when IMAGE_DIR (a local path; object-store URIs are checked by their job) is no folder."""
    from imgclf.featurizer.store.object_store import is_uri

    if not is_uri(image_dir) and not Path(image_dir).expanduser().is_dir():
        why = "is a file" if Path(image_dir).expanduser().exists() else "does not exist"
        raise UsageError(f"IMAGE_DIR {str(image_dir)!r} {why}: give a folder with one sub-folder per class")


def check_batch_size(value: int, option: str = "--batch-size") -> int:
    """Return ``value`` if it is at least 1, else raise UsageError naming ``option``."""
    if value < 1:
        raise UsageError(f"{option} must be at least 1; received {value}")
    return value


def check_decode_threads(value: int) -> int:
    """Return ``value`` of ``--decode-threads`` if it is 0 or more, else raise ValueError."""
    if value < 0:
        raise UsageError(f"--decode-threads must be 0 (one per usable CPU) or more; received {value}")
    return value


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """Add `featurize`'s feature-dataset and engine options (--output-dataset, --engine ray, ...)."""
    g = parser.add_argument_group("feature dataset and engine (pip install 'imgclf[ray]')")
    g.add_argument("--output-dataset", metavar="DEST",
                   help="write a Parquet feature dataset to this folder or s3://, gs:// URI; it plays the "
                        "cache's role: a rerun featurizes only images whose sha256 it lacks")
    g.add_argument("--shard-rows", type=int, default=1024,
                   help="rows per Parquet shard, each written atomically (default: %(default)s)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local = this process (default); ray = Ray Data tasks read and decode, an actor pool "
                        "runs the graph (needs --output-dataset)")
    g.add_argument("--ray-address", metavar="ADDRESS",
                   help="Ray cluster: auto (the one started on this machine), HOST:PORT or ray://HOST:PORT "
                        "(default: a local Ray instance for this job)")
    g.add_argument("--actors", type=int, help="graph actors, fixed (default: 1)")
    g.add_argument("--min-actors", type=int, help="autoscaling actor pool: at least this many")
    g.add_argument("--max-actors", type=int, help="autoscaling actor pool: at most this many")
    g.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per graph actor (default: 0)")
    g.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per graph actor (default: 1)")


def check_dataset_options(args: argparse.Namespace) -> None:
    """Raise UsageError for a combination of cache, dataset and engine options that cannot work."""
    from imgclf.featurizer.store.object_store import is_uri

    if args.output_dataset is None:
        if args.cache is None:
            raise UsageError("give --cache (a SQLite feature cache) or --output-dataset (a feature dataset)")
        if args.engine == "ray":
            raise UsageError("--engine ray writes a feature dataset: give --output-dataset DEST")
        if is_uri(args.image_dir):
            raise UsageError(f"an object-store IMAGE_DIR ({args.image_dir}) needs --output-dataset DEST")
    elif args.cache is not None:
        raise UsageError("--cache and --output-dataset exclude each other: the dataset is the cache")
    if args.shard_rows < 1:
        raise UsageError(f"--shard-rows must be at least 1; received {args.shard_rows}")
    ray_only = [f"--{name.replace('_', '-')}" for name in ("ray_address", "actors", "min_actors", "max_actors")
                if getattr(args, name) is not None]
    if args.engine != "ray" and ray_only:
        raise UsageError(f"{', '.join(ray_only)} need --engine ray")
    if args.actors is not None and (args.min_actors is not None or args.max_actors is not None):
        raise UsageError("--actors (a fixed pool) and --min-actors/--max-actors (autoscaling) exclude each other")
    for name in ("actors", "min_actors", "max_actors"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1; received {value}")
    if (args.min_actors is None) != (args.max_actors is None):
        raise UsageError("--min-actors and --max-actors go together")
    if args.min_actors is not None and args.min_actors > args.max_actors:
        raise UsageError(f"--min-actors ({args.min_actors}) is more than --max-actors ({args.max_actors})")
    if args.gpus_per_actor < 0 or args.cpus_per_actor < 0:
        raise UsageError("--gpus-per-actor and --cpus-per-actor must be 0 or more")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the featurizer's subcommands to the `imgclf` parser."""
    p = sub.add_parser("featurize", help="extract and cache bottleneck features of a labelled image folder",
                       description="Turn every image of IMAGE_DIR/<class>/ into a cached bottleneck vector. "
                                   "Bad files are skipped and reported; a rerun is served from the cache.")
    p.add_argument("image_dir", metavar="IMAGE_DIR",
                   help="folder with one sub-folder per class, or with --output-dataset an object-store "
                        "prefix in the same layout (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX)")
    add_featurizer_options(p)
    p.add_argument("--cache", type=Path, help="SQLite feature cache (created when missing); "
                                              "required unless --output-dataset")
    p.add_argument("--output", type=Path, help="also write paths, labels, label_names, features to this .npz")
    add_dataset_options(p)
    p.add_argument("--report", type=Path, help="write a JSON report (counts, skipped files and reasons)")
    p.add_argument("--batch-size", type=int, default=32, help="images per graph run and commit (default: %(default)s)")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="image decoding threads (default: 0 = one per usable CPU)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object (counts, skipped files, featurizer, timings)")
    p.set_defaults(func=cmd_featurize)

    p = sub.add_parser("fetch-inception", help="download the real Inception-v3 graph (inception_dec_2015.zip)",
                       description="Download inception_dec_2015.zip, verify it holds a loadable graph with the "
                                   "expected tensors, and unpack it into the cache directory.")
    p.add_argument("--output", type=Path, metavar="DIR",
                   help="folder to unpack into (default: $IMGCLF_HOME/inception)")
    add_deprecated_alias(p, "--dest", "--output")
    p.add_argument("--url", help="download from this URL instead of the official one")
    p.add_argument("--from-file", type=Path, help="use a zip downloaded elsewhere instead of the network")
    p.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="download again even when the graph is there")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("export-inception", help="write a graph with the 2015 interface from Keras Inception-v3",
                       description="Write a frozen graph with the tensor names of tensorflow_inception_graph.pb "
                                   "(JPEG bytes in, 2048-d pool_3 out) from the Keras Inception-v3 architecture.")
    p.add_argument("--output", type=Path, metavar="FILE", help="where to write the .pb (required)")
    add_deprecated_alias(p, "--out", "--output")
    p.add_argument("--weights", default="random",
                   help="'random' (seeded), 'imagenet' (Keras' download, needs network) or a local Keras "
                        "weights file (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default: %(default)s)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="describe a frozen graph: ops, inputs, likely image and bottleneck tensors",
                       description="Describe a frozen graph without running it. Ops outside imgclf's inference "
                                   "allow-list are listed; featurize, train and serve refuse such graphs unless "
                                   "--allow-unsafe-ops.")
    p.add_argument("graph", type=Path, metavar="GRAPH", help="frozen GraphDef (.pb)")
    p.add_argument("--all", action="store_true", help="list every node with its op and output shapes")
    p.add_argument("--logdir", type=Path, help="also write the graph for TensorBoard's graph view here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)


def cmd_featurize(args: argparse.Namespace) -> int:
    """Run `imgclf featurize`."""
    check_batch_size(args.batch_size)
    check_dataset_options(args)
    check_decode_threads(args.decode_threads)
    check_featurizer_args(args)
    check_image_dir(args.image_dir)
    # TensorFlow loads from here on: every argument above was checked without it
    from imgclf.featurizer.jobs.featurize import FeaturizeJob, run_featurize
    from imgclf.featurizer.store.object_store import is_uri

    job = FeaturizeJob(image_dir=args.image_dir if is_uri(args.image_dir) else Path(args.image_dir),
                       featurizer=featurizer_config_from_args(args), cache=args.cache,
                       output=args.output, report=args.report, batch_size=args.batch_size,
                       decode_threads=args.decode_threads, progress=False if args.quiet or args.json else None,
                       output_dataset=args.output_dataset, shard_rows=args.shard_rows)
    if args.engine == "ray":
        from imgclf.featurizer.jobs.ray_engine import RayOptions, run_featurize_ray

        summary = run_featurize_ray(job, RayOptions.from_args(args))
    else:
        summary = run_featurize(job)
    if args.json:
        print(json.dumps({**summary.to_dict(), "output": None if args.output is None else str(args.output),
                          "output_dataset": args.output_dataset}, indent=2))
    else:
        print(summary.format())
    if not summary.featurized:
        print("imgclf featurize: error: no image could be featurized", file=sys.stderr)
        return 1
    if args.json:
        return 0
    if args.output:
        print(f"features written to {args.output}")
    if args.output_dataset:
        print(f"feature dataset: {args.output_dataset}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Run `imgclf fetch-inception`."""
    from imgclf.featurizer.graph.fetch import DEFAULT_URL, fetch_inception

    path = fetch_inception(args.output, args.url or DEFAULT_URL, from_file=args.from_file, timeout=args.timeout,
                           progress=False if args.quiet else None, force=args.force)
    print(f"Inception-v3 graph ready: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Run `imgclf export-inception`."""
    if args.output is None:  # not argparse's required=: the deprecated --out would not count
        raise UsageError("the following arguments are required: --output")
    if args.weights not in ("random", "imagenet"):
        check_file(Path(args.weights), "--weights")
    from imgclf.featurizer.graph.export import export_inception

    info = export_inception(args.output, weights=args.weights, seed=args.seed)
    print(json.dumps(info, indent=2))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Run `imgclf inspect`."""
    check_file(args.graph, "GRAPH")
    from imgclf.featurizer.graph.inspect import format_report, inspect_graph, write_tensorboard_graph

    report = inspect_graph(args.graph, show_all=args.all)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    if args.logdir:
        event_file = write_tensorboard_graph(args.graph, args.logdir)
        print(f"graph written for TensorBoard: {event_file}\n  tensorboard --logdir {args.logdir}")
    return 0

