"""The training subcommand: `imgclf train`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imgclf.core.errors import CandidateRejected, UsageError, exit_status
from imgclf.core.paths import MODEL_REPOSITORY_HELP, model_repository
from imgclf.featurizer.cli import (
    add_featurizer_options,
    check_batch_size,
    check_decode_threads,
    check_featurizer_args,
    check_image_dir,
    featurizer_config_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf train` to the `imgclf` parser."""
    p = sub.add_parser(
        "train", help="featurize, split, train a dense head, evaluate and export a new model version",
        description="Featurize IMAGE_DIR/<class>/ (reusing the cache), split it by a stable hash of each "
                    "path, train a dense head on the bottlenecks, print test metrics and export "
                    "MODEL_DIR/NAME/<next version>/ when the candidate passes the publish gate (else keep it "
                    "in MODEL_DIR/NAME/rejected/<UTC time>/ and exit 3).")
    p.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", nargs="?",
                   help="folder with one sub-folder per class (or --features instead)")
    add_featurizer_options(p)
    p.add_argument("--cache", type=Path, help="SQLite feature cache (created when missing); required with IMAGE_DIR")
    p.add_argument("--features", metavar="DEST",
                   help="train from a feature dataset (folder or s3://, gs:// URI) written by imgclf featurize "
                        "--output-dataset with the same --graph, instead of IMAGE_DIR and --cache; --precision "
                        "and --backend, when not given, are the ones DEST holds for that graph")
    p.add_argument("--model-dir", type=Path, default=None, metavar="DIR", help=MODEL_REPOSITORY_HELP)
    p.add_argument("--name", required=True, help="model name: letters, digits, '-', '_', '.'")
    p.add_argument("--logdir", type=Path, help="TensorBoard run directory (default: MODEL_DIR/NAME/runs/<time>)")
    p.add_argument("--batch-size", type=int, default=32, help="images per featurizer batch (default: %(default)s)")
    p.add_argument("--decode-threads", type=int, default=0, help="decoding threads (default: 0 = one per CPU)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: split sizes, skipped files, test metrics, calibration, "
                        "unfamiliar-input figures, the publish gate's report and the exported version")

    g = p.add_argument_group("split (percent of each class)")
    g.add_argument("--train-percent", type=float, default=80.0, help="default: %(default)s")
    g.add_argument("--validation-percent", type=float, default=10.0, help="default: %(default)s")
    g.add_argument("--test-percent", type=float, default=10.0, help="default: %(default)s")

    g = p.add_argument_group("distorted copies of training images")
    g.add_argument("--augment", type=int, default=0, metavar="COPIES",
                   help="distorted copies per training image, featurized once and cached (default: 0)")
    g.add_argument("--random-crop", type=float, default=10.0, help="percent (default: %(default)s)")
    g.add_argument("--random-scale", type=float, default=10.0, help="percent (default: %(default)s)")
    g.add_argument("--random-brightness", type=float, default=10.0, help="percent (default: %(default)s)")
    g.add_argument("--random-contrast", type=float, default=10.0, help="percent (default: %(default)s)")
    g.add_argument("--random-saturation", type=float, default=10.0, help="percent (default: %(default)s)")
    g.add_argument("--no-flip", action="store_true", help="do not mirror copies left-right")

    from imgclf.training.config import CALIBRATIONS, HeadConfig, TrainConfig

    head, train = HeadConfig(), TrainConfig()
    g = p.add_argument_group("head")
    g.add_argument("--hidden-units", type=int, default=head.hidden_units,
                   help="one hidden layer of this width (default: %(default)s = plain softmax classifier)")
    g.add_argument("--dropout", type=float, default=head.dropout,
                   help="dropout on the classifier's input (hidden layer or bottleneck) (default: %(default)s)")
    g.add_argument("--l2", type=float, default=head.l2, help="L2 weight regularisation (default: %(default)s)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default=train.optimizer,
                   help="sgd = SGD with momentum (default: %(default)s)")
    g.add_argument("--learning-rate", type=float, default=train.learning_rate, help="initial (default: %(default)s)")
    decay = g.add_mutually_exclusive_group()
    decay.add_argument("--decay-steps", type=int, default=None,
                       help=f"decay period in optimizer steps (default: {train.decay_steps})")
    decay.add_argument("--decay-epochs", type=float, default=None,
                       help="decay period in epochs instead of steps (as `models train` counts it)")
    g.add_argument("--decay-rate", type=float, default=train.decay_rate, help="default: %(default)s")
    g.add_argument("--no-staircase", action="store_true", help="decay smoothly instead of in steps")
    g.add_argument("--momentum", type=float, default=train.momentum, help="SGD momentum (default: %(default)s)")
    g.add_argument("--train-batch-size", type=int, default=train.batch_size,
                   help="mini-batch of cached vectors (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=train.epochs, help="at most (default: %(default)s)")
    g.add_argument("--patience", type=int, default=train.patience,
                   help="stop after this many epochs without a better validation loss (default: %(default)s)")
    g.add_argument("--ema-decay", type=float, default=train.ema_decay,
                   help="moving average of the weights, used for evaluation and export (default: off)")
    g.add_argument("--class-balance", choices=("weights", "sampling", "none"), default=train.class_balance,
                   help="how class imbalance is handled (default: %(default)s)")
    g.add_argument("--seed", type=int, default=train.seed, help="default: %(default)s")

    g = p.add_argument_group("calibration")
    g.add_argument("--calibration", choices=CALIBRATIONS, default=train.calibration,
                   help="temperature = temperature scaling of the head's logits, fitted on the validation split "
                        "after training; none = the softmax as trained (default: %(default)s)")

    from imgclf.training.gate import DEFAULT_MAX_REGRESSION, PUBLISH_MODES, SIGNIFICANCE

    g = p.add_argument_group(
        "publish gate", f"a candidate is published only when, on its test split, it beats the majority class "
                        f"(one-sided binomial test, p < {SIGNIFICANCE:g}), meets --min-accuracy and loses at most "
                        f"--max-regression against the current version; else it is kept in "
                        f"MODEL_DIR/NAME/rejected/<UTC time>/ and the run exits 3")
    g.add_argument("--publish", choices=PUBLISH_MODES, default="gated",
                   help="always = publish even a candidate that fails the gate (default: %(default)s)")
    g.add_argument("--min-accuracy", type=float, default=None, metavar="A",
                   help="test accuracy the candidate must reach, 0-1 (default: no such check)")
    g.add_argument("--max-regression", type=float, default=DEFAULT_MAX_REGRESSION, metavar="D",
                   help="test accuracy (0-1) the candidate may lose against the current default version, "
                        "compared when it has the same labels and featurizer (default: %(default)s)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Run `imgclf train`."""
    from imgclf.core.repository import validate_name
    from imgclf.training.augment import AugmentConfig
    from imgclf.training.config import HeadConfig, TrainConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.split import SplitConfig

    if (args.image_dir is None) == (args.features is None):
        raise UsageError("give IMAGE_DIR (with --cache) or --features DEST, one of the two")
    if args.features is not None and args.cache is not None:
        raise UsageError("--cache is for IMAGE_DIR; --features DEST reads its vectors from the dataset")
    if args.image_dir is not None and args.cache is None:
        raise UsageError("IMAGE_DIR needs --cache (a SQLite feature cache)")
    if args.features is not None and args.augment:
        raise UsageError("augmentation distorts images: --augment cannot be used with --features "
                         "(train from IMAGE_DIR for distorted copies)")
    validate_name(args.name)
    check_batch_size(args.batch_size)
    check_decode_threads(args.decode_threads)
    check_featurizer_args(args)
    if args.image_dir is not None:
        check_image_dir(args.image_dir)
    train = TrainConfig(learning_rate=args.learning_rate, decay_rate=args.decay_rate, staircase=not args.no_staircase,
                        optimizer=args.optimizer, momentum=args.momentum, batch_size=args.train_batch_size,
                        epochs=args.epochs, patience=args.patience, ema_decay=args.ema_decay,
                        class_balance=args.class_balance, seed=args.seed, calibration=args.calibration,
                        decay_epochs=args.decay_epochs)
    if args.decay_steps is not None:
        train.decay_steps = args.decay_steps
    split = _checked(SplitConfig(args.train_percent, args.validation_percent, args.test_percent))
    augment = _checked(AugmentConfig(args.augment, args.random_crop, args.random_scale, not args.no_flip,
                                     args.random_brightness, args.random_contrast, args.random_saturation))
    head = _checked(HeadConfig(hidden_units=args.hidden_units, dropout=args.dropout, l2=args.l2))
    gate = _checked(GateConfig(publish=args.publish, min_accuracy=args.min_accuracy,
                               max_regression=args.max_regression))
    _checked(train)
    # TensorFlow loads from here on: every argument above was checked without it
    from imgclf.training.train_job import TrainJob, run_train

    job = TrainJob(
        image_dir=args.image_dir, features=args.features, featurizer=_featurizer_config(args), cache=args.cache,
        model_dir=model_repository(args.model_dir), name=args.name, logdir=args.logdir, batch_size=args.batch_size,
        decode_threads=args.decode_threads, progress=False if args.quiet or args.json else None,
        split=split, augment=augment, head=head, train=train, gate=gate)
    try:
        outcome = run_train(job)
    except CandidateRejected as rejected:
        if rejected.outcome is None or rejected.report is None:
            raise
        if args.json:
            _print_json(rejected.outcome, rejected.report, published=False, kept_at=rejected.kept_at)
            return exit_status(rejected)
        _print_outcome(rejected.outcome)
        print(rejected.report.reason())
        print(rejected.report.format_table())
        print(f"kept {rejected.kept_at}; not published (--publish always publishes a candidate anyway)")
        return exit_status(rejected)
    if args.json:
        _print_json(outcome, outcome.gate, published=True)
        return 0
    _print_outcome(outcome)
    if outcome.gate is not None:
        print(outcome.gate.reason())
        print(outcome.gate.format_table())
    print(f"exported {outcome.version_dir}")
    return 0


def summary(outcome, gate, published: bool, kept_at=None) -> dict:
    """Return a training run's summary as JSON-ready data (what `imgclf train --json` prints)."""
    dataset = outcome.dataset
    return {
        "published": published,
        "version_dir": str(outcome.version_dir) if published else None,
        "kept_at": None if kept_at is None else str(kept_at),
        "labels": list(dataset.label_names),
        "split": dataset.sizes(),
        "skipped": [{"path": str(path), "reason": reason} for path, reason in dataset.skipped],
        "metrics": outcome.metrics,
        "calibration": outcome.calibration,
        "unfamiliar": outcome.unfamiliar,
        "gate": None if gate is None else gate.to_dict(),  # with its reason
        "epochs": len(outcome.history),
    }


def _print_json(outcome, gate, published: bool, kept_at=None) -> None:
    print(json.dumps(summary(outcome, gate, published, kept_at), indent=2, default=_json_default))


def _json_default(value):
    """JSON for numpy scalars and arrays and paths in the summary."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _featurizer_config(args: argparse.Namespace):
    """Return the FeaturizerConfig of the flags; with --features, DEST's precision and backend fill the ones not given.

    Raises:
        UsageError: DEST holds this graph's features in several precisions or backends the flags leave open,
            a flag contradicts DEST, or DEST holds int8 features (their calibration images are not in it).
    """
    if args.features is None:
        return featurizer_config_from_args(args)
    from imgclf.featurizer.graph.load import file_sha256
    from imgclf.featurizer.store.held_featurizers import choose_featurizer, held_featurizers

    precision, backend = choose_featurizer(held_featurizers(args.features), file_sha256(args.graph),
                                           args.precision, args.backend, args.features)
    config = featurizer_config_from_args(args, precision, backend)
    if config.precision == "int8":
        raise UsageError(f"int8 features cannot be trained on from --features {args.features!r}: OpenVINO "
                         "quantized the graph on the featurize run's own images, which a feature dataset does not "
                         "hold, so the featurizer cannot be rebuilt for the export; train from IMAGE_DIR with "
                         "--cache and --precision int8, or featurize DEST in fp32 or bf16")
    return config


def _print_outcome(outcome) -> None:
    """Print the split, the skipped files and the test metrics of a training run."""
    sizes = outcome.dataset.sizes()
    print(f"split: {sizes['train']} train, {sizes['validation']} validation, {sizes['test']} test vectors")
    if outcome.dataset.skipped:
        print(f"skipped {len(outcome.dataset.skipped)} file(s):")
        for path, reason in outcome.dataset.skipped:
            print(f"  {path}: {reason}")
    print(outcome.table)
    if outcome.calibration is not None:
        from imgclf.training.calibration import format_table

        print(format_table(outcome.calibration))
    if outcome.unfamiliar is not None:
        from imgclf.training.unfamiliar_report import format_table

        print(format_table(outcome.unfamiliar))


def _checked(config):
    """Return ``config`` after its ``validate()``: built from arguments alone, its ValueError is a UsageError."""
    try:
        config.validate()
    except UsageError:
        raise
    except ValueError as exc:  # SplitConfig and AugmentConfig say ValueError; here it is a bad argument (exit 2)
        raise UsageError(str(exc)) from None
    return config
