"""`imgclf train`: featurize what is not cached, split, train the head, evaluate, export a version.

Everything that can be checked before work is checked first (split sizes,
class counts, settings); then the expensive steps run in order, each showing
progress, and the export is written atomically as a new integer version.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.core.errors import UsageError
from imgclf.featurizer.images.folders import scan_image_dir
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.training.augment import AugmentConfig
from imgclf.training.config import HeadConfig, TrainConfig
from imgclf.training.dataset import Dataset, build_dataset, build_dataset_from_features
from imgclf.training.split import SplitConfig

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
    logdir: Path | None = None  # TensorBoard run directory (default: model_dir/name/runs/<UTC time>)
    batch_size: int = 32  # images per featurizer batch
    decode_threads: int = 0  # 0 = one per usable CPU
    progress: bool | None = None  # None = progress bars only on a terminal
    # A feature dataset (folder or s3://, gs:// URI) written by `imgclf featurize --output-dataset`, instead
    # of image_dir and cache: its rows of this featurizer are split and trained on, no image is read.
    features: str | None = None


@dataclass
class TrainOutcome:
    """What a training job produced."""

    version_dir: Path
    dataset: Dataset
    metrics: dict
    table: str
    history: list[dict]


def default_logdir(model_dir: Path, name: str) -> Path:
    """Return a fresh TensorBoard run directory for ``name`` under the repository."""
    return Path(model_dir) / name / "runs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def run_train(job: TrainJob) -> TrainOutcome:
    """Run the whole training job and return where the new version is."""
    from imgclf.core.repository import validate_name
    from imgclf.training.export import export_model
    from imgclf.training.fit_head import train_head
    from imgclf.training.metrics import evaluate

    validate_name(job.name)
    job.split.validate()
    job.augment.validate()
    job.head.validate()
    job.train.validate()
    if job.features is not None and job.augment.copies:
        raise UsageError("augmentation distorts images: --augment cannot be used with --features "
                         "(train from IMAGE_DIR for distorted copies)")
    if (job.features is None) == (job.image_dir is None):
        raise UsageError("train from IMAGE_DIR (with --cache) or from --features DEST, one of the two")
    if job.features is None and job.cache is None:
        raise UsageError("training from IMAGE_DIR needs --cache (a SQLite feature cache)")
    # The folder is scanned once, here: the int8 calibration is chosen from this scan, then featurized.
    directory = scan_image_dir(job.image_dir) if job.features is None else None
    calibration = calibration_for(job.featurizer, directory) if directory is not None else None
    with Featurizer(job.featurizer, calibration) as featurizer:
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
        probabilities = np.asarray(result.model.predict(test.features, verbose=0)) if len(test.labels) else \
            np.zeros((0, len(dataset.label_names)), np.float32)
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
        version_dir = export_model(job.model_dir, job.name, result.model, featurizer, dataset.label_names, card)
    return TrainOutcome(version_dir, dataset, metrics.to_dict(), metrics.format_table(), result.history)
