"""The secondary models' subcommands: `imgclf models train` and `imgclf models fetch-mnist`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from imgclf.core.cli import add_deprecated_alias
from imgclf.core.errors import UsageError
from imgclf.core.paths import MODEL_REPOSITORY_HELP, model_repository
from imgclf.models.config import MODEL_NAMES, SPECS, STRATEGIES, net_with, spec_for
from imgclf.training.config import OPTIMIZERS, train_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf models …` to the `imgclf` parser."""
    p = sub.add_parser("models", help="train the secondary models (quadratic, MNIST MLP, LeNet-5); fetch MNIST",
                       description="The secondary models served beside the image classifiers: a quadratic "
                                   "curve fit, an MNIST MLP and LeNet-5.")
    add_subcommands(p)


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add `train` and `fetch-mnist` under ``parser``."""
    msub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    _add_train(msub)
    _add_fetch(msub)


def _defaults_text() -> str:
    lines = ["defaults per model (epochs, batch, learning rate [adam], decay per epoch):"]
    for spec in SPECS.values():
        t = train_config(spec.name)
        lines.append(f"  {spec.name:10} {t.epochs} epochs, batch {t.batch_size}, lr {t.learning_rate:g} "
                     f"[{spec.adam_learning_rate:g}], decay {t.decay_rate:g}: {spec.description}")
    return "\n".join(lines)


def _add_train(msub) -> None:
    p = msub.add_parser(
        "train", help="train a secondary model and export it as a new version",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train MODEL (resuming from its checkpoint when the same command ran before), print test "
                    "metrics, and export MODEL_DIR/NAME/<next version>/ (a SavedModel with one "
                    "serving_default signature, labels.txt, model_card.json).",
        epilog=_defaults_text())
    p.add_argument("model", choices=MODEL_NAMES, metavar="MODEL", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--model-dir", type=Path, default=None, metavar="DIR", help=MODEL_REPOSITORY_HELP)
    p.add_argument("--data", type=Path,
                   help="digits: mnist.npz in Keras' layout (default: $IMGCLF_HOME/data/mnist.npz)")
    p.add_argument("--name", help="model name in the repository (default: the model's name)")
    p.add_argument("--logdir", type=Path, help="TensorBoard run directory (default: MODEL_DIR/NAME/runs/<time>)")
    p.add_argument("--checkpoint-dir", type=Path,
                   help="checkpoints; a run finding one there resumes from it (default: "
                        "MODEL_DIR/NAME/checkpoints/<model>-<hash of the settings>)")

    g = p.add_argument_group("training (defaults depend on the model: see below)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--train-batch-size", type=int,
                   help="global mini-batch of training examples, split evenly across replicas")
    add_deprecated_alias(g, "--batch-size", "--train-batch-size")
    g.add_argument("--learning-rate", type=float, help="initial rate of the exponential decay")
    g.add_argument("--decay-rate", type=float, help="rate multiplier per --decay-epochs (1 = constant)")
    decay = g.add_mutually_exclusive_group()
    decay.add_argument("--decay-epochs", type=float, help="decay period in epochs (default: 1)")
    decay.add_argument("--decay-steps", type=int, help="decay period in optimizer steps instead of epochs")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd = plain gradient descent (default)")
    g.add_argument("--ema-decay", type=float,
                   help="evaluate and export an exponential moving average of the weights, e.g. 0.99 "
                        "(default: off)")
    g.add_argument("--dropout", type=float, help="digits: dropout before the output layer (default: 0)")
    g.add_argument("--validation-size", type=int,
                   help="digits: the last N training images are the validation set (default: 5000, or a "
                        "twelfth of a smaller training set)")
    g.add_argument("--checkpoint-epochs", type=int, help="save a checkpoint every N epochs (default: 1; "
                                                         "quadratic 50)")
    g.add_argument("--seed", type=int, help="seeds weights, dropout and batch order (default: 0)")

    g = p.add_argument_group("distribution")
    g.add_argument("--strategy", choices=STRATEGIES, default="default",
                   help="tf.distribute strategy (default: %(default)s)")
    g.add_argument("--cluster", type=Path,
                   help="multiworker: YAML {job_name: worker, worker_hosts, ps_hosts, task_id} "
                        "instead of TF_CONFIG")
    g.add_argument("--cpu-devices", type=int,
                   help="split the CPU into N logical devices (mirrored without GPUs; default: "
                        "$IMGCLF_CPU_DEVICES or none)")
    g.add_argument("--save-weights", type=Path,
                   help="also write the final weights to this .npz (every worker; to compare replicas)")
    p.set_defaults(func=cmd_train)


def _add_fetch(msub) -> None:
    from imgclf.models.fetch_mnist import DEFAULT_URL, SHA256

    p = msub.add_parser(
        "fetch-mnist", help="download, verify and install mnist.npz",
        description="Download Keras' mnist.npz, check its sha256 and arrays, and install it atomically "
                    "(default: $IMGCLF_HOME/data/mnist.npz). Offline it fails at once and says how to "
                    "place the file by hand.")
    p.add_argument("--output", type=Path, help="file (or folder) to install to (default: $IMGCLF_HOME/data/mnist.npz)")
    add_deprecated_alias(p, "--dest", "--output")
    p.add_argument("--url", default=DEFAULT_URL, help="default: %(default)s")
    p.add_argument("--from-file", type=Path, help="check and install a local copy instead of downloading")
    p.add_argument("--sha256", default=SHA256, help="expected checksum (default: Keras' file, %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="fetch again even when installed")
    p.set_defaults(func=cmd_fetch_mnist)


class _EpochPrinter:
    """Print one line per epoch, at most about one a second (the quadratic's epochs take milliseconds)."""

    def __init__(self):
        self.last = 0.0
        self.started = time.monotonic()
        self.first_epoch = None

    def __call__(self, row: dict) -> None:
        now = time.monotonic()
        if self.first_epoch is None:
            self.first_epoch, self.started = row["epoch"], now - row["seconds"]
        if now - self.last < 1.0 and row["epoch"] not in (1, row["epochs"]):
            return
        self.last = now
        done = row["epoch"] - self.first_epoch + 1
        eta = (now - self.started) / done * (row["epochs"] - row["epoch"])
        figures = [f"loss {row['train_loss']:.4g}"]
        if "train_rmse" in row:
            figures.append(f"rmse {row['train_rmse']:.4g}")
        if "train_accuracy" in row:
            figures.append(f"accuracy {row['train_accuracy']:.4f}")
        if "val_accuracy" in row:
            figures += [f"val_loss {row['val_loss']:.4g}", f"val_accuracy {row['val_accuracy']:.4f}"]
        figures += [f"lr {row['learning_rate']:.3g}", f"{row['seconds']:.2f} s/epoch", f"eta {eta:.0f} s"]
        print(f"epoch {row['epoch']}/{row['epochs']} (step {row['steps']}): {', '.join(figures)}", flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    """Run `imgclf models train`."""
    from imgclf.core.repository import validate_name

    config = train_config(args.model, epochs=args.epochs, batch_size=args.train_batch_size,
                          learning_rate=args.learning_rate, decay_rate=args.decay_rate,
                          decay_epochs=args.decay_epochs, optimizer=args.optimizer, ema_decay=args.ema_decay,
                          seed=args.seed, validation_size=args.validation_size,
                          checkpoint_epochs=args.checkpoint_epochs)
    if args.decay_steps is not None:  # a period in steps: the model's default period in epochs gives way
        config.decay_steps, config.decay_epochs = args.decay_steps, None
    config.validate()
    net_with(spec_for(args.model), args.dropout)  # --dropout: digit models only, in [0, 1)
    if args.name is not None:
        validate_name(args.name)
    for option, path in (("--data", args.data), ("--cluster", args.cluster)):
        if path is not None and not path.expanduser().is_file():
            raise UsageError(f"{option} {str(path)!r} is not a file")
    # TensorFlow loads from here on: every argument above was checked without it
    from imgclf.training.models_job import ModelsTrainJob, run_models_train

    job = ModelsTrainJob(model=args.model, model_dir=model_repository(args.model_dir), train=config, name=args.name,
                         data=args.data, dropout=args.dropout, strategy=args.strategy, cluster=args.cluster,
                         cpu_devices=args.cpu_devices, logdir=args.logdir, checkpoint_dir=args.checkpoint_dir,
                         save_weights=args.save_weights)
    outcome = run_models_train(job, on_epoch=None if args.quiet else _EpochPrinter())
    fit, training = outcome.fit, outcome.card["training"]
    if fit.resumed_from_epoch:
        print(f"resumed from the checkpoint at epoch {fit.resumed_from_epoch} in {training['checkpoint_dir']}")
    splits = outcome.card["splits"]
    print(f"{args.model}: {splits['train']} train, {splits['validation']} validation, {splits['test']} test "
          f"examples; {fit.steps} steps over {fit.replicas} replica(s) x {outcome.role.num_workers} worker(s) "
          f"in {fit.seconds:.1f} s")
    for split in ("train", "validation", "test"):
        if split in outcome.metrics:
            shown = ", ".join(f"{k} {v:.6g}" for k, v in outcome.metrics[split].items())
            print(f"{split}: {shown}")
    if outcome.version_dir is not None:
        print(f"exported {outcome.version_dir}")
    else:
        print(f"worker {outcome.role.task_id}: done (the chief exports)")
    return 0


def cmd_fetch_mnist(args: argparse.Namespace) -> int:
    """Run `imgclf models fetch-mnist`."""
    from imgclf.models.fetch_mnist import fetch_mnist

    path = fetch_mnist(args.output, args.url, sha256=args.sha256 or None, from_file=args.from_file,
                       timeout=args.timeout, progress=False if args.quiet else None, force=args.force)
    print(f"MNIST at {path}")
    return 0
