"""Fold per-channel scale and shift after a convolution into the convolution itself.

A frozen Keras graph keeps batch normalisation as arithmetic after each
convolution: ``Conv2D → Mul(·, rsqrt(var + eps)) → AddV2(·, beta - mean·scale)``,
where the operands are small constant expressions. TensorFlow's optimiser folds
the constant expressions but leaves two extra passes over every activation map.
Here the scale goes into the filter and the shift becomes a ``BiasAdd``, which
TensorFlow then fuses with the convolution (and the following ``Relu``) into one
kernel. The 2015 graph's own batch norms are handled by
:mod:`imgclf.featurizer.graph.legacy_ops`; this is the same fold for current graphs.
"""

from __future__ import annotations

import copy

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from imgclf.featurizer.graph.contract import node_name
from imgclf.featurizer.graph.legacy_ops import const_node, unique_name
from imgclf.featurizer.graph.prune import keep_ancestors

# Ops that compute a constant from constants, with no state and no side effect.
_PURE_OPS = frozenset({"Const", "Identity", "Reshape", "Rsqrt", "Sqrt", "Add", "AddV2", "Sub", "Mul", "RealDiv",
                       "Reciprocal", "Neg", "Cast", "Squeeze", "ExpandDims"})
_ADD_OPS = ("Add", "AddV2", "BiasAdd")


def _constant_nodes(graph_def: graph_pb2.GraphDef) -> set[str]:
    """Return the names of nodes whose value depends on constants only."""
    by_name = {node.name: node for node in graph_def.node}
    memo: dict[str, bool] = {}

    def is_constant(name: str) -> bool:
        stack = [name]
        while stack:
            current = stack[-1]
            if current in memo:
                stack.pop()
                continue
            node = by_name.get(current)
            if node is None or node.op not in _PURE_OPS:
                memo[current] = False
                stack.pop()
                continue
            inputs = [node_name(i) for i in node.input]
            if any(i.startswith("^") for i in node.input):
                memo[current] = False
                stack.pop()
                continue
            unknown = [i for i in inputs if i not in memo]
            if unknown:
                stack.extend(unknown)
                continue
            memo[current] = all(memo[i] for i in inputs)
            stack.pop()
        return memo[name]

    return {node.name for node in graph_def.node if is_constant(node.name)}


def _evaluate(graph_def: graph_pb2.GraphDef, tensors: list[str]) -> list[np.ndarray]:
    """Evaluate constant tensors of ``graph_def`` in one session run."""
    sub = keep_ancestors(graph_def, tensors)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(sub, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run([t if ":" in t else f"{t}:0" for t in tensors])


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """Return ``value`` as a [channels] vector if it broadcasts per output channel, else None."""
    value = np.asarray(value)
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=value.dtype)
    if value.size == channels and value.shape[-1] == channels:
        return value.reshape(channels)
    return None


def fold_scale_shift(graph_def: graph_pb2.GraphDef) -> tuple[graph_pb2.GraphDef, int]:
    """Return a copy of ``graph_def`` with Conv2D → Mul(const) → Add(const) folded, and how many were folded."""
    out = copy.deepcopy(graph_def)
    by_name = {node.name: node for node in out.node}
    consumers: dict[str, list[str]] = {}
    for node in out.node:
        for inp in node.input:
            if not inp.startswith("^"):  # control edges (a frozen function's NoOp) read no value
                consumers.setdefault(node_name(inp), []).append(node.name)
    constant = _constant_nodes(out)

    def other_operand(node, data_name):
        data = [i for i in node.input if node_name(i) == data_name]
        others = [i for i in node.input if node_name(i) != data_name]
        if len(node.input) != 2 or len(data) != 1 or len(others) != 1 or node_name(others[0]) not in constant:
            return None
        return others[0]

    candidates = []
    for conv in out.node:
        if conv.op != "Conv2D" or conv.attr["data_format"].s not in (b"", b"NHWC"):
            continue
        if len(conv.input) != 2 or node_name(conv.input[1]) not in constant:
            continue
        after_conv = consumers.get(conv.name, [])
        if len(after_conv) != 1 or by_name[after_conv[0]].op != "Mul":
            continue
        mul = by_name[after_conv[0]]
        scale = other_operand(mul, conv.name)
        after_mul = consumers.get(mul.name, [])
        if scale is None or len(after_mul) != 1 or by_name[after_mul[0]].op not in _ADD_OPS:
            continue
        add = by_name[after_mul[0]]
        shift = other_operand(add, mul.name)
        if shift is None or (add.op == "BiasAdd" and node_name(add.input[0]) != mul.name):
            continue
        filter_users = consumers.get(node_name(conv.input[1]), [])
        if len(filter_users) != 1:
            continue  # a shared filter cannot be scaled for one user
        candidates.append((conv, mul, add, conv.input[1], scale, shift))

    if not candidates:
        return out, 0
    values = _evaluate(out, [t for c in candidates for t in (c[3], c[4], c[5])])
    folded = 0
    new_nodes = []
    taken = set(by_name)
    for index, (conv, _mul, add, _, _, _) in enumerate(candidates):
        weights, scale, shift = values[3 * index: 3 * index + 3]
        channels = weights.shape[-1]
        scale, shift = _per_channel(scale, channels), _per_channel(shift, channels)
        if scale is None or shift is None or weights.ndim != 4:
            continue
        dtype = weights.dtype
        filter_node = const_node(unique_name(f"{conv.name}/folded_filter", taken), (weights * scale).astype(dtype))
        bias_node = const_node(unique_name(f"{add.name}/folded_bias", taken), shift.astype(dtype))
        new_nodes += [filter_node, bias_node]
        conv.input[1] = filter_node.name
        t_attr = copy.deepcopy(add.attr["T"])
        add.op = "BiasAdd"
        del add.input[:]
        add.input.extend([conv.name, bias_node.name])
        add.attr.clear()
        add.attr["T"].CopyFrom(t_attr)
        add.attr["data_format"].s = b"NHWC"
        folded += 1
    out.node.extend(new_nodes)
    dead = {c[1].name for c in candidates if c[2].op == "BiasAdd" and c[2].input[0] == c[0].name}
    kept = [node for node in out.node if node.name not in dead]
    del out.node[:]
    out.node.extend(kept)
    return out, folded
