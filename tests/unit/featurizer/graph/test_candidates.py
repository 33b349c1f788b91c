"""Tests of the structural guesses behind `imgclf inspect`: image inputs, bottlenecks, softmax."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2, types_pb2

from imgclf.featurizer.graph.candidates import find_candidates, tensor_info
from tests.support.legacy_graph import build_legacy_graph_def


def _node(name, op, inputs=(), **types):
    node = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
    for key, dtype in types.items():
        node.attr[key].type = dtype
    return node


def _const(name, value):
    tensor = tf.make_tensor_proto(np.asarray(value))
    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = tensor.dtype
    node.attr["value"].tensor.CopyFrom(tensor)
    return node


def _graph(*nodes):
    graph_def = graph_pb2.GraphDef()
    graph_def.node.extend(nodes)
    return graph_def


def test_legacy_graph_without_imported_shapes_uses_node_attrs():
    image_inputs, bottlenecks, softmax = find_candidates(build_legacy_graph_def(), {})
    assert [(c.role, c.tensor.name, c.tensor.dtype) for c in image_inputs] == [
        ("encoded image bytes", "DecodeJpeg/contents:0", "string"), ("normalised image", "Mul:0", "float32")]
    assert "DecodeJpeg" in image_inputs[0].why
    assert [c.tensor.name for c in bottlenecks] == ["pool_3/_reshape:0", "pool_3:0"]
    assert "one image only" in bottlenecks[0].why
    assert [c.tensor.name for c in softmax] == ["softmax:0"]


def test_classifier_reached_through_identity_and_batch_free_reshape():
    graph_def = _graph(
        _node("x", "Placeholder", dtype=types_pb2.DT_FLOAT),
        _const("shape", [-1, 4]), _node("shape/read", "Identity", ["shape"], T=types_pb2.DT_INT32),
        _node("flat", "Reshape", ["x", "shape/read"], T=types_pb2.DT_FLOAT),
        _const("w", np.zeros([4, 2], np.float32)), _node("w/read", "Identity", ["w"], T=types_pb2.DT_FLOAT),
        _node("logits", "MatMul", ["flat", "w/read"], T=types_pb2.DT_FLOAT),
        _node("logits/id", "Identity", ["logits"], T=types_pb2.DT_FLOAT),
        _node("prob", "Softmax", ["logits/id"], T=types_pb2.DT_FLOAT),
    )
    image_inputs, bottlenecks, softmax = find_candidates(graph_def, {})
    assert image_inputs == []  # no string placeholder, no convolution
    assert [(c.tensor.name, c.why) for c in bottlenecks] == [
        ("flat:0", "input of the last MatMul, logits"), ("x:0", "input of the Reshape flat")]
    assert [c.tensor.name for c in softmax] == ["prob:0"]


def test_softmax_without_a_classifier_gives_no_bottleneck_and_cycles_do_not_hang():
    graph_def = _graph(
        _node("a", "Merge", ["b"], T=types_pb2.DT_FLOAT),  # a while loop's cycle
        _node("b", "NextIteration", ["a"], T=types_pb2.DT_FLOAT),
        _node("prob", "Softmax", ["a"], T=types_pb2.DT_FLOAT),
        _node("orphan", "Softmax", [], T=types_pb2.DT_FLOAT),
    )
    image_inputs, bottlenecks, softmax = find_candidates(graph_def, {})
    assert (image_inputs, bottlenecks) == ([], [])
    assert [c.tensor.name for c in softmax] == ["prob:0", "orphan:0"]


def test_tensor_info_prefers_imported_shapes_and_tolerates_unknown_nodes():
    nodes = {"p": _node("p", "Placeholder", dtype=types_pb2.DT_STRING)}
    assert (tensor_info("p:0", nodes, {}).dtype, tensor_info("p:0", nodes, {}).shape) == ("string", None)
    missing = tensor_info("nowhere:0", nodes, {})
    assert (missing.dtype, missing.shape) == ("unknown", None)


def test_an_identity_cycle_is_not_a_constant_and_does_not_hang():
    graph_def = _graph(
        _node("x", "Placeholder", dtype=types_pb2.DT_FLOAT),
        _node("loop/a", "Identity", ["loop/b"], T=types_pb2.DT_FLOAT),
        _node("loop/b", "Identity", ["loop/a"], T=types_pb2.DT_FLOAT),
        _node("logits", "MatMul", ["loop/a", "x"], T=types_pb2.DT_FLOAT),
        _node("prob", "Softmax", ["logits"], T=types_pb2.DT_FLOAT),
    )
    _, bottlenecks, _ = find_candidates(graph_def, {})
    assert [c.tensor.name for c in bottlenecks] == ["loop/a:0"]


def test_a_reshape_shape_const_without_a_value_is_no_fixed_batch():
    graph_def = _graph(
        _node("x", "Placeholder", dtype=types_pb2.DT_FLOAT),
        _node("shape", "Const", dtype=types_pb2.DT_INT32),  # no "value" attr
        _node("flat", "Reshape", ["x", "shape"], T=types_pb2.DT_FLOAT),
        _const("w", np.zeros([4, 2], np.float32)),
        _node("logits", "MatMul", ["flat", "w"], T=types_pb2.DT_FLOAT),
        _node("prob", "Softmax", ["logits"], T=types_pb2.DT_FLOAT),
    )
    _, bottlenecks, _ = find_candidates(graph_def, {})
    assert [(c.tensor.name, c.why) for c in bottlenecks] == [
        ("flat:0", "input of the last MatMul, logits"), ("x:0", "input of the Reshape flat")]
