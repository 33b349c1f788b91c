"""Fit a secondary model with a custom training loop that runs under any ``tf.distribute`` strategy.

One loop serves the default, mirrored and multi-worker strategies: variables
are created in ``strategy.scope()``, each global mini-batch is split across the
replicas (``experimental_distribute_dataset``), each replica's loss is its
share of the global mean (``tf.nn.compute_average_loss``), and the optimizer
sums the gradients across replicas, so a run over N replicas follows the
single-device run with the same global batch and seed.

Batch order is a pure function of (seed, epoch), so a run resumed from a
checkpoint continues exactly where the killed one was. A checkpoint (model,
optimizer, epoch counter, moving averages) is saved every ``checkpoint_epochs``
and at the end through ``tf.train.CheckpointManager``, which writes the files
before it updates the ``checkpoint`` index: a kill at any moment leaves the
previous checkpoint usable. In a multi-worker run every worker takes part in
saving, as TensorFlow requires; only the chief writes to the real directory,
the others to a temporary one that is deleted afterwards.

Evaluation and export use a plain (undistributed) copy of the network that
receives the trained weights, or their moving average, after each epoch.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from imgclf.core.errors import ImgclfError, UsageError
from imgclf.models.config import REGRESSION, ModelSpec, TrainConfig
from imgclf.models.data import Data, Split
from imgclf.models.distribute import WorkerRole
from imgclf.models.networks import build_network

log = logging.getLogger(__name__)

EVAL_CHUNK = 4096  # examples per forward pass when evaluating


class TrainingDiverged(ImgclfError, FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    """The trained network (weights to export) and how the fit went."""

    model: keras.Model  # undistributed network holding the final weights (their moving average with EMA)
    history: list[dict]  # one row per epoch trained in this process (see _epoch_row)
    steps: int  # optimizer updates in total, including those before a resume
    epochs: int  # epochs in total
    resumed_from_epoch: int  # 0 = fresh start; else the checkpoint's epoch this run continued from
    seconds: float  # wall time of this process's part of the training
    replicas: int  # strategy.num_replicas_in_sync
    checkpoint: str | None = None  # the last checkpoint written (chief), else None
    final: dict = field(default_factory=dict)  # the last epoch's row


def learning_rate_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """Return the exponential decay ``lr * decay_rate ** (step / (decay_epochs * steps_per_epoch))``."""
    return keras.optimizers.schedules.ExponentialDecay(
        cfg.learning_rate, decay_steps=max(1, round(cfg.decay_epochs * steps_per_epoch)),
        decay_rate=cfg.decay_rate, staircase=False)


def make_optimizer(cfg: TrainConfig, schedule) -> keras.optimizers.Optimizer:
    """Return plain SGD (the curriculum's gradient descent) or Adam on ``schedule``."""
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule)


def _per_example_loss(kind: str, y, out):
    """Return the per-example loss and the per-example metric (squared error or correct flag)."""
    if kind == REGRESSION:
        squared = tf.reduce_sum(tf.square(out - y), axis=-1)
        return squared, squared
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=out)
    correct = tf.cast(tf.equal(tf.argmax(out, axis=-1, output_type=tf.int32), y), tf.float32)
    return cross_entropy, correct


def make_dataset(split: Split, batch_size: int, seed: int, start_epoch: int, epochs: int) -> tf.data.Dataset:
    """Return the global mini-batches of epochs ``start_epoch`` … ``epochs - 1``, in a seeded order.

    Each epoch is a permutation drawn from (seed, epoch) alone, cut into whole batches
    (the remainder is dropped, so every step splits evenly across replicas).
    """
    x, y, n = tf.constant(split.x), tf.constant(split.y), len(split)

    def epoch_batches(epoch):
        keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys)).batch(batch_size, drop_remainder=True)

    dataset = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_batches)
    dataset = dataset.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx))).prefetch(2)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return dataset.with_options(options)


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Return ``model``'s raw outputs for ``x`` in chunks (logits, or normalised y)."""
    parts = [np.asarray(model(tf.constant(x[s:s + EVAL_CHUNK]), training=False))
             for s in range(0, len(x), EVAL_CHUNK)]
    return np.concatenate(parts)


def evaluate(kind: str, model: keras.Model, split: Split, y_scale: float = 1.0) -> dict:
    """Return ``{"loss", "accuracy"}`` (digits) or ``{"rmse", "mse"}`` (regression, in raw y: × ``y_scale``)."""
    out = predict(model, split.x)
    if kind == REGRESSION:
        rmse = math.sqrt(float(np.mean(np.square(out.astype(np.float64) - split.y)))) * y_scale
        return {"rmse": rmse, "mse": rmse * rmse}
    logits = out.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(split.y)), split.y].mean())
    return {"loss": loss, "accuracy": float(np.mean(out.argmax(axis=1) == split.y))}


def fit(spec: ModelSpec, net, cfg: TrainConfig, data: Data, strategy, role: WorkerRole,
        checkpoint_dir: Path, logdir: Path | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Train ``spec``'s network on ``data.train`` under ``strategy``, resuming from ``checkpoint_dir``.

    Args:
        spec, net, cfg: the model, its network config and the training settings (validated).
        strategy: a ``tf.distribute.Strategy`` (see :func:`imgclf.models.distribute.make_strategy`).
        role: this process's role; only the chief writes ``checkpoint_dir`` and ``logdir``.
        checkpoint_dir: where checkpoints are kept; a checkpoint found there is resumed from.
        logdir: TensorBoard run directory (chief only; None = no logs).
        on_epoch: called with each epoch's row (progress display).

    Returns:
        The trained network and the history.

    Raises:
        ValueError: the global batch does not split across the replicas or exceeds the training set.
        TrainingDiverged: the loss became NaN or infinite.
    """
    started = time.perf_counter()
    replicas = strategy.num_replicas_in_sync
    batch, n = cfg.batch_size, len(data.train)
    if batch % replicas:
        raise ValueError(f"batch_size {batch} must be a multiple of the {replicas} replicas, so each gets an "
                         f"equal share of every global batch")
    steps_per_epoch = n // batch
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size {batch} is larger than the training set ({n} examples)")
    y_scale = _y_scale(data)

    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_network(net, cfg.seed)
        schedule = learning_rate_schedule(cfg, steps_per_epoch)
        optimizer = make_optimizer(cfg, schedule)
        optimizer.build(model.trainable_variables)
        epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        shadows = [tf.Variable(tf.convert_to_tensor(v), trainable=False, name=f"ema_{i}")
                   for i, v in enumerate(model.trainable_variables)] if cfg.ema_decay else []
    evaluated = build_network(net, cfg.seed)  # plain copy: evaluation and export

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_counter, ema=shadows)
    write_dir = Path(checkpoint_dir) if role.is_chief else Path(tempfile.mkdtemp(
        prefix=f"imgclf-{role.task_type}{role.task_id}-checkpoints-"))
    manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=2)
    try:
        start_epoch = _restore(checkpoint, Path(checkpoint_dir), epoch_counter, optimizer)
        if role.num_workers > 1:
            _check_same_start(strategy, start_epoch, checkpoint_dir)
        if start_epoch > cfg.epochs:
            raise ValueError(f"the checkpoint in {str(checkpoint_dir)!r} is at epoch {start_epoch}, beyond "
                             f"--epochs {cfg.epochs}; pass a larger --epochs or another --checkpoint-dir")
        train_steps = _make_train_steps(spec.kind, model, optimizer, strategy, batch, shadows, cfg.ema_decay)
        iterator = iter(strategy.experimental_distribute_dataset(
            make_dataset(data.train, batch, cfg.seed, start_epoch, cfg.epochs)))
        writers = _Writers(Path(logdir), data.validation is not None) \
            if logdir is not None and role.is_chief else None
        history: list[dict] = []
        last_saved = None
        try:
            if start_epoch == cfg.epochs:
                log.info("checkpoint %s is at the last epoch (%d); nothing left to train", checkpoint_dir,
                         start_epoch)
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                epoch_started = time.perf_counter()
                loss_sum, metric_sum = train_steps(iterator, tf.constant(steps_per_epoch))
                loss = float(loss_sum) / steps_per_epoch
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"epoch {epoch}: the training loss is {loss}; training diverged "
                                           f"(learning rate {cfg.learning_rate}); try a lower --learning-rate")
                epoch_counter.assign(epoch)
                _copy_weights(evaluated, shadows or model.trainable_variables)
                steps = _value(optimizer.iterations)
                metric = float(metric_sum) / (steps_per_epoch * batch)
                row = _epoch_row(spec.kind, epoch, cfg.epochs, steps, loss, metric, float(schedule(steps - 1)),
                                 evaluated, data, y_scale, time.perf_counter() - epoch_started)
                history.append(row)
                if writers:
                    writers.epoch(row)
                if epoch % cfg.checkpoint_epochs == 0 or epoch == cfg.epochs:
                    last_saved = manager.save(checkpoint_number=epoch)  # every worker takes part
                log.info("epoch %d/%d: %s", epoch, cfg.epochs, row)
                if on_epoch is not None:
                    on_epoch(row)
        finally:
            if writers:
                writers.close()
        if not history:
            _copy_weights(evaluated, shadows or model.trainable_variables)
    finally:
        if not role.is_chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    return FitResult(model=evaluated, history=history, steps=_value(optimizer.iterations), epochs=cfg.epochs,
                     resumed_from_epoch=start_epoch, seconds=time.perf_counter() - started, replicas=replicas,
                     checkpoint=last_saved if role.is_chief else None, final=history[-1] if history else {})


def _y_scale(data: Data) -> float:
    norm = data.normalization
    return float(norm["y_max"] - norm["y_min"]) if norm else 1.0


def _restore(checkpoint: tf.train.Checkpoint, directory: Path, epoch_counter, optimizer) -> int:
    """Restore the newest checkpoint in ``directory`` if there is one; return its epoch (0 = none)."""
    latest = tf.train.latest_checkpoint(str(directory)) if directory.is_dir() else None
    if latest is None:
        return 0
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise ValueError(f"the checkpoint {latest!r} does not fit this model and its settings "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); pass another "
                         f"--checkpoint-dir or delete that one to start afresh") from exc
    epoch = int(epoch_counter.numpy())
    log.info("resuming from %s: epoch %d, step %d", latest, epoch, _value(optimizer.iterations))
    return epoch


def _check_same_start(strategy, start_epoch: int, checkpoint_dir: Path) -> None:
    """Raise on every worker unless all of them restored the same epoch (a collective: all must call it).

    ReduceOp has only SUM and MEAN: the epochs are all equal exactly when n·Σe² = (Σe)², and every
    worker computes the same two sums, so all of them decide alike.
    """
    epoch = tf.constant(start_epoch, tf.int64)

    @tf.function
    def sums():
        per_replica = strategy.run(lambda: tf.stack([epoch, epoch * epoch]))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    total, squares = (int(v) for v in sums().numpy())
    if strategy.num_replicas_in_sync * squares != total * total:
        raise ValueError(f"the workers resumed from different epochs: every worker must read the chief's "
                         f"checkpoints at {str(checkpoint_dir)!r} (shared storage, or pass --checkpoint-dir "
                         f"with a path they all see)")


def _make_train_steps(kind: str, model, optimizer, strategy, global_batch: int, shadows: list,
                      ema_decay: float | None):
    """Return a tf.function running ``steps`` distributed updates; it returns (sum of losses, sum of metric)."""
    variables = model.trainable_variables

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            per_example, metric = _per_example_loss(kind, y, out)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:  # L2 on the kernels, counted once across replicas
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, tf.reduce_sum(metric)

    @tf.function
    def train_steps(iterator, steps):
        loss_sum, metric_sum = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(steps):
            loss, metric = strategy.run(replica_step, args=next(iterator))
            loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            metric_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, metric, axis=None)
            if shadows:
                # tf.train.ExponentialMovingAverage with num_updates, as the curriculum used it.
                t = tf.cast(optimizer.iterations, tf.float32)
                decay = tf.minimum(ema_decay, (1.0 + t) / (10.0 + t))
                for shadow, variable in zip(shadows, variables):
                    shadow.assign(decay * shadow + (1.0 - decay) * tf.convert_to_tensor(variable))
        return loss_sum, metric_sum

    return train_steps


def _value(variable) -> int:
    """Return an integer variable's value (Keras, TensorFlow or mirrored variable)."""
    return int(tf.convert_to_tensor(variable).numpy())


def _copy_weights(target: keras.Model, sources) -> None:
    for variable, source in zip(target.trainable_variables, sources):
        variable.assign(np.asarray(tf.convert_to_tensor(source)))


def _epoch_row(kind: str, epoch: int, epochs: int, steps: int, loss: float, metric: float, learning_rate: float,
               evaluated: keras.Model, data: Data, y_scale: float, seconds: float) -> dict:
    """Return one epoch's figures: training loss/metric (during the epoch), validation, rate."""
    row = {"epoch": epoch, "epochs": epochs, "steps": steps, "train_loss": loss}
    if kind == REGRESSION:
        row["train_rmse"] = math.sqrt(metric) * y_scale  # raw y units, over the epoch's batches
    else:
        row["train_accuracy"] = metric
        if data.validation is not None:
            val = evaluate(kind, evaluated, data.validation)
            row["val_loss"], row["val_accuracy"] = val["loss"], val["accuracy"]
    row["learning_rate"] = learning_rate
    row["seconds"] = round(seconds, 3)
    return row


class _Writers:
    """TensorBoard writers for the train and validation curves (step = epoch)."""

    def __init__(self, logdir: Path, validation: bool):
        self.train = tf.summary.create_file_writer(str(logdir / "train"))
        self.validation = tf.summary.create_file_writer(str(logdir / "validation")) if validation else None

    def epoch(self, row: dict) -> None:
        from imgclf.training.tensorboard_log import write_scalar

        step = row["epoch"]
        with self.train.as_default():
            write_scalar("loss", row["train_loss"], step)
            for key in ("train_accuracy", "train_rmse"):
                if key in row:
                    write_scalar(key.removeprefix("train_"), row[key], step)
            write_scalar("learning_rate", row["learning_rate"], step)
        if self.validation is not None and "val_loss" in row:
            with self.validation.as_default():
                write_scalar("loss", row["val_loss"], step)
                write_scalar("accuracy", row["val_accuracy"], step)

    def close(self) -> None:
        for writer in (self.train, self.validation):
            if writer is None:
                continue
            writer.flush()
            writer.close()
