"""The exported head: Keras weights read right, float64 inside, calibrated probabilities that sum to 1."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax

from imgclf.core import export_names as names
from imgclf.training.config import HeadConfig
from imgclf.training.detector import fit_detector
from imgclf.training.head import build_head, feature_statistics, logits_model
from imgclf.training.head_graph import HeadWeights, TrustedHead

DIM, CLASSES = 32, 10
# Ops that compute the head's numbers: each must run in float64 inside the graph.
ARITHMETIC = {"MatMul", "BiasAdd", "Relu", "Softmax", "Sub", "Mul", "AddV2", "Exp", "Log", "Sum", "Max", "Min",
              "Maximum", "Neg", "Sqrt", "RealDiv"}


@pytest.fixture(scope="module")
def vectors():
    return (np.random.default_rng(0).normal(size=(64, DIM)) * 3 + 1).astype(np.float32)


@pytest.fixture(scope="module", params=[0, 16], ids=["softmax", "hidden"])
def keras_head(request, vectors):
    return build_head(HeadConfig(standardize=True, hidden_units=request.param, dropout=0.2), DIM, CLASSES,
                      seed=1, statistics=feature_statistics(vectors))


def test_weights_give_keras_logits(keras_head, vectors):
    weights = HeadWeights.from_keras(keras_head)
    want = logits_model(keras_head)(vectors).numpy()
    np.testing.assert_allclose(weights.logits(vectors), want, rtol=1e-5, atol=1e-5)
    assert (weights.dim, weights.num_classes) == (DIM, CLASSES)


def run_graph(trusted: TrustedHead, vectors: np.ndarray):
    import tensorflow as tf

    from imgclf.training.frozen_graphs import graph_function

    function = graph_function(trusted.graph_def(), names.HEAD_INPUT, list(names.HEAD_OUTPUTS))
    return [t.numpy() for t in function(tf.constant(vectors))]


def test_graph_computes_in_float64_and_answers_in_float32(keras_head):
    labels = np.arange(64) % CLASSES
    detector = fit_detector("mahalanobis", vectors_for_detector(), labels, vectors_for_detector()[:16])
    graph_def = TrustedHead(HeadWeights.from_keras(keras_head), 1.5, detector).graph_def()
    arithmetic = [node for node in graph_def.node if node.op in ARITHMETIC]
    assert {node.op for node in arithmetic} >= {"MatMul", "Softmax", "Min"}
    for node in arithmetic:  # a float32 op here is what a bf16/fp16 rewrite would round
        assert node.attr["T"].type == 2, f"{node.name} ({node.op}) is not float64"  # DT_DOUBLE
    by_name = {node.name: node for node in graph_def.node}
    assert by_name["final_result"].attr["T"].type == 1  # DT_FLOAT


def vectors_for_detector():
    return (np.random.default_rng(5).normal(size=(64, DIM)) * 3 + 1).astype(np.float32)


def test_graph_equals_the_numpy_reference(keras_head, vectors):
    from imgclf.training.unfamiliar import fit_mahalanobis

    weights = HeadWeights.from_keras(keras_head)
    logits = logits_model(keras_head)(vectors).numpy().astype(np.float64)  # Keras's own, another way
    labels = np.arange(64) % CLASSES
    detector = fit_detector("mahalanobis", vectors, labels, vectors_for_detector())
    trusted = TrustedHead(weights, 2.5, detector)
    probabilities, score, flag = run_graph(trusted, vectors)
    np.testing.assert_allclose(probabilities, scipy_softmax(logits / 2.5, axis=1), atol=2e-6)
    dense = fit_mahalanobis(vectors, labels)  # the dense D×D reference
    np.testing.assert_allclose(score, dense.score(vectors), rtol=2e-4, atol=1e-3)
    assert probabilities.dtype == np.float32 and score.dtype == np.float32 and flag.dtype == bool
    assert np.abs(probabilities.sum(axis=1, dtype=np.float64) - 1).max() < 1e-6
    np.testing.assert_array_equal(flag, score > np.float32(detector.threshold))
    _, held_out_score, held_out_flag = run_graph(trusted, vectors_for_detector())
    assert (~held_out_flag).mean() >= 0.95  # 95% of the vectors the threshold was set on are familiar
    reference = trusted.outputs(vectors)
    np.testing.assert_array_equal(reference[names.PROBABILITIES_KEY], probabilities)
    np.testing.assert_array_equal(reference[names.UNFAMILIAR_SCORE_KEY], score)


def test_an_unfitted_detector_flags_nothing(keras_head, vectors):
    _, _, flag = run_graph(TrustedHead(HeadWeights.from_keras(keras_head)), vectors * 100)
    assert not flag.any()


def test_unknown_layers_are_refused():
    import keras

    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="activation 'tanh'"):
        HeadWeights.from_keras(head)


@pytest.mark.skipif("not __import__('imgclf.core.precision', fromlist=['x']).native_bf16_flags()",
                    reason="needs a CPU with native bf16 (AMX or AVX512_BF16) for oneDNN's bfloat16 rewrite")
def test_the_bf16_rewrite_leaves_the_head_exact(keras_head, vectors):
    import tensorflow as tf

    trusted = TrustedHead(HeadWeights.from_keras(keras_head), 1.0)
    want = trusted.outputs(vectors)[names.PROBABILITIES_KEY]
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    try:
        probabilities = run_graph(trusted, vectors)[0]
    finally:
        tf.config.optimizer.set_experimental_options(previous)
    np.testing.assert_allclose(probabilities, want, atol=1e-6)
    assert np.abs(probabilities.sum(axis=1, dtype=np.float64) - 1).max() < 1e-6
