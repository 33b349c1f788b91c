"""Build the frozen GraphDefs of an export: the featurizer body, and featurizer + head end to end.

The head's own graph is built from its weights by :mod:`imgclf.training.head_graph`.

Every graph here is made of current ops only and carries the running
TensorFlow's producer version. The 2015 Inception graph's deprecated ops were
rewritten when the featurizer loaded it (:class:`imgclf.featurizer.graph.load.BottleneckGraph`
rewrites the old batch norms and ``Concat``, folds scale/shift and cuts the
graph at the normalised image); its graph is taken from there, never from the
file, so an export cannot carry the old ops into a new-version graph — the
mistake that made the old tutorials' retrained graphs fail outside Python.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from imgclf.core import export_names as names
from imgclf.core.errors import GraphError
from imgclf.featurizer.graph.contract import node_name
from imgclf.featurizer.graph.legacy_ops import deprecated_ops
from imgclf.featurizer.graph.prune import drop_pure_control_edges, keep_ancestors
from imgclf.featurizer.runtime.featurizer import Featurizer
from imgclf.training.serving_preprocess import image_bytes_to_input


def featurizer_graph_def(featurizer: Featurizer) -> graph_pb2.GraphDef:
    """Return the featurizer's graph as loaded: normalised images [N, S, S, 3] → bottleneck, current ops only."""
    contract = featurizer.contract
    graph_def = keep_ancestors(drop_pure_control_edges(featurizer.graph.graph.as_graph_def()), contract.bottleneck)
    old = deprecated_ops(graph_def, tf.version.GRAPH_DEF_VERSION)
    if old:
        raise GraphError(f"the featurizer graph still holds deprecated ops {sorted(old)}; "
                         "they cannot be exported into a current-version graph")
    return graph_def


def end_to_end_graph_def(featurizer: Featurizer, featurizer_def: graph_pb2.GraphDef,
                         head_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
    """Return one graph: encoded image bytes (scalar string) → the head's outputs (probabilities [1, C],
    unfamiliar_score [1], unfamiliar [1]), under the head graph's names."""
    contract = featurizer.contract
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, [], name=node_name(names.END_TO_END_INPUT))
        with tf.name_scope("preprocess"):
            image = tf.expand_dims(image_bytes_to_input(contents, contract), 0)
        (bottleneck,) = tf.graph_util.import_graph_def(
            featurizer_def, input_map={contract.image_input: image},
            return_elements=[contract.bottleneck], name="featurizer")
        vector = tf.reshape(bottleneck, [1, featurizer.dim], name="bottleneck")
        outputs = tf.graph_util.import_graph_def(
            head_def, input_map={names.HEAD_INPUT: vector}, return_elements=list(names.HEAD_OUTPUTS), name="head")
        for output, name in zip(outputs, names.END_TO_END_OUTPUTS):
            tf.identity(output, name=node_name(name))
    return current_graph_def(graph, names.END_TO_END_OUTPUTS)


def current_graph_def(graph: tf.Graph, outputs) -> graph_pb2.GraphDef:
    """Return what ``outputs`` (tensor names) need of ``graph``, checked to hold no deprecated op."""
    graph_def = keep_ancestors(drop_pure_control_edges(graph.as_graph_def()), outputs)
    old = deprecated_ops(graph_def, tf.version.GRAPH_DEF_VERSION)
    if old:  # pragma: no cover - every input graph was checked; this guards future edits
        raise GraphError(f"exported graph holds deprecated ops {sorted(old)}")
    return graph_def


def graph_function(graph_def: graph_pb2.GraphDef, feed: str, fetch):
    """Return a concrete function ``feed → fetch`` over a frozen GraphDef (wrap_function, then prune).

    ``fetch`` is one tensor name (the function returns that tensor) or a list of them (a list).

    Pruning re-creates the ops in a current-version function graph, which is
    exactly what fails with the 2015 graph's old ops; the graphs given here
    have none.
    """
    wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    tensor = wrapped.graph.get_tensor_by_name
    fetches = tensor(fetch) if isinstance(fetch, str) else [tensor(name) for name in fetch]
    return wrapped.prune(feeds=tensor(feed), fetches=fetches)
