"""Fit the dense head on cached bottleneck vectors: the head's spec for the one training loop.

What is the head's own: the checks of the bottleneck arrays, the class balance
(loss weights, or balanced draws), the network (:mod:`imgclf.training.head`,
trained through its logits), validation on the logits, and the confusion
matrix and graph in TensorBoard. The loop (:mod:`imgclf.training.loop`) does the
rest: softmax cross-entropy plus L2, exponential decay with SGD + momentum or
Adam, early stopping with the best weights restored, the moving average.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from imgclf.training.config import HeadConfig, TrainConfig
from imgclf.training.head import build_head, feature_statistics, logits_model
from imgclf.training.loop import CLASSIFICATION, Examples, classification_figures, fit, predict
from imgclf.training.metrics import Metrics, evaluate
from imgclf.training.tensorboard_log import RunWriters

log = logging.getLogger(__name__)

EVAL_CHUNK = 8192  # rows per forward pass when evaluating (bounds memory, not results)
# What the head's history rows (and so its model card) hold of the loop's rows.
HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate")


@dataclass
class TrainResult:
    """The fitted head and how the fit went."""

    model: keras.Model  # best-validation-loss weights (the moving average when EMA is on)
    # Per epoch: epoch (1-based); train_loss and train_accuracy, means over the epoch's
    # mini-batches of what was minimised (class-weighted cross-entropy + L2, dropout on);
    # val_loss and val_accuracy, plain cross-entropy and accuracy of the evaluated weights
    # (the moving average when EMA is on); learning_rate, the rate of the epoch's last update.
    history: list[dict]
    best_epoch: int  # 1-based epoch whose weights the model holds
    stopped_early: bool  # True when patience ended training before epochs
    seconds: float  # wall time of the whole fit
    steps: int  # optimizer updates made
    val_metrics: Metrics | None = None  # the returned model scored on the validation set
    class_weights: list[float] = field(default_factory=list)  # per class, all 1.0 unless "weights"

    def to_dict(self) -> dict:
        """Return everything but the model as JSON-ready data (for the model card)."""
        return {
            "best_epoch": self.best_epoch,
            "epochs": len(self.history),
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 3),
            "steps": self.steps,
            "class_weights": list(self.class_weights),
            "history": [dict(h) for h in self.history],
            "validation": self.val_metrics.to_dict() if self.val_metrics else None,
        }


def _check_split(name: str, x, y, num_classes: int, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``x`` as float32 and ``y`` as int32 after checking shapes, values and labels."""
    x, y = np.asarray(x), np.asarray(y)
    split = {"train": "training", "val": "validation"}[name]
    if x.ndim != 2:
        raise ValueError(f"x_{name} must be a 2-D array [examples, features]; "
                         f"received shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"the {split} set is empty (received shape {x.shape}); "
                         f"training needs at least one training and one validation example")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"x_{name} has {x.shape[1]} features per example but x_train has {dim}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"x_{name} must hold real numbers; received dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"x_{name} holds {int((~np.isfinite(x)).sum())} NaN or infinite values")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y_{name} must be a 1-D array with one label per row of x_{name} "
                         f"({x.shape[0]}); received shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_{name} must hold integer labels; received dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y_{name} labels must be in [0, {num_classes}); received values "
                         f"from {y.min()} to {y.max()}")
    return x, y.astype(np.int32)


def _balance(y: np.ndarray, num_classes: int, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Return per-class loss weights and, for "sampling", per-example draw probabilities."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    if not present.all():
        log.warning("classes %s have no training examples", np.flatnonzero(~present).tolist())
    class_weights = np.ones(num_classes)
    probabilities = None
    if mode == "weights":
        # sklearn's "balanced": n / (classes * count), so the weights average to 1 per example.
        class_weights[present] = len(y) / (present.sum() * counts[present])
    elif mode == "sampling":
        probabilities = 1.0 / (present.sum() * counts[y])
        probabilities /= probabilities.sum()
    return class_weights, probabilities


def predict_probabilities(model: keras.Model, x) -> np.ndarray:
    """Return the model's probabilities for ``x`` ([N, D] → [N, classes]), in chunks."""
    x = np.asarray(x, dtype=np.float32)
    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    parts = [forward(x[s:s + EVAL_CHUNK]).numpy() for s in range(0, len(x), EVAL_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def train_head(x_train, y_train, x_val, y_val, num_classes: int,
               head_config: HeadConfig | None = None, train_config: TrainConfig | None = None,
               logdir: Path | None = None, label_names: list[str] | None = None,
               progress: bool | None = None) -> TrainResult:
    """Fit a head on bottleneck vectors; stop early on validation loss; return the best model.

    Args:
        x_train, y_train: ``[N, D]`` features and ``[N]`` integer labels in ``[0, num_classes)``.
        x_val, y_val: the validation split (not empty): early stopping and the confusion matrix.
        num_classes: number of labels (the head's output width).
        head_config, train_config: the head's shape and the fit's settings (defaults if None).
        logdir: write TensorBoard logs under ``logdir/train`` and ``logdir/validation``.
        label_names: names for the confusion matrix and metrics (default "0", "1", …).
        progress: show a bar over epochs (None = only when stderr is a terminal).
    """
    started = time.perf_counter()
    head_config = head_config or HeadConfig()
    train_config = train_config or TrainConfig()
    head_config.validate()
    train_config.validate()
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; received {num_classes!r}")
    num_classes = int(num_classes)
    x_train, y_train = _check_split("train", x_train, y_train, num_classes, None)
    x_val, y_val = _check_split("val", x_val, y_val, num_classes, x_train.shape[1])
    if label_names is None:
        label_names = [str(i) for i in range(num_classes)]
    elif len(label_names) != num_classes:
        raise ValueError(f"label_names must name all {num_classes} classes; "
                         f"received {len(label_names)} names")
    cfg = train_config
    class_weights, draw = _balance(y_train, num_classes, cfg.class_balance)
    statistics = feature_statistics(x_train)
    logits_of = {}

    def build() -> keras.Model:
        model = build_head(head_config, x_train.shape[1], num_classes, seed=cfg.seed, statistics=statistics)
        logits_of[id(model)] = logits_model(model)
        return model

    def validate(model: keras.Model) -> dict:
        return classification_figures(predict(logits_of[id(model)], x_val), y_val)

    writers = RunWriters(Path(logdir)) if logdir is not None else None
    try:
        fitted = fit(build, Examples(x_train, y_train, class_weights[y_train].astype(np.float32), draw), cfg,
                     CLASSIFICATION, forward=lambda model: logits_of[id(model)], validate=validate,
                     writers=writers, progress=progress)
        model = fitted.model
        val_metrics = evaluate(predict_probabilities(model, x_val), y_val, label_names)
        if writers:
            writers.finish(model, x_train.shape[1], val_metrics, fitted.best_epoch)
    finally:
        if writers:
            writers.close()
    history = [{k: row[k] for k in HISTORY_KEYS} for row in fitted.history]
    seconds = time.perf_counter() - started
    log.info("trained %d epochs (%d steps) in %.1f s; best epoch %d: val_loss %.4f, val_accuracy %.4f",
             len(history), fitted.steps, seconds, fitted.best_epoch,
             history[fitted.best_epoch - 1]["val_loss"], val_metrics.accuracy)
    return TrainResult(model=model, history=history, best_epoch=fitted.best_epoch,
                       stopped_early=fitted.stopped_early, seconds=seconds, steps=fitted.steps,
                       val_metrics=val_metrics, class_weights=[float(w) for w in class_weights])


__all__ = ["TrainResult", "predict_probabilities", "train_head"]
