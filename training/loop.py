"""The one training loop: the classifier head and the secondary models, under any ``tf.distribute`` strategy.

What differs between models comes from the caller: a builder of the network,
an :class:`Objective` (the per-example loss and the training metric), a
validation function and the :class:`~imgclf.training.config.TrainConfig`.
The loop owns the rest: the exponential-decay schedule, the optimizer, the
moving average of the weights, early stopping, TensorBoard scalars,
resumable checkpoints, divergence and progress.

Distribution: variables are created in ``strategy.scope()``; each global
mini-batch of example indices is split across the replicas
(``experimental_distribute_dataset``); each replica's loss is its share of the
global mean (``tf.nn.compute_average_loss``) and the optimizer sums the
gradients, so a run over N replicas follows the one-device run with the same
global batch and seed.

Batch order is a pure function of (seed, epoch), so a run resumed from a
checkpoint continues exactly where the killed one was. A checkpoint (model,
optimizer, epoch counter, moving averages) is saved every ``checkpoint_epochs``
and at the end through ``tf.train.CheckpointManager``, which writes the files
before it updates its ``checkpoint`` index: a kill at any moment leaves the
previous checkpoint usable. In a multi-worker run every worker takes part in
saving, as TensorFlow requires; only the chief writes to the real directory,
the others to a temporary one deleted afterwards. Early stopping's state (best
epoch, patience) is not checkpointed; the head, which uses it, trains in seconds.

Evaluation and the returned model use a plain (undistributed) copy of the
network that receives the trained weights, or their moving average, after
each epoch. All epochs of one run go through a single ``tf.function`` per
epoch (a graph loop over its mini-batches), so 10,000 vectors per epoch cost
milliseconds rather than a Python call per step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from imgclf.core.errors import TrainingDiverged, UsageError
from imgclf.training.config import TrainConfig
from imgclf.training.distribute import WorkerRole
from imgclf.training.tensorboard_log import RunWriters

log = logging.getLogger(__name__)

EVAL_CHUNK = 4096  # examples per forward pass when evaluating (bounds memory, not results)


@dataclass
class Examples:
    """The training set as the loop sees it: inputs, targets and how examples are weighted or drawn."""

    x: np.ndarray  # [N, ...] float32 inputs
    y: np.ndarray  # [N] int32 class labels, or [N, k] float32 regression targets
    weights: np.ndarray | None = None  # [N] per-example loss weights (class balance); None = all 1
    draw: np.ndarray | None = None  # [N] probabilities: each epoch draws N examples with replacement

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Objective:
    """What the loop minimises and which running figure it reports, for one kind of model."""

    per_example: Callable  # (y, outputs) -> (loss [B], metric [B]), TensorFlow ops
    metric: str  # the row key's suffix: "accuracy" or "rmse"
    summarize: Callable[[float], float] = float  # mean per-example metric -> the reported figure


def _cross_entropy(y, out):
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=out)
    correct = tf.cast(tf.equal(tf.argmax(out, axis=-1, output_type=tf.int32), y), tf.float32)
    return loss, correct


def _squared_error(y, out):
    squared = tf.reduce_sum(tf.square(out - y), axis=-1)
    return squared, squared


CLASSIFICATION = Objective(_cross_entropy, "accuracy")  # logits in, softmax cross-entropy, accuracy


def regression(y_scale: float = 1.0) -> Objective:
    """Return the squared-error objective; its RMSE is reported in raw y units (× ``y_scale``)."""
    return Objective(_squared_error, "rmse", lambda mse: math.sqrt(mse) * y_scale)


@dataclass
class FitResult:
    """The trained network and how the fit went."""

    model: keras.Model  # plain copy holding the kept weights (their moving average with EMA)
    # One row per epoch trained in this process: epoch, epochs, steps, train_loss (mean over the epoch's
    # mini-batches of what was minimised, L2 and class weights included), train_<metric>, val_* (from the
    # validation function, on the evaluated weights), learning_rate (of the epoch's last update), seconds.
    history: list[dict]
    steps: int  # optimizer updates in total, including those before a resume
    epochs: int  # epochs configured
    resumed_from_epoch: int = 0  # 0 = fresh start; else the checkpoint's epoch this run continued from
    seconds: float = 0.0  # wall time of this process's part of the training
    replicas: int = 1  # strategy.num_replicas_in_sync
    checkpoint: str | None = None  # the last checkpoint written (chief), else None
    best_epoch: int = 0  # with early stopping: the 1-based epoch whose weights the model holds; else the last
    stopped_early: bool = False  # True when patience ended training before cfg.epochs

    @property
    def final(self) -> dict:
        """Return the last epoch's row ({} when nothing was trained)."""
        return self.history[-1] if self.history else {}


class WeightAverager:
    """Shadow copies of variables, kept as an exponential moving average of their values.

    The update follows ``tf.train.ExponentialMovingAverage`` with ``num_updates``:
    ``decay_t = min(decay, (1 + t) / (10 + t))`` after update ``t``, so the average
    is not dragged towards the initial weights early in training (the curriculum's rule).
    """

    def __init__(self, variables, decay: float):
        self.variables = list(variables)
        self.decay = float(decay)
        self.shadows = [tf.Variable(tf.convert_to_tensor(v), trainable=False, name=f"ema_{i}")
                        for i, v in enumerate(self.variables)]

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


def learning_rate_schedule(cfg: TrainConfig, steps_per_epoch: int | None = None):
    """Return ``lr * decay_rate ** (step / period)``; the period is ``decay_steps``, or ``decay_epochs`` epochs."""
    if cfg.decay_epochs is not None:
        if steps_per_epoch is None:
            raise ValueError("a decay period in epochs needs steps_per_epoch")
        period = max(1, round(cfg.decay_epochs * steps_per_epoch))
    else:
        period = cfg.decay_steps
    return keras.optimizers.schedules.ExponentialDecay(
        cfg.learning_rate, decay_steps=period, decay_rate=cfg.decay_rate, staircase=cfg.staircase)


def make_optimizer(cfg: TrainConfig, schedule) -> keras.optimizers.Optimizer:
    """Return SGD (with ``cfg.momentum``; 0 = plain gradient descent) or Adam on ``schedule``."""
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum)


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    """Return the optimizer updates per epoch over ``n`` examples."""
    return n // cfg.batch_size if cfg.drop_remainder else -(-n // cfg.batch_size)


def batch_indices(n: int, cfg: TrainConfig, start_epoch: int, draw: np.ndarray | None = None) -> tf.data.Dataset:
    """Return the global mini-batches of example indices of epochs ``start_epoch`` … ``cfg.epochs - 1``.

    Each epoch is a permutation (or, with ``draw``, ``n`` draws with replacement) made from
    (seed, epoch) alone, cut into batches of ``cfg.batch_size``.
    """
    seed = tf.constant(cfg.seed, tf.int64)
    log_draw = tf.math.log(tf.constant(draw, tf.float32))[None] if draw is not None else None

    def one_epoch(epoch):
        key = tf.stack([seed, epoch])
        if log_draw is None:
            order = tf.argsort(tf.random.stateless_uniform([n], seed=key))
        else:
            order = tf.cast(tf.random.stateless_categorical(log_draw, n, seed=key)[0], tf.int32)
        return tf.data.Dataset.from_tensor_slices(order).batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)

    dataset = tf.data.Dataset.range(start_epoch, cfg.epochs).flat_map(one_epoch).prefetch(2)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return dataset.with_options(options)


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Return ``model``'s outputs for ``x`` in chunks."""
    parts = [np.asarray(model(tf.constant(x[s:s + EVAL_CHUNK]), training=False))
             for s in range(0, len(x), EVAL_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, *model.output_shape[1:]), np.float32)


def classification_figures(logits: np.ndarray, y: np.ndarray) -> dict:
    """Return ``{"loss", "accuracy"}``: mean softmax cross-entropy (float64) and accuracy of ``logits``."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return {"loss": float(-log_probs[np.arange(len(y)), y].mean()),
            "accuracy": float(np.mean(logits.argmax(axis=1) == y))}


def fit(build: Callable[[], keras.Model], train: Examples, cfg: TrainConfig, objective: Objective, *,
        forward: Callable[[keras.Model], keras.Model] | None = None,
        validate: Callable[[keras.Model], dict] | None = None,
        strategy: tf.distribute.Strategy | None = None, role: WorkerRole | None = None,
        checkpoint_dir: Path | None = None, writers: RunWriters | None = None,
        on_epoch: Callable[[dict], None] | None = None, progress: bool | None = False) -> FitResult:
    """Train the network ``build()`` makes on ``train`` under ``strategy``; return the kept weights.

    Args:
        build: returns a fresh network; called under ``strategy.scope()`` and once more for the plain
            copy that is evaluated and returned. Seeded by ``keras.utils.set_random_seed(cfg.seed)``.
        train: the training examples.
        cfg: the settings (validated here).
        objective: the per-example loss on ``forward(model)``'s outputs and the running metric.
        forward: the view of the network that training calls (the head's logits); default the network.
        validate: figures of the evaluated copy on the validation set, ``{"loss": ..., ...}``; each
            epoch's row gets them as ``val_*``; early stopping watches ``loss``. None = no validation.
        strategy: a ``tf.distribute.Strategy`` (see :func:`imgclf.training.distribute.make_strategy`);
            default: TensorFlow's default strategy.
        role: this process's role; only the chief writes ``checkpoint_dir`` (default: a lone chief).
        checkpoint_dir: where checkpoints are kept and resumed from; None = no checkpoints.
        writers: TensorBoard writers for the epoch scalars (the chief's), or None.
        on_epoch: called with each epoch's row (progress lines).
        progress: show a bar over epochs (None = only when stderr is a terminal).

    Raises:
        UsageError: the global batch does not split across the replicas or exceeds the training set.
        ValueError: a checkpoint that does not fit, or workers that resumed from different epochs.
        TrainingDiverged: the loss became NaN or infinite (at any epoch: a run that diverged is not
            trusted, even with an earlier epoch's weights in hand; nothing is returned to export).
    """
    started = time.perf_counter()
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    role = role or WorkerRole()
    replicas = strategy.num_replicas_in_sync
    per_epoch = _checked_steps_per_epoch(len(train), cfg, replicas)
    net = _Network.build(build, cfg, strategy, per_epoch)
    train_steps = _make_train_steps((forward or (lambda model: model))(net.model), objective, net.optimizer,
                                    strategy, train, net.averager)
    checkpoint = tf.train.Checkpoint(model=net.model, optimizer=net.optimizer, epoch=net.epoch_counter,
                                     ema=net.shadows)
    write_dir = None
    if checkpoint_dir is not None:
        write_dir = Path(checkpoint_dir) if role.is_chief else Path(tempfile.mkdtemp(
            prefix=f"imgclf-{role.task_type}{role.task_id}-checkpoints-"))
    try:
        start_epoch = _resume(checkpoint, checkpoint_dir, net, cfg, strategy, role)
        manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=2) if write_dir else None
        iterator = iter(strategy.experimental_distribute_dataset(
            batch_indices(len(train), cfg, start_epoch, train.draw)))
        run = _Run(cfg, validate is not None)
        if start_epoch == cfg.epochs:
            log.info("checkpoint %s is at the last epoch (%d); nothing left to train", checkpoint_dir, start_epoch)
        epochs = _Epochs(net, train_steps, per_epoch, cfg, objective, validate, run, manager, writers, on_epoch)
        epochs.train(iterator, start_epoch, progress)
        if run.best_weights is not None:
            net.evaluated.set_weights(run.best_weights)
        elif not run.history:
            net.evaluate_current()
    finally:
        if write_dir is not None and not role.is_chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    history = run.history
    return FitResult(model=net.evaluated, history=history, steps=_value(net.optimizer.iterations), epochs=cfg.epochs,
                     resumed_from_epoch=start_epoch, seconds=time.perf_counter() - started, replicas=replicas,
                     checkpoint=run.checkpoint if role.is_chief else None,
                     best_epoch=run.best_epoch or (history[-1]["epoch"] if history else start_epoch),
                     stopped_early=run.stopped_early)


def _checked_steps_per_epoch(n: int, cfg: TrainConfig, replicas: int) -> int:
    """Return the updates per epoch, or raise UsageError when the global batch cannot be split or filled."""
    if cfg.batch_size % replicas:
        raise UsageError(f"batch_size {cfg.batch_size} must be a multiple of the {replicas} replicas, so each "
                         f"gets an equal share of every global batch")
    if replicas > 1 and not cfg.drop_remainder:
        raise UsageError("training over several replicas needs drop_remainder, so every step splits evenly")
    per_epoch = steps_per_epoch(n, cfg)
    if per_epoch == 0:
        raise UsageError(f"batch_size {cfg.batch_size} is larger than the training set ({n} examples)")
    return per_epoch


@dataclass
class _Network:
    """The network being trained with its optimizer and moving averages, and the plain copy that is evaluated."""

    model: keras.Model  # built under the strategy's scope
    evaluated: keras.Model  # plain (undistributed): receives the weights (or averages) after each epoch
    schedule: keras.optimizers.schedules.LearningRateSchedule
    optimizer: keras.optimizers.Optimizer
    epoch_counter: tf.Variable  # the last epoch trained (checkpointed)
    averager: WeightAverager | None

    @classmethod
    def build(cls, build: Callable[[], keras.Model], cfg: TrainConfig, strategy: tf.distribute.Strategy,
              per_epoch: int) -> _Network:
        """Seed, then create the variables: the network's, the optimizer's (all before the graph loop), the copy's."""
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            model = build()
            schedule = learning_rate_schedule(cfg, per_epoch)
            optimizer = make_optimizer(cfg, schedule)
            optimizer.build(model.trainable_variables)  # no variables may be created inside the graph loop
            epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch",
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            averager = WeightAverager(model.trainable_variables, cfg.ema_decay) if cfg.ema_decay else None
        return cls(model, build(), schedule, optimizer, epoch_counter, averager)

    @property
    def shadows(self) -> list:
        """Return the moving averages of the weights ([] without them)."""
        return self.averager.shadows if self.averager else []

    def evaluate_current(self) -> None:
        """Copy the kept weights (their moving averages, with EMA) into the evaluated network."""
        _copy_weights(self.evaluated, self.shadows or self.model.trainable_variables)


def _resume(checkpoint: tf.train.Checkpoint, checkpoint_dir: Path | None, net: _Network, cfg: TrainConfig,
            strategy, role: WorkerRole) -> int:
    """Restore the newest checkpoint of ``checkpoint_dir`` if any; return the epoch to continue from (0 = fresh)."""
    if checkpoint_dir is None:
        return 0
    start_epoch = _restore(checkpoint, Path(checkpoint_dir), net.epoch_counter, net.optimizer)
    if role.num_workers > 1:
        _check_same_start(strategy, start_epoch, checkpoint_dir)
    if start_epoch > cfg.epochs:
        raise ValueError(f"the checkpoint in {str(checkpoint_dir)!r} is at epoch {start_epoch}, beyond "
                         f"--epochs {cfg.epochs}; pass a larger --epochs or another --checkpoint-dir")
    return start_epoch


class _Epochs:
    """The epochs of one fit: train, evaluate, record, checkpoint and report each, until the end or a stop."""

    def __init__(self, net: _Network, train_steps, per_epoch: int, cfg: TrainConfig, objective: Objective,
                 validate: Callable[[keras.Model], dict] | None, run: _Run,
                 manager: tf.train.CheckpointManager | None, writers: RunWriters | None,
                 on_epoch: Callable[[dict], None] | None):
        self.net, self.train_steps, self.per_epoch, self.cfg = net, train_steps, per_epoch, cfg
        self.objective, self.validate, self.run = objective, validate, run
        self.manager, self.writers, self.on_epoch = manager, writers, on_epoch

    def train(self, iterator, start_epoch: int, progress: bool | None) -> None:
        """Train epochs ``start_epoch + 1`` … ``cfg.epochs``, with a bar when ``progress`` says so."""
        cfg, run = self.cfg, self.run
        show = _show_progress(progress)
        with logging_redirect_tqdm() if show else contextlib.nullcontext(), \
                tqdm(range(start_epoch + 1, cfg.epochs + 1), desc="train", unit="epoch", disable=not show,
                     dynamic_ncols=True, leave=False) as bar:
            for epoch in bar:
                row, improved = self.epoch(iterator, epoch)
                bar.set_postfix(loss=f"{row['train_loss']:.4f}")
                log.info("epoch %d/%d: %s%s", epoch, cfg.epochs, _figures(row), " (best)" if improved else "")
                if self.on_epoch is not None:
                    self.on_epoch(row)
                if run.patience_ran_out() and epoch < cfg.epochs:
                    log.info("early stop: no lower validation loss for %d epochs; best epoch %d (val_loss %.4f)",
                             run.waited, run.best_epoch, run.best_loss)
                    run.stopped_early = True
                    break

    def epoch(self, iterator, epoch: int) -> tuple[dict, bool]:
        """Train one epoch; return its recorded row and whether it is the best yet.

        Raises:
            TrainingDiverged: the epoch's training loss is NaN or infinite.
        """
        cfg, net, run = self.cfg, self.net, self.run
        epoch_started = time.perf_counter()
        loss_sum, metric_sum, count = (float(v) for v in self.train_steps(iterator, tf.constant(self.per_epoch)))
        loss = loss_sum / count
        if not math.isfinite(loss):
            # Stopping and keeping an earlier epoch would export weights from a run that blew up, which
            # usually sit at chance (issue 23): fail the run, export nothing.
            raise TrainingDiverged(
                f"epoch {epoch}: the training loss is {loss}; training diverged (learning_rate "
                f"{cfg.learning_rate}, optimizer {cfg.optimizer!r}); nothing is exported; try a lower "
                f"learning_rate (--learning-rate)")
        net.epoch_counter.assign(epoch)
        net.evaluate_current()
        steps = _value(net.optimizer.iterations)
        row = {"epoch": epoch, "epochs": cfg.epochs, "steps": steps, "train_loss": loss,
               f"train_{self.objective.metric}": self.objective.summarize(metric_sum / count)}
        if self.validate is not None:
            row.update({f"val_{k}": v for k, v in self.validate(net.evaluated).items()})
        row["learning_rate"] = float(net.schedule(steps - 1))  # the epoch's last update (0-based steps)
        row["seconds"] = round(time.perf_counter() - epoch_started, 3)
        improved = run.record(row, net.evaluated)
        if self.writers:
            self.writers.epoch(row)
        if self.manager and (epoch % cfg.checkpoint_epochs == 0 or epoch == cfg.epochs):
            run.checkpoint = self.manager.save(checkpoint_number=epoch)  # every worker takes part
        return row, improved


class _Run:
    """The history of one fit and, with early stopping, the best epoch so far."""

    def __init__(self, cfg: TrainConfig, validating: bool):
        self.early_stopping = cfg.patience is not None and validating
        self.patience, self.min_delta = cfg.patience, cfg.min_delta
        self.history: list[dict] = []
        self.best_loss, self.best_epoch, self.best_weights, self.waited = math.inf, 0, None, 0
        self.stopped_early = False
        self.checkpoint: str | None = None

    def record(self, row: dict, evaluated: keras.Model) -> bool:
        """Append ``row``; keep ``evaluated``'s weights when its validation loss is the lowest yet."""
        self.history.append(row)
        if not self.early_stopping:
            return False
        improved = row["val_loss"] < self.best_loss - self.min_delta
        if improved:
            self.best_loss, self.best_epoch, self.waited = row["val_loss"], row["epoch"], 0
            self.best_weights = evaluated.get_weights()
        else:
            self.waited += 1
        return improved

    def patience_ran_out(self) -> bool:
        """Return whether early stopping ends the run now."""
        return self.early_stopping and self.waited >= self.patience


def _figures(row: dict) -> str:
    shown = [f"{k.removeprefix('train_')} {row[k]:.4f}" for k in row if k.startswith("train_")]
    shown += [f"{k} {row[k]:.4f}" for k in row if k.startswith("val_")]
    return ", ".join(shown + [f"learning_rate {row['learning_rate']:.3g}"])


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _make_train_steps(net: keras.Model, objective: Objective, optimizer, strategy, train: Examples,
                      averager: WeightAverager | None):
    """Return a tf.function running ``steps`` distributed updates; it returns (Σ loss·batch, Σ metric, Σ batch)."""
    variables = net.trainable_variables
    x, y = tf.constant(train.x), tf.constant(train.y)
    weights = tf.constant(np.ones(len(train), np.float32) if train.weights is None
                          else np.asarray(train.weights, np.float32))

    def replica_step(indices):
        xb, yb, wb = tf.gather(x, indices), tf.gather(y, indices), tf.gather(weights, indices)
        with tf.GradientTape() as tape:
            out = net(xb, training=True)
            per_example, metric = objective.per_example(yb, out)
            # This replica's share of the global batch's mean (the global size: this share × replicas).
            loss = tf.nn.compute_average_loss(per_example, sample_weight=wb)
            if net.losses:  # L2 on the kernels, counted once across replicas
                loss += tf.nn.scale_regularization_loss(tf.add_n(net.losses))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, tf.reduce_sum(metric), tf.cast(tf.shape(indices)[0], tf.float32)

    @tf.function
    def train_steps(iterator, steps):
        loss_sum, metric_sum, count = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(steps):
            loss, metric, size = strategy.run(replica_step, args=(next(iterator),))
            batch = strategy.reduce(tf.distribute.ReduceOp.SUM, size, axis=None)
            loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None) * batch
            metric_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, metric, axis=None)
            count += batch
            if averager is not None:
                averager.update(optimizer.iterations)
        return loss_sum, metric_sum, count

    return train_steps


def _value(variable) -> int:
    """Return an integer variable's value (Keras, TensorFlow or mirrored variable)."""
    return int(tf.convert_to_tensor(variable).numpy())


def _copy_weights(target: keras.Model, sources) -> None:
    for variable, source in zip(target.trainable_variables, sources):
        variable.assign(np.asarray(tf.convert_to_tensor(source)))


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


__all__ = ["CLASSIFICATION", "Examples", "FitResult", "Objective", "WeightAverager", "batch_indices",
           "classification_figures", "fit", "learning_rate_schedule", "make_optimizer", "predict", "regression",
           "steps_per_epoch"]
