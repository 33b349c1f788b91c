"""Fit the dense head on cached bottleneck vectors.

Softmax cross-entropy plus L2 on the kernels; exponential learning-rate decay with
SGD + momentum or Adam; shuffled mini-batches (optionally class-balanced, or
class-weighted); early stopping on validation loss with the best weights
restored; an optional exponential moving average of the weights that is what
gets evaluated and returned; TensorBoard logs under the run directory.

One epoch runs as a single ``tf.function`` (a graph loop over its mini-batches),
so 10,000 vectors per epoch cost milliseconds rather than a Python call per step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from imgclf.core.errors import TrainingDiverged
from imgclf.training.config import CLASS_BALANCE, OPTIMIZERS, HeadConfig, TrainConfig  # noqa: F401 - re-exported
from imgclf.training.head import build_head, feature_statistics, logits_model
from imgclf.training.metrics import Metrics, evaluate
from imgclf.training.tensorboard_log import RunWriters

log = logging.getLogger(__name__)

EVAL_CHUNK = 8192  # rows per forward pass when evaluating (bounds memory, not results)


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
    stopped_early: bool  # True when patience ran out before max_epochs
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


class WeightAverager:
    """Shadow copies of variables, kept as an exponential moving average of their values.

    The update follows ``tf.train.ExponentialMovingAverage`` with ``num_updates``:
    ``decay_t = min(decay, (1 + t) / (10 + t))`` after update ``t``, so the average
    is not dragged towards the initial weights early in training.
    """

    def __init__(self, variables, decay: float):
        self.variables = list(variables)
        self.decay = float(decay)
        self.shadows = [tf.Variable(tf.convert_to_tensor(v), trainable=False,
                                    name=f"ema_{i}") for i, v in enumerate(self.variables)]

    def update(self, num_updates) -> None:
        """Move every shadow towards its variable (callable inside a tf.function)."""
        t = tf.cast(num_updates, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + t) / (10.0 + t))
        for shadow, variable in zip(self.shadows, self.variables):
            shadow.assign(decay * shadow + (1.0 - decay) * tf.convert_to_tensor(variable))

    @contextlib.contextmanager
    def swapped(self):
        """Put the averages into the variables for the duration of the block, then restore."""
        backup = [np.array(v.numpy()) for v in self.variables]
        for variable, shadow in zip(self.variables, self.shadows):
            variable.assign(shadow.numpy())
        try:
            yield
        finally:
            for variable, value in zip(self.variables, backup):
                variable.assign(value)


def learning_rate_schedule(config: TrainConfig) -> keras.optimizers.schedules.ExponentialDecay:
    """Return the configured ``ExponentialDecay`` schedule."""
    return tf.keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=config.decay_steps, decay_rate=config.decay_rate,
        staircase=config.staircase)


def _make_optimizer(config: TrainConfig, schedule) -> keras.optimizers.Optimizer:
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)


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


def _make_epoch_fn(logits: keras.Model, optimizer, averager: WeightAverager | None,
                   batch_size: int):
    """Return a tf.function that runs one epoch of mini-batch updates in the given order."""
    variables = logits.trainable_variables

    @tf.function(reduce_retracing=True)
    def run_epoch(x, y, weights, order):
        n = tf.shape(order)[0]
        steps = (n + batch_size - 1) // batch_size
        loss_sum = tf.constant(0.0)
        correct = tf.constant(0)
        for i in tf.range(steps):
            batch = order[i * batch_size: tf.minimum((i + 1) * batch_size, n)]
            xb, yb, wb = tf.gather(x, batch), tf.gather(y, batch), tf.gather(weights, batch)
            with tf.GradientTape() as tape:
                out = logits(xb, training=True)
                cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=out)
                # L2 penalty: the kernels' regularizers (l2 * sum(w ** 2)), part of the loss.
                loss = tf.reduce_mean(wb * cross_entropy) + tf.add_n([tf.constant(0.0)] + logits.losses)
            optimizer.apply(tape.gradient(loss, variables), variables)
            if averager is not None:
                averager.update(optimizer.iterations)
            loss_sum += loss * tf.cast(tf.shape(batch)[0], tf.float32)
            correct += tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, 1, output_type=tf.int32), yb),
                                             tf.int32))
        return loss_sum / tf.cast(n, tf.float32), tf.cast(correct, tf.float32) / tf.cast(n, tf.float32)

    return run_epoch


def _make_eval_fn(logits: keras.Model):
    @tf.function(reduce_retracing=True)
    def eval_chunk(x, y):
        out = logits(x, training=False)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=out)
        correct = tf.equal(tf.argmax(out, 1, output_type=tf.int32), y)
        return tf.reduce_sum(cross_entropy), tf.reduce_sum(tf.cast(correct, tf.float32))

    def evaluate_loss(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Return mean (unweighted) cross-entropy and accuracy."""
        loss = correct = 0.0
        for start in range(0, len(x), EVAL_CHUNK):
            a, b = eval_chunk(x[start:start + EVAL_CHUNK], y[start:start + EVAL_CHUNK])
            loss, correct = loss + float(a), correct + float(b)
        return loss / len(x), correct / len(x)

    return evaluate_loss


def predict_probabilities(model: keras.Model, x) -> np.ndarray:
    """Return the model's probabilities for ``x`` ([N, D] → [N, classes]), in chunks."""
    x = np.asarray(x, dtype=np.float32)
    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    parts = [forward(x[s:s + EVAL_CHUNK]).numpy() for s in range(0, len(x), EVAL_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


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

    keras.utils.set_random_seed(cfg.seed)
    model = build_head(head_config, x_train.shape[1], num_classes, seed=cfg.seed,
                       statistics=feature_statistics(x_train))
    logits = logits_model(model)
    schedule = learning_rate_schedule(cfg)
    optimizer = _make_optimizer(cfg, schedule)
    optimizer.build(model.trainable_variables)  # no variables may be created inside the graph loop
    averager = WeightAverager(model.trainable_variables, cfg.ema_decay) if cfg.ema_decay else None
    class_weights, draw = _balance(y_train, num_classes, cfg.class_balance)
    run_epoch = _make_epoch_fn(logits, optimizer, averager, cfg.batch_size)
    evaluate_loss = _make_eval_fn(logits)
    rng = np.random.default_rng(cfg.seed)
    x_t, y_t = tf.convert_to_tensor(x_train), tf.convert_to_tensor(y_train)
    w_t = tf.convert_to_tensor(class_weights[y_train].astype(np.float32))
    n = len(y_train)
    evaluating = averager.swapped if averager else contextlib.nullcontext
    writers = RunWriters(Path(logdir)) if logdir is not None else None

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    history: list[dict] = []
    best_loss, best_epoch, best_weights, waited = math.inf, 0, None, 0
    show = _show_progress(progress)
    try:
        with logging_redirect_tqdm() if show else contextlib.nullcontext(), \
                tqdm(range(1, cfg.max_epochs + 1), desc="train", unit="epoch", disable=not show,
                     dynamic_ncols=True, leave=False) as bar:
            for epoch in bar:
                order = rng.choice(n, size=n, p=draw) if draw is not None else rng.permutation(n)
                train_loss, train_acc = run_epoch(x_t, y_t, w_t, tf.constant(order, tf.int32))
                steps = int(optimizer.iterations)
                if not math.isfinite(float(train_loss)):
                    log.warning("epoch %d: training loss is %s; stopping (lower learning_rate?)",
                                epoch, float(train_loss))
                    break
                with evaluating():
                    val_loss, val_acc = evaluate_loss(x_val, y_val)
                    improved = val_loss < best_loss - cfg.min_delta
                    if improved:
                        best_loss, best_epoch, waited = val_loss, epoch, 0
                        best_weights = model.get_weights()
                    else:
                        waited += 1
                row = {"epoch": epoch, "train_loss": float(train_loss),
                       "train_accuracy": float(train_acc), "val_loss": val_loss,
                       "val_accuracy": val_acc,
                       # the rate of the epoch's last update (step indices start at 0)
                       "learning_rate": float(schedule(steps - 1))}
                history.append(row)
                if writers:
                    writers.epoch(row)
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_loss=f"{val_loss:.4f}")
                log.info("epoch %d/%d: loss %.4f, accuracy %.4f, val_loss %.4f, val_accuracy "
                         "%.4f, learning_rate %.3g%s", epoch, cfg.max_epochs, row["train_loss"],
                         row["train_accuracy"], val_loss, val_acc, row["learning_rate"],
                         " (best)" if improved else "")
                if waited >= cfg.patience and epoch < cfg.max_epochs:
                    log.info("early stop: no lower validation loss for %d epochs; best epoch %d "
                             "(val_loss %.4f)", waited, best_epoch, best_loss)
                    break
        if best_weights is None:
            raise TrainingDiverged(
                f"training diverged before any finite validation loss (learning_rate "
                f"{cfg.learning_rate}, optimizer {cfg.optimizer!r}); try a lower learning_rate")
        model.set_weights(best_weights)
        val_metrics = evaluate(predict_probabilities(model, x_val), y_val, label_names)
        if writers:
            writers.finish(model, x_train.shape[1], val_metrics, best_epoch)
    finally:
        if writers:
            writers.close()
    stopped_early = len(history) < cfg.max_epochs
    seconds = time.perf_counter() - started
    log.info("trained %d epochs (%d steps) in %.1f s; best epoch %d: val_loss %.4f, "
             "val_accuracy %.4f", len(history), int(optimizer.iterations), seconds, best_epoch,
             best_loss, val_metrics.accuracy)
    return TrainResult(model=model, history=history, best_epoch=best_epoch,
                       stopped_early=stopped_early, seconds=seconds,
                       steps=int(optimizer.iterations), val_metrics=val_metrics,
                       class_weights=[float(w) for w in class_weights])


__all__ = ["TrainConfig", "TrainResult", "WeightAverager", "learning_rate_schedule",
           "predict_probabilities", "train_head"]
