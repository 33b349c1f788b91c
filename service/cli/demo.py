"""`imgclf demo`: the main job on its built-in default, offline.

Generates the demo image set, picks a featurizer graph — the real Inception-v3
graph when it has been fetched, else a seeded random-weight graph with the same
interface (said loudly: its features are not ImageNet features) — featurizes
the set into a cache, trains and exports the demo model (once), and shows what
it predicts for newly drawn pictures of each class.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imgclf.core.errors import UsageError
from imgclf.core.paths import imgclf_home, inception_dir
from imgclf.core.precision import PRECISIONS
from imgclf.service.cli import serve as serve_cli

log = logging.getLogger(__name__)

REAL_GRAPH_NAME = "tensorflow_inception_graph.pb"
RANDOM_GRAPH_NAME = "inception_v3_random_seed0.pb"
DEMO_MODEL = "demo"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf demo`."""
    p = sub.add_parser("demo", help="run the whole job on a built-in demo image set (offline)",
                       description="Generate a small demo image set, featurize it with the real "
                                   "Inception-v3 graph if fetched (else a seeded random-weight graph), train "
                                   "and export a demo model, and predict new pictures with it.")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the demo images, graph and cache live (default: $IMGCLF_HOME/demo)")
    p.add_argument("--per-class", type=int, default=24, help="demo images per class (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="featurizer precision (default: %(default)s)")
    p.add_argument("--retrain", action="store_true", help="train a new demo model version even if one exists")
    p.add_argument("--no-secondary", action="store_true",
                   help="do not train the secondary models (the quadratic always, ~10 s; mnist-mlp when "
                        "mnist.npz is installed)")
    g = p.add_argument_group("serving")
    g.add_argument("--serve", action="store_true",
                   help="then serve the demo model over HTTP, as `imgclf serve --model-dir WORKDIR/models` would")
    serve_cli.add_server_options(g)
    p.set_defaults(func=cmd_demo)


def demo_graph(workdir: Path) -> tuple[Path, bool]:
    """Return (graph path, is_real): the fetched real graph, else a random-weight one (exported once)."""
    real = inception_dir() / REAL_GRAPH_NAME
    if real.exists():
        return real, True
    random_graph = workdir / RANDOM_GRAPH_NAME
    if not random_graph.exists():
        from imgclf.featurizer.graph.export import export_inception

        log.warning("building a random-weight Inception-v3 graph once (about a minute) at %s", random_graph)
        export_inception(random_graph, weights="random", seed=0)
    return random_graph, False


def cmd_demo(args: argparse.Namespace) -> int:
    """Run `imgclf demo`."""
    if args.per_class < 3:
        raise UsageError(f"--per-class must be at least 3; received {args.per_class}")
    serve_cli.check_server_options(args.workers, args.threads)
    # TensorFlow loads from here on: every argument above was checked without it
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.jobs.featurize import FeaturizeJob, run_featurize
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig

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
    if not summary.featurized:
        return 1
    model_dir = workdir / "models"
    version_dir = train_demo_model(images, job, model_dir, retrain=args.retrain)
    check_demo_model(version_dir)
    if not args.no_secondary:
        train_secondary_demo(model_dir)
    print(f"model:    {version_dir}\n"
          f"try:      imgclf predict --model {model_dir / DEMO_MODEL} {images / 'sunsets' / 'sunsets_000.jpg'}")
    if args.serve:
        # This process has TensorFlow loaded; exec gives gunicorn a fresh one (its master must not have it).
        serve_cli.exec_gunicorn(model_dir, args.bind, args.workers, args.threads)
    return 0


def train_demo_model(images: Path, job, model_dir: Path, retrain: bool = False) -> Path:
    """Train and export the demo model unless a version exists; return the newest version's directory."""
    from imgclf.core.repository import list_versions, resolve
    from imgclf.training.train_job import TrainJob, run_train

    if list_versions(model_dir, DEMO_MODEL) and not retrain:
        return resolve(model_dir / DEMO_MODEL)
    outcome = run_train(TrainJob(image_dir=images, featurizer=job.featurizer, cache=job.cache,
                                 model_dir=model_dir, name=DEMO_MODEL, progress=job.progress))
    print(outcome.table)
    return outcome.version_dir


def train_secondary_demo(model_dir: Path) -> None:
    """Train the secondary models the demo can (once each), so the page shows them too.

    The quadratic needs no data. The MNIST MLP is trained when mnist.npz is
    installed (`imgclf models fetch-mnist`); LeNet-5 takes minutes on a CPU, so
    the demo only prints the command.
    """
    from imgclf.core.repository import list_versions
    from imgclf.models.mnist import default_mnist_path
    from imgclf.training.config import train_config
    from imgclf.training.models_job import ModelsTrainJob, run_models_train

    if not list_versions(model_dir, "quadratic"):
        outcome = run_models_train(ModelsTrainJob("quadratic", model_dir, train_config("quadratic")))
        print(f"quadratic: test RMSE {outcome.metrics['test']['rmse']:.3f} -> {outcome.version_dir}")
    mnist = default_mnist_path()
    if not mnist.is_file():
        print(f"digits:   no {mnist} (run `imgclf models fetch-mnist` online); the MNIST models are not trained")
    elif not list_versions(model_dir, "mnist-mlp"):
        outcome = run_models_train(ModelsTrainJob("mnist-mlp", model_dir, train_config("mnist-mlp"), data=mnist))
        print(f"mnist-mlp: test accuracy {outcome.metrics['test']['accuracy']:.4f} -> {outcome.version_dir}")
    if mnist.is_file() and not list_versions(model_dir, "lenet5"):
        print(f"lenet5:   imgclf models train lenet5 --model-dir {model_dir}   (minutes on a CPU)")


def check_demo_model(version_dir: Path) -> None:
    """Predict one newly drawn picture of every demo class and print what the model says."""
    import numpy as np

    from imgclf.featurizer.images.demo import DEMO_CLASSES, make_demo_image
    from imgclf.training.classifier import load_model

    model = load_model(version_dir)
    rng = np.random.default_rng(2026)  # pictures the model has not seen
    pictures = [np.asarray(make_demo_image(label, rng)) for label in DEMO_CLASSES]
    probabilities = model.predict_rgb(pictures)
    print("new pictures:")
    for label, probs in zip(DEMO_CLASSES, probabilities):
        best = int(np.argmax(probs))
        mark = "ok" if model.labels[best] == label else "WRONG"
        print(f"  a new {label:<9} picture -> {model.labels[best]:<9} {probs[best]:.3f}  {mark}")
