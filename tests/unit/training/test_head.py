"""The dense head: built from its config, softmax last, L2 in its losses, exportable."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgclf.training.head import HeadConfig, build_head, layer_specs, logits_model


def _kinds(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_default_head_is_a_softmax_classifier():
    model = build_head(HeadConfig(), input_dim=32, num_classes=4, seed=0)
    assert _kinds(model) == ["InputLayer", "Normalization", "Dense", "Softmax"]
    assert model.input_shape == (None, 32)
    assert model.output_shape == (None, 4)
    x = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    probabilities = model(x).numpy()
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert (probabilities > 0).all()


def test_hidden_layer_and_dropout_build_the_right_layers():
    model = build_head(HeadConfig(hidden_units=16, dropout=0.25, l2=1e-3), 32, 5, seed=0)
    assert _kinds(model) == ["InputLayer", "Normalization", "Dense", "Dropout", "Dense", "Softmax"]
    hidden, dropout, logits = model.layers[2:5]
    assert hidden.units == 16 and hidden.activation is keras.activations.relu
    assert dropout.rate == 0.25
    assert logits.units == 5 and logits.activation is keras.activations.linear
    for dense in (hidden, logits):
        assert isinstance(dense.kernel_regularizer, keras.regularizers.L2)
        assert dense.kernel_regularizer.l2 == pytest.approx(1e-3)
        assert dense.bias_regularizer is None


def test_dropout_without_hidden_layer_drops_bottleneck_inputs():
    model = build_head(HeadConfig(dropout=0.5), 8, 3, seed=0)
    assert _kinds(model) == ["InputLayer", "Normalization", "Dropout", "Dense", "Softmax"]
    x = np.ones((4, 8), np.float32)
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=False))


def test_layer_specs_are_data():
    specs = layer_specs(HeadConfig(hidden_units=8, dropout=0.1), num_classes=3)
    assert [s["kind"] for s in specs] == ["standardize", "dense", "dropout", "dense", "softmax"]
    assert specs[1]["units"] == 8 and specs[3]["units"] == 3


def test_no_regularizer_when_l2_is_zero():
    model = build_head(HeadConfig(l2=0.0), 8, 3, seed=0)
    assert model.get_layer("logits").kernel_regularizer is None
    assert logits_model(model).losses == []


def test_l2_penalty_is_in_the_losses():
    l2 = 0.01
    model = build_head(HeadConfig(hidden_units=6, l2=l2), 8, 3, seed=0)
    kernels = [model.get_layer("hidden").kernel, model.get_layer("logits").kernel]
    expected = l2 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels)
    total = sum(float(loss) for loss in logits_model(model).losses)
    assert total == pytest.approx(expected, rel=1e-5)


def test_logits_model_shares_weights_and_feeds_the_softmax():
    model = build_head(HeadConfig(hidden_units=4), 6, 3, seed=1)
    logits = logits_model(model)
    assert logits.output_shape == (None, 3)
    x = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
    np.testing.assert_allclose(tf.nn.softmax(logits(x)), model(x), rtol=1e-5, atol=1e-7)
    assert {id(v) for v in logits.trainable_variables} == {id(v) for v in model.trainable_variables}


def test_same_seed_same_initial_weights():
    config = HeadConfig(hidden_units=8, dropout=0.2)
    a, b = build_head(config, 16, 3, seed=3), build_head(config, 16, 3, seed=3)
    c = build_head(config, 16, 3, seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


@pytest.mark.parametrize("config, message", [
    (HeadConfig(hidden_units=-1), "hidden_units"),
    (HeadConfig(hidden_units=2.5), "hidden_units"),
    (HeadConfig(hidden_units=True), "hidden_units"),
    (HeadConfig(hidden_units="8"), "hidden_units"),
    (HeadConfig(dropout=1.0), "dropout"),
    (HeadConfig(dropout=-0.1), "dropout"),
    (HeadConfig(dropout="0.5"), "dropout"),
    (HeadConfig(l2=-1e-4), "l2"),
    (HeadConfig(l2=float("nan")), "l2"),
    (HeadConfig(l2=float("inf")), "l2"),
])
def test_bad_config_raises(config, message):
    with pytest.raises(ValueError, match=f"{message}.*received"):
        build_head(config, 8, 3)


@pytest.mark.parametrize("input_dim, num_classes, seed, message", [
    (0, 3, 0, "input_dim"),
    (8.0, 3, 0, "input_dim"),
    (8, 1, 0, "num_classes"),
    (8, 3, -1, "seed"),
])
def test_bad_shape_raises(input_dim, num_classes, seed, message):
    with pytest.raises(ValueError, match=f"{message}.*received"):
        build_head(HeadConfig(), input_dim, num_classes, seed=seed)


def test_logits_model_needs_a_softmax_head():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="Softmax"):
        logits_model(plain)


def test_head_survives_saved_model_export(tmp_path):
    model = build_head(HeadConfig(hidden_units=8, dropout=0.3), 12, 4, seed=0)
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda x: model(x, training=False),
                               input_signature=[tf.TensorSpec([None, 12], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "head"))
    loaded = tf.saved_model.load(str(tmp_path / "head"))
    x = np.random.default_rng(2).normal(size=(3, 12)).astype(np.float32)
    np.testing.assert_allclose(loaded.serve(x), model(x, training=False), rtol=1e-6)


def test_standardize_layer_uses_the_training_statistics():
    from imgclf.training.head import feature_statistics

    rng = np.random.default_rng(0)
    train = rng.normal(loc=50.0, scale=[1.0, 10.0, 100.0, 0.0], size=(400, 4)).astype(np.float32)
    mean, std = feature_statistics(train)
    np.testing.assert_allclose(mean, train.mean(axis=0), rtol=1e-5)
    assert std[3] > 0  # a constant feature gets a floored std, not a division by zero
    model = build_head(HeadConfig(), 4, 3, seed=0, statistics=(mean, std))
    standardized = model.get_layer("standardize")(train[:5]).numpy()
    np.testing.assert_allclose(standardized[:, :3], ((train[:5] - mean) / std)[:, :3], rtol=1e-4, atol=1e-4)
    plain = build_head(HeadConfig(standardize=False), 4, 3, seed=0)
    assert "Normalization" not in _kinds(plain)
