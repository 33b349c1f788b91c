"""Rewrite the 2015 graph's deprecated ops into current ones.

``BatchNormWithGlobalNormalization`` (removed at GraphDef version 9) is folded
into the convolution that feeds it — the filter is scaled per output channel
and the rest becomes a ``BiasAdd`` — or, when it does not follow a foldable
convolution, rewritten as ``Mul`` + ``Add``. The old ``Concat`` (axis first) is
rewritten as ``ConcatV2`` (axis last). The rewritten node keeps the original
node's name, so every tensor name of the contract still resolves. With no
deprecated op left the producer version can be raised to the running
TensorFlow's, and later tools (bf16 rewrites, combined exports) work on it.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2

from imgclf.core import tf_private
from imgclf.featurizer.graph.contract import node_name

OLD_BATCH_NORM = "BatchNormWithGlobalNormalization"
OLD_CONCAT = "Concat"
FOLDABLE_CONVS = ("Conv2D",)


@dataclass
class RewriteReport:
    """What :func:`rewrite_legacy_ops` changed."""

    folded_batch_norms: int = 0  # batch norms folded into a convolution
    rewritten_batch_norms: int = 0  # batch norms turned into Mul + Add
    rewritten_concats: int = 0  # Concat → ConcatV2
    still_deprecated: list[str] = field(default_factory=list)  # ops no rewrite knows
    producer_before: int = 0
    producer_after: int = 0
    replaced_params: set = field(default_factory=set, repr=False)  # consts that may now be unused


def _consumers(graph_def: graph_pb2.GraphDef) -> Counter:
    counts: Counter = Counter()
    for node in graph_def.node:
        for inp in node.input:
            counts[node_name(inp)] += 1
    return counts


def _const_value(nodes: dict, name: str) -> np.ndarray | None:
    """Return the value of a Const node (looking through Identity), or None."""
    node, seen = nodes.get(node_name(name)), set()
    while node is not None and node.op == "Identity" and node.input and node.name not in seen:
        seen.add(node.name)  # an Identity cycle has no value
        node = nodes.get(node_name(node.input[0]))
    if node is None or node.op != "Const":
        return None
    return tf.make_ndarray(node.attr["value"].tensor)


def const_node(name: str, value: np.ndarray) -> node_def_pb2.NodeDef:
    """Return a Const NodeDef holding ``value``."""
    tensor = tf.make_tensor_proto(value)
    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = tensor.dtype
    node.attr["value"].tensor.CopyFrom(tensor)
    return node


def unique_name(name: str, taken: set) -> str:
    """Return ``name``, or ``name_1``, ``name_2``, ... if it is taken; add the result to ``taken``."""
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def deprecated_ops(graph_def: graph_pb2.GraphDef, at_version: int | None = None) -> dict[str, int]:
    """Return ``{op: version it stops working}`` for ops deprecated by ``at_version``.

    With ``at_version=None`` every op that has any deprecation is listed.
    """
    found = {}
    for op in {node.op for node in graph_def.node}:
        op_def = tf_private.op_def(op)
        if op_def is None or not op_def.HasField("deprecation"):
            continue
        version = op_def.deprecation.version
        if at_version is None or version <= at_version:
            found[op] = version
    return found


def rewrite_legacy_ops(graph_def: graph_pb2.GraphDef, bump_producer: bool = True
                       ) -> tuple[graph_pb2.GraphDef, RewriteReport]:
    """Return a copy of ``graph_def`` with the old ops rewritten, and a report."""
    out = copy.deepcopy(graph_def)
    report = RewriteReport(producer_before=out.versions.producer)
    nodes = {node.name: node for node in out.node}
    consumers = _consumers(out)
    taken = set(nodes)
    new_nodes: list[node_def_pb2.NodeDef] = []

    for node in out.node:
        if node.op == OLD_BATCH_NORM:
            _rewrite_batch_norm(node, nodes, consumers, taken, new_nodes, report)
        elif node.op == OLD_CONCAT:
            _rewrite_concat(node)
            report.rewritten_concats += 1

    out.node.extend(new_nodes)
    _drop_unused_consts(out, report.replaced_params)
    report.still_deprecated = sorted(deprecated_ops(out))
    if bump_producer and not deprecated_ops(out, tf.version.GRAPH_DEF_VERSION):
        out.versions.producer = max(out.versions.producer, tf.version.GRAPH_DEF_VERSION)
        out.versions.min_consumer = max(out.versions.min_consumer, 0)
    report.producer_after = out.versions.producer
    return out, report


def _rewrite_batch_norm(node, nodes, consumers, taken, new_nodes, report) -> None:
    data, mean_in, var_in, beta_in, gamma_in = list(node.input[:5])
    report.replaced_params.update(node_name(n) for n in (mean_in, var_in, beta_in, gamma_in))
    controls = [inp for inp in node.input[5:] if inp.startswith("^")]
    mean, var, beta, gamma = (_const_value(nodes, n) for n in (mean_in, var_in, beta_in, gamma_in))
    if any(v is None for v in (mean, var, beta, gamma)):
        raise ValueError(f"batch norm {node.name!r} has non-constant parameters; cannot rewrite it")
    eps = node.attr["variance_epsilon"].f
    scale = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    if node.attr["scale_after_normalization"].b:
        scale = scale * gamma
    offset = beta - mean * scale
    dtype = tf.dtypes.as_dtype(node.attr["T"].type).as_numpy_dtype

    producer = nodes.get(node_name(data))
    first_output = ":" not in data or data.endswith(":0")
    foldable = (producer is not None and producer.op in FOLDABLE_CONVS and first_output
                and consumers[producer.name] == 1 and len(producer.input) > 1)
    filter_node = nodes.get(node_name(producer.input[1])) if foldable else None
    if foldable and filter_node is not None and filter_node.op == "Const" and consumers[filter_node.name] == 1:
        weights = tf.make_ndarray(filter_node.attr["value"].tensor)
        filter_node.attr["value"].tensor.CopyFrom(
            tf.make_tensor_proto((weights * scale).astype(weights.dtype)))  # HWIO: scale the O axis
        bias = _append(new_nodes, const_node(unique_name(f"{node.name}/folded_bias", taken), offset.astype(dtype)))
        fmt = producer.attr["data_format"].s or b"NHWC"
        _become(node, "BiasAdd", [data, bias] + controls, T=node.attr["T"],
                data_format=attr_value_pb2.AttrValue(s=fmt))
        report.folded_batch_norms += 1
        return

    scale_const = _append(new_nodes, const_node(unique_name(f"{node.name}/scale", taken), scale.astype(dtype)))
    offset_const = _append(new_nodes, const_node(unique_name(f"{node.name}/offset", taken), offset.astype(dtype)))
    mul = node_def_pb2.NodeDef(name=unique_name(f"{node.name}/scaled", taken), op="Mul",
                               input=[data, scale_const])
    mul.attr["T"].CopyFrom(node.attr["T"])
    new_nodes.append(mul)
    _become(node, "Add", [mul.name, offset_const] + controls, T=node.attr["T"])
    report.rewritten_batch_norms += 1


def _append(new_nodes: list, node: node_def_pb2.NodeDef) -> str:
    """Add ``node`` to ``new_nodes``; return its name."""
    new_nodes.append(node)
    return node.name


def _become(node: node_def_pb2.NodeDef, op: str, inputs: list[str], **attrs) -> None:
    """Turn ``node`` into ``op`` in place, keeping its name and device."""
    node.op = op
    del node.input[:]
    node.input.extend(inputs)
    node.attr.clear()
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)


def _rewrite_concat(node: node_def_pb2.NodeDef) -> None:
    data = [inp for inp in node.input if not inp.startswith("^")]
    controls = [inp for inp in node.input if inp.startswith("^")]
    axis, values = data[0], data[1:]
    node.op = "ConcatV2"
    del node.input[:]
    node.input.extend(values + [axis] + controls)
    node.attr["Tidx"].type = types_pb2.DT_INT32


def _drop_unused_consts(graph_def: graph_pb2.GraphDef, candidates: set) -> None:
    """Remove the replaced batch-norm parameters (and Identity wrappers) nothing reads any more."""
    while True:
        used = _consumers(graph_def)
        dead = [i for i, n in enumerate(graph_def.node)
                if n.name in candidates and used[n.name] == 0 and n.op in ("Const", "Identity")]
        if not dead:
            return
        for i in reversed(dead):
            candidates.update(node_name(inp) for inp in graph_def.node[i].input)
            del graph_def.node[i]
