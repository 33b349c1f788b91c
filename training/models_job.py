"""`imgclf models train`: load the data, pick the strategy, train (resuming) in the one loop, evaluate, export.

A secondary model's spec (:mod:`imgclf.models.config`) supplies what differs
from the classifier head: the network (:mod:`imgclf.models.networks`), the
objective by kind (softmax cross-entropy on the digits, squared error on the
quadratic), the validation figures and the export (:mod:`imgclf.models.export`);
:func:`imgclf.training.loop.fit` trains it.

The data is loaded and checked before TensorFlow starts, so a bad file fails
fast. Checkpoints go by default to a directory keyed by everything that
determines the weights (model, network, training settings, data), so running
the same command again after a crash resumes instead of starting over, and a
changed setting starts a fresh run. Only the chief of a multi-worker run
writes into the model repository (export, logs, checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.core.model_kind import ModelKind
from imgclf.core.repository import validate_name
from imgclf.models.config import config_dict, net_with, spec_for
from imgclf.models.data import Data, Split, quadratic_data
from imgclf.models.mnist import load_mnist
from imgclf.training.config import TrainConfig
from imgclf.training.distribute import WorkerRole, make_strategy

log = logging.getLogger(__name__)


@dataclass
class ModelsTrainJob:
    """Everything `imgclf models train` needs."""

    model: str  # "quadratic", "mnist-mlp" or "lenet5"
    model_dir: Path  # model repository: versions go to model_dir/name/<n>/
    train: TrainConfig  # see imgclf.training.config.train_config for the model's defaults
    name: str | None = None  # repository name; default the model's name
    data: Path | None = None  # digits: mnist.npz (default $IMGCLF_HOME/data/mnist.npz)
    dropout: float | None = None  # digits: dropout rate before the output layer (None = the model's default)
    strategy: str = "default"  # "default", "mirrored" or "multiworker"
    cluster: Path | None = None  # multiworker: a curriculum cluster file instead of TF_CONFIG
    cpu_devices: int | None = None  # split the CPU into N logical devices (None = IMGCLF_CPU_DEVICES or not)
    logdir: Path | None = None  # TensorBoard run directory (default model_dir/name/runs/<UTC time>)
    checkpoint_dir: Path | None = None  # default model_dir/name/checkpoints/<model>-<settings hash>
    save_weights: Path | None = None  # also write the final weights to this .npz (any worker; for checks)


@dataclass
class ModelsTrainOutcome:
    """What a run produced."""

    version_dir: Path | None  # the new version (None on a non-chief worker)
    metrics: dict  # {"test": ..., "validation": ... (digits), "train": ... (quadratic)}
    card: dict  # the run's part of the model card
    role: WorkerRole
    fit: object  # imgclf.training.loop.FitResult


def load_data(model: str, path: Path | None, validation_size: int | None) -> Data:
    """Return the data of ``model``: generated for the quadratic, ``mnist.npz`` for the digit models."""
    if spec_for(model).kind == ModelKind.REGRESSION:
        return quadratic_data()
    return load_mnist(path, validation_size)


def settings_key(model: str, net, train: TrainConfig, data: Data) -> str:
    """Return a short hash of everything that determines the trained weights (names the checkpoint dir)."""
    settings = {"model": model, "net": config_dict(net),
                # Not epochs: batch order and learning rate depend on the epoch alone, so a longer run
                # continues a shorter one's checkpoint exactly. Not calibration: it follows training.
                "train": {k: v for k, v in config_dict(train).items()
                          if k not in ("epochs", "checkpoint_epochs", "calibration")},
                "data": data.source}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def run_models_train(job: ModelsTrainJob, on_epoch: Callable[[dict], None] | None = None) -> ModelsTrainOutcome:
    """Run the whole job; return the new version (chief) and the metrics.

    Args:
        job: what to train and where to put it.
        on_epoch: called with each epoch's figures (progress display).

    Raises:
        ValueError: a bad name or setting, or a malformed data or cluster file.
        FileNotFoundError: the data or cluster file is missing.
        imgclf.core.errors.TrainingDiverged: the loss became NaN or infinite.
    """
    spec = spec_for(job.model)
    name = validate_name(job.name or spec.name)
    job.train.validate()
    net = net_with(spec, job.dropout)
    data = load_data(job.model, job.data, job.train.validation_size)  # before TensorFlow starts

    strategy, role = make_strategy(job.strategy, job.cluster, job.cpu_devices)
    # Deferred: TensorFlow loads only once the data and the strategy settings have been checked (fast failures).
    from imgclf.models.export import export_secondary
    from imgclf.models.networks import build_network
    from imgclf.training.loop import CLASSIFICATION, Examples, fit, regression
    from imgclf.training.tensorboard_log import RunWriters

    model_dir = Path(job.model_dir) / name
    checkpoint_dir = Path(job.checkpoint_dir) if job.checkpoint_dir else \
        model_dir / "checkpoints" / f"{spec.name}-{settings_key(spec.name, net, job.train, data)}"
    logdir = Path(job.logdir) if job.logdir else \
        model_dir / "runs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    y_scale = float(data.normalization["y_max"] - data.normalization["y_min"]) if data.normalization else 1.0
    regressing = spec.kind == ModelKind.REGRESSION
    validation = data.validation
    writers = RunWriters(logdir, validation=validation is not None) if role.is_chief else None
    try:
        result = fit(lambda: build_network(net, job.train.seed), Examples(data.train.x, data.train.y), job.train,
                     regression(y_scale) if regressing else CLASSIFICATION,
                     validate=(lambda model: evaluate(spec.kind, model, validation)) if validation else None,
                     strategy=strategy, role=role, checkpoint_dir=checkpoint_dir, writers=writers,
                     on_epoch=on_epoch)
    finally:
        if writers:
            writers.close()

    metrics = {"test": evaluate(spec.kind, result.model, data.test, y_scale)}
    if validation is not None:
        metrics["validation"] = evaluate(spec.kind, result.model, validation, y_scale)
    if regressing:  # cheap here; for the digits the last epoch's running figures stand in
        metrics["train"] = evaluate(spec.kind, result.model, data.train, y_scale)
    card = {
        "training": {
            **config_dict(job.train), "net": config_dict(net), "strategy": job.strategy,
            "replicas": result.replicas, "workers": role.num_workers, "steps": result.steps,
            "resumed_from_epoch": result.resumed_from_epoch,
            "seconds": round(result.seconds, 3), "checkpoint_dir": str(checkpoint_dir),
            "logdir": str(logdir) if role.is_chief else None, "final_epoch": result.final,
        },
        "metrics": metrics,
        "splits": data.sizes(),
        "data": data.source,
    }
    if job.save_weights is not None:
        save_weights(result.model, Path(job.save_weights))
    version_dir = None
    if role.is_chief:
        version_dir = export_secondary(job.model_dir, name, spec, result.model, data, card)
    else:
        log.info("worker %s %d: trained; the chief exports", role.task_type, role.task_id)
    return ModelsTrainOutcome(version_dir=version_dir, metrics=metrics, card=card, role=role, fit=result)


def evaluate(kind: ModelKind, model, split: Split, y_scale: float = 1.0) -> dict:
    """Return ``{"loss", "accuracy"}`` (digits) or ``{"rmse", "mse"}`` (regression, in raw y: × ``y_scale``)."""
    from imgclf.training.loop import classification_figures, predict  # deferred: TensorFlow

    out = predict(model, split.x)
    if kind == ModelKind.REGRESSION:
        rmse = math.sqrt(float(np.mean(np.square(out.astype(np.float64) - split.y)))) * y_scale
        return {"rmse": rmse, "mse": rmse * rmse}
    return classification_figures(out, split.y)


def save_weights(model, path: Path) -> None:
    """Write ``model``'s weights to an .npz (keys: the variables' paths), atomically."""
    arrays = {v.path.replace("/", "__"): np.asarray(v.numpy()) for v in model.weights}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

