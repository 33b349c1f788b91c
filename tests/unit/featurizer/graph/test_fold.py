"""Folding a frozen Keras graph's batch-norm arithmetic into the convolutions changes no output."""

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from imgclf.featurizer.graph.fold import fold_scale_shift


def _frozen_conv_bn_net(shared_filter: bool = False):
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = inputs
    for width in (8, 12):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(scale=width == 12)(x)
        x = keras.layers.Activation("relu")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    for layer in model.layers:  # non-trivial statistics, so a wrong fold would show
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-1, 1, n).astype(np.float32))
            layer.moving_variance.assign(np.linspace(0.5, 2, n).astype(np.float32))
            layer.beta.assign(np.linspace(-0.3, 0.3, n).astype(np.float32))
    fn = tf.function(lambda t: model(t, training=False))
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(tf.TensorSpec([None, 16, 16, 3])))
    return frozen.graph.as_graph_def(), frozen.inputs[0].name, frozen.outputs[0].name


def _run(graph_def, inp, out, x):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(out, {inp: x})


def test_fold_matches_the_unfolded_graph():
    graph_def, inp, out = _frozen_conv_bn_net()
    folded, count = fold_scale_shift(graph_def)
    assert count == 2
    convs = {n.name for n in folded.node if n.op == "Conv2D"}
    after_conv = [n.op for n in folded.node if any(i in convs for i in n.input)]
    assert after_conv == ["BiasAdd", "BiasAdd"]  # no Mul/AddV2 pass over the activations any more
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, inp, out, x), _run(graph_def, inp, out, x), rtol=1e-4, atol=1e-5)


def test_nothing_to_fold_leaves_the_graph_alone(legacy_graph_path):
    from imgclf.featurizer.graph.load import load_graph

    graph_def, _ = load_graph(legacy_graph_path)  # its batch norms are the old op, not Mul/Add
    folded, count = fold_scale_shift(graph_def)
    assert count == 0
    assert [n.name for n in folded.node] == [n.name for n in graph_def.node]


def test_new_nodes_do_not_take_names_already_in_the_graph():
    from imgclf.featurizer.graph.legacy_ops import const_node

    graph_def, inp, out = _frozen_conv_bn_net()
    taken = [f"{n.name}/folded_filter" for n in graph_def.node if n.op == "Conv2D"]
    graph_def.node.extend(const_node(name, np.float32(0)) for name in taken)
    folded, count = fold_scale_shift(graph_def)
    names = [n.name for n in folded.node]
    assert count == 2 and len(names) == len(set(names))
    assert all(any(i.endswith("/folded_filter_1") for i in n.input) for n in folded.node if n.op == "Conv2D")
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, inp, out, x), _run(graph_def, inp, out, x), rtol=1e-4, atol=1e-5)
