"""`imgclf train`: featurize what is not cached, split, train the head, evaluate, gate, export a version.

Everything that can be checked before work is checked first (split sizes,
class counts, settings); then the expensive steps run in order, each showing
progress. The publish gate (:mod:`imgclf.training.gate`) judges the candidate on
the test split against the majority class and the current default version; a
candidate that passes is written atomically as a new integer version, one that
fails is kept under ``NAME/rejected/<UTC time>/`` and the job raises
:class:`~imgclf.core.errors.CandidateRejected` (exit status 3).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.errors import CandidateRejected, ModelNotFound, UsageError
from imgclf.featurizer.images.folders import scan_image_dir
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.training.augment import AugmentConfig
from imgclf.training.calibration import Calibration, calibrate, reliability_diagram, softmax
from imgclf.training.config import HeadConfig, TrainConfig
from imgclf.training.dataset import Dataset, build_dataset, build_dataset_from_features
from imgclf.training.detector import fit_detector
from imgclf.training.gate import CurrentVersion, GateConfig, GateReport, judge
from imgclf.training.head_graph import HeadWeights, TrustedHead
from imgclf.training.split import SplitConfig
from imgclf.training.unfamiliar_report import generated_sets, left_out_figures
from imgclf.training.unfamiliar_report import report as unfamiliar_report

UNFAMILIAR_METHOD = "mahalanobis"  # see imgclf.training.detector for the measurements behind the choice

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """Everything `imgclf train` needs."""

    image_dir: Path | None  # one sub-folder per class (None with features)
    featurizer: FeaturizerConfig  # the bottleneck graph and how to run it
    cache: Path | None  # SQLite feature cache shared with `imgclf featurize` (None with features)
    model_dir: Path  # model repository: versions go to model_dir/name/<n>/
    name: str  # model name in the repository
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)  # what a candidate must pass to be published
    logdir: Path | None = None  # TensorBoard run directory (default: model_dir/name/runs/<UTC time>)
    batch_size: int = 32  # images per featurizer batch
    decode_threads: int = 0  # 0 = one per usable CPU
    progress: bool | None = None  # None = progress bars only on a terminal
    # A feature dataset (folder or s3://, gs:// URI) written by `imgclf featurize --output-dataset`, instead
    # of image_dir and cache: its rows of this featurizer are split and trained on, no image is read.
    features: str | None = None
    # Classes left out of the detector's fit, one at a time, to measure it on unseen kinds of things (0 = none).
    left_out_classes: int = 3


@dataclass
class TrainOutcome:
    """What a training job produced."""

    version_dir: Path  # the published version (a rejected candidate: where it is kept)
    dataset: Dataset
    metrics: dict
    table: str
    history: list[dict]
    gate: GateReport | None = None  # the publish gate's report
    calibration: dict | None = None  # the card's calibration entry (NLL and ECE before and after)
    unfamiliar: dict | None = None  # the card's unfamiliar-input entry (threshold, AUROC, FPR per set)


def default_logdir(model_dir: Path, name: str) -> Path:
    """Return a fresh TensorBoard run directory for ``name`` under the repository."""
    return Path(model_dir) / name / "runs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def run_train(job: TrainJob) -> TrainOutcome:
    """Run the whole training job and return where the new version is.

    Raises:
        CandidateRejected: the candidate failed the publish gate (and ``job.gate.publish`` is "gated");
            it is kept under ``NAME/rejected/<UTC time>/``; the exception carries the report and the outcome.
        TrainingDiverged: the training loss became NaN or infinite; nothing is written.
    """
    from imgclf.core.repository import validate_name
    from imgclf.training.export import export_model
    from imgclf.training.fit_head import train_head
    from imgclf.training.metrics import evaluate

    validate_name(job.name)
    job.split.validate()
    job.augment.validate()
    job.head.validate()
    job.train.validate()
    job.gate.validate()
    if isinstance(job.left_out_classes, bool) or not isinstance(job.left_out_classes, int) or job.left_out_classes < 0:
        raise UsageError(f"left_out_classes must be an integer >= 0; received {job.left_out_classes!r}")
    if job.features is not None and job.augment.copies:
        raise UsageError("augmentation distorts images: --augment cannot be used with --features "
                         "(train from IMAGE_DIR for distorted copies)")
    if (job.features is None) == (job.image_dir is None):
        raise UsageError("train from IMAGE_DIR (with --cache) or from --features DEST, one of the two")
    if job.features is None and job.cache is None:
        raise UsageError("training from IMAGE_DIR needs --cache (a SQLite feature cache)")
    # The folder is scanned once, here: the int8 calibration is chosen from this scan, then featurized.
    directory = scan_image_dir(job.image_dir) if job.features is None else None
    int8_calibration = calibration_for(job.featurizer, directory) if directory is not None else None
    with Featurizer(job.featurizer, int8_calibration) as featurizer:
        if directory is None:
            dataset = build_dataset_from_features(job.features, featurizer, job.split)
        else:
            with FeatureCache(job.cache) as cache:
                dataset = build_dataset(directory, featurizer, cache, job.split, job.augment,
                                        batch_size=job.batch_size, decode_threads=job.decode_threads,
                                        progress=job.progress)
        sizes = dataset.sizes()
        log.info("split sizes: %s", sizes)
        train, val, test = (dataset.splits[name] for name in ("train", "validation", "test"))
        logdir = job.logdir or default_logdir(job.model_dir, job.name)
        result = train_head(train.features, train.labels, val.features, val.labels, len(dataset.label_names),
                            job.head, job.train, logdir=logdir, label_names=dataset.label_names,
                            progress=job.progress)
        trusted, calibration, diagram = calibrated_head(job, result.model, train, val, test, logdir)
        unfamiliar = measure_detector(job, trusted, featurizer, dataset)
        probabilities = trusted.outputs(test.features)[names.PROBABILITIES_KEY]
        metrics = evaluate(probabilities, test.labels, dataset.label_names)
        card = {
            "training": {
                "image_dir": str(dataset.directory.root) if job.features is None else None,
                **({"features": str(job.features)} if job.features is not None else {}),
                "split": dataclasses.asdict(job.split),
                "augment": dataclasses.asdict(job.augment),
                "head": dataclasses.asdict(job.head),
                "optimizer": dataclasses.asdict(job.train),
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "seconds": round(result.seconds, 3),
                "logdir": str(logdir),
                "skipped_files": [{"path": p, "reason": r} for p, r in dataset.skipped],
            },
            "split_sizes": sizes,
            "metrics": {"test": metrics.to_dict(),
                        "validation_loss": min((h["val_loss"] for h in result.history), default=None)},
        }
        current = compare_with_current(job.model_dir, job.name, featurizer.fingerprint, dataset.label_names,
                                       test.features)
        report = judge(job.gate, test.labels, np.argmax(probabilities, axis=1), dataset.label_names, current)
        card["gate"] = report.to_dict()
        card["metrics"]["test"]["probabilities"] = "calibrated" if calibration.method != "none" else "uncalibrated"
        log.info("%s", report.reason())
        version_dir = export_model(job.model_dir, job.name, trusted, featurizer, dataset.label_names, card,
                                   rejected_by=None if report.published else card["gate"],
                                   calibration=calibration.to_dict(), unfamiliar=unfamiliar, reliability_png=diagram)
    unfamiliar = {**unfamiliar, **{k: v for k, v in trusted.detector.to_dict().items() if k != "validation_scores"}}
    outcome = TrainOutcome(version_dir, dataset, metrics.to_dict(), metrics.format_table(), result.history, report,
                           calibration=calibration.to_dict(), unfamiliar=unfamiliar)
    if not report.published:
        raise CandidateRejected(report.reason(), report=report, kept_at=version_dir, outcome=outcome)
    return outcome


def calibrated_head(job: TrainJob, model, train, val, test, logdir: Path) -> tuple[TrustedHead, Calibration, bytes]:
    """Return the head to export (weights, temperature, detector), its calibration and the reliability diagram.

    The temperature is fitted on the validation split's logits (:mod:`imgclf.training.calibration`); the
    unfamiliar-input threshold is set at 95% TPR on the same split. The diagram (PNG) shows the test split
    (the validation split when the test split is empty), before and after; it is logged to TensorBoard too.
    """
    from imgclf.training.tensorboard_log import encode_png, write_tensorboard_image

    weights = HeadWeights.from_keras(model)
    val_logits, test_logits = weights.logits(val.features), weights.logits(test.features)
    calibration = calibrate(job.train.calibration, val_logits, val.labels, test_logits, test.labels)
    log.info("%s", calibration.format_table())
    detector = fit_detector(UNFAMILIAR_METHOD, train.features, train.labels, val.features)
    shown, logits, labels = ("test", test_logits, test.labels) if len(test.labels) else \
        ("validation", val_logits, val.labels)
    calibration.diagram = {"file": names.RELIABILITY_DIAGRAM_FILE, "split": shown, "images": int(len(labels))}
    rgb = reliability_diagram(softmax(logits), softmax(logits, calibration.temperature), labels,
                              f"{job.name}: {shown} split, {len(labels)} images; after = temperature "
                              f"{calibration.temperature:.3g}")
    write_tensorboard_image(logdir, "reliability_diagram", rgb,
                            f"reliability on the {shown} split before and after calibration")
    return TrustedHead(weights, calibration.temperature, detector), calibration, encode_png(rgb)


def measure_detector(job: TrainJob, trusted: TrustedHead, featurizer: Featurizer, dataset: Dataset) -> dict:
    """Return the unfamiliar-input detector's figures for the card (see :mod:`imgclf.training.unfamiliar_report`)."""
    train, val, test = (dataset.splits[name] for name in ("train", "validation", "test"))
    held_out = test if len(test.labels) else val
    left_out = left_out_figures(dataset.label_names, (train.features, train.labels), (val.features, val.labels),
                                (held_out.features, held_out.labels), trusted.detector.method,
                                job.left_out_classes) if job.left_out_classes else {}
    figures = unfamiliar_report(trusted.detector, held_out.features, generated_sets(featurizer), left_out)
    figures["familiar_split"] = "test" if len(test.labels) else "validation"
    return figures


def compare_with_current(model_dir: Path, name: str, fingerprint: str, label_names: list[str],
                         features: np.ndarray) -> CurrentVersion:
    """Return the model's current default version (its newest) with its answers on ``features``.

    The version is loaded as the service loads it and its head is run on the candidate's test
    bottlenecks (the SavedModel's bottleneck signature). When it cannot be compared (other labels,
    another featurizer, unreadable) the answers are None and ``skipped`` says why.
    """
    from imgclf.core.repository import list_versions, read_card
    from imgclf.training.classifier import load_model

    versions = list_versions(model_dir, name)
    if not versions:
        return CurrentVersion()
    version = versions[-1]
    path = Path(model_dir) / name / str(version)
    try:
        card = read_card(path)
    except ModelNotFound as exc:
        return CurrentVersion(version, skipped=f"unreadable: {exc}")
    if card.get("labels") != list(label_names):
        return CurrentVersion(version, skipped=f"other labels ({card.get('labels')!r}; the candidate has "
                                                f"{list(label_names)!r})")
    described = card.get("featurizer")
    theirs = described.get("fingerprint") if isinstance(described, dict) else None
    if theirs != fingerprint:
        return CurrentVersion(version, skipped=f"another featurizer (fingerprint {str(theirs)[:12]}, the candidate's "
                                                f"{fingerprint[:12]}): its bottlenecks are not these")
    try:
        model = load_model(path)
        predicted = np.argmax(model.predict_bottlenecks(features), axis=1)
    except Exception as exc:  # an old version that cannot run must not fail the new run: the report says why
        log.warning("version %d of %s cannot be evaluated for the publish gate: %s", version, name, exc)
        return CurrentVersion(version, skipped=f"cannot be evaluated ({type(exc).__name__}: {exc})")
    return CurrentVersion(version, predicted=predicted)
