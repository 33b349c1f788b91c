"""The one training loop's parts: moving average, batch order, schedule periods."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from imgclf.training.config import TrainConfig
from imgclf.training.loop import WeightAverager, batch_indices, learning_rate_schedule, steps_per_epoch


def test_weight_averager_follows_the_tf1_rule():
    variable = tf.Variable([0.0, 10.0])
    averager = WeightAverager([variable], decay=0.5)
    expected = np.array([0.0, 10.0])
    for t, value in enumerate([[1.0, 1.0], [2.0, 0.0], [4.0, 4.0]], start=1):
        variable.assign(value)
        averager.update(t)
        decay = min(0.5, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * np.array(value)
        np.testing.assert_allclose(averager.shadows[0].numpy(), expected, rtol=1e-6)
    with averager.swapped():
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(variable.numpy(), [4.0, 4.0])


def _epochs(cfg: TrainConfig, n: int, start: int, draw=None) -> list[np.ndarray]:
    return [b.numpy() for b in batch_indices(n, cfg, start, draw)]


def test_batch_order_depends_on_seed_and_epoch_alone():
    cfg = TrainConfig(batch_size=4, epochs=3, seed=5)
    full, resumed = _epochs(cfg, 10, 0), _epochs(cfg, 10, 1)
    assert len(full) == 3 * steps_per_epoch(10, cfg) == 9 and [len(b) for b in full[:3]] == [4, 4, 2]
    for a, b in zip(full[3:], resumed):  # a run resumed at epoch 1 sees what the unbroken run saw
        np.testing.assert_array_equal(a, b)
    for e in range(3):  # every epoch is a permutation
        assert sorted(np.concatenate(full[3 * e:3 * e + 3]).tolist()) == list(range(10))
    other = _epochs(TrainConfig(batch_size=4, epochs=3, seed=6), 10, 0)
    assert not all(np.array_equal(a, b) for a, b in zip(full, other))
    dropped = _epochs(TrainConfig(batch_size=4, epochs=1, seed=5, drop_remainder=True), 10, 0)
    assert [len(b) for b in dropped] == [4, 4]


def test_drawn_batches_follow_the_probabilities():
    cfg = TrainConfig(batch_size=1000, epochs=4, seed=0)
    draw = np.array([0.7, 0.1, 0.1, 0.1])
    counts = np.bincount(np.concatenate(_epochs(cfg, 4, 0, draw)), minlength=4)
    assert counts.sum() == 16 and counts[0] > counts[1:].max()  # n draws per epoch, with replacement


def test_decay_period_in_epochs_counts_steps_per_epoch():
    cfg = TrainConfig(learning_rate=1.0, decay_rate=0.5, decay_epochs=2.0, decay_steps=1, staircase=False)
    schedule = learning_rate_schedule(cfg, steps_per_epoch=10)
    assert float(schedule(20)) == pytest.approx(0.5) and float(schedule(10)) == pytest.approx(0.5 ** 0.5)
    with pytest.raises(ValueError, match="needs steps_per_epoch"):
        learning_rate_schedule(cfg)
