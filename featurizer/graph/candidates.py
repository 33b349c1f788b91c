"""Guess which tensors of a frozen graph are the ones imgclf needs.

The guesses come from the graph's structure, not its names, so they also work
on graphs that do not follow the 2015 naming:

* **encoded image bytes**: string placeholders of scalar (or unknown) shape;
* **normalised image**: the 4-D float data input of each convolution that has
  no convolution upstream;
* **bottleneck**: walking back from each ``Softmax`` through bias adds to the
  classifier's ``MatMul``, its data input (and, where that is a flatten, what
  was flattened);
* **softmax output**: the output of every ``Softmax`` op.

:func:`find_candidates` is the entry point; :mod:`imgclf.featurizer.graph.inspect`
puts its answers in the `imgclf inspect` report.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from imgclf.featurizer.graph.contract import node_name

CONV_OPS = ("Conv2D", "DepthwiseConv2dNative", "Conv3D")
DECODE_OPS = ("DecodeJpeg", "DecodeImage", "DecodePng", "DecodeBmp", "DecodeGif", "DecodeAndCropJpeg")
LOGIT_PASS_THROUGH = ("BiasAdd", "Add", "AddV2", "Identity")  # between the classifier's MatMul and Softmax
MATMUL_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3")
FLATTEN_OPS = ("Reshape", "Squeeze")
PLACEHOLDER_OPS = ("Placeholder", "PlaceholderWithDefault")
MAX_LOGIT_HOPS = 16  # pass-through ops walked back from a Softmax before giving up

Shape = list  # list of int (-1 where unknown) per dimension, or None for unknown rank


@dataclass
class TensorInfo:
    """One tensor: its name, dtype and static shape (None: unknown rank; -1: unknown dimension)."""

    name: str
    dtype: str
    shape: Shape | None


@dataclass
class Candidate:
    """A tensor that is likely one of those imgclf needs, and why it was picked."""

    role: str  # "encoded image bytes", "normalised image", "bottleneck", "softmax output"
    tensor: TensorInfo
    why: str


def find_candidates(graph_def: graph_pb2.GraphDef, tensors: dict[str, TensorInfo]
                    ) -> tuple[list[Candidate], list[Candidate], list[Candidate]]:
    """Return the likely image inputs, bottlenecks and softmax outputs of ``graph_def``.

    Args:
        tensors: static dtype and shape of each tensor by name, where the graph
            could be imported (may be empty); otherwise the nodes' own attrs are used.

    Returns:
        ``(image_inputs, bottlenecks, softmax)``: image inputs are the encoded-image
        placeholders first, then the normalised images.
    """
    nodes = {node.name: node for node in graph_def.node}
    image_inputs = _bytes_inputs(graph_def, nodes, tensors) + _normalised_inputs(graph_def, nodes, tensors)
    return image_inputs, _bottlenecks(graph_def, nodes, tensors), _softmax_outputs(graph_def, nodes, tensors)


def tensor_info(name: str, nodes: dict, tensors: dict[str, TensorInfo]) -> TensorInfo:
    """Return what is known about tensor ``name``: imported shapes first, then the node's own attrs."""
    if name in tensors:
        return tensors[name]
    node = nodes.get(node_name(name))
    dtype, shape = "unknown", None
    if node is not None:
        for key in ("dtype", "T"):
            if key in node.attr and dtype_or_none(node.attr[key].type) is not None:
                dtype = dtype_or_none(node.attr[key].type).name
                break
        if "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
            shape = [d.size for d in node.attr["shape"].shape.dim]
    return TensorInfo(name, dtype, shape)


def dtype_or_none(enum: int) -> tf.dtypes.DType | None:
    """Return the DType of a DataType enum, or None for an invalid one."""
    try:
        return tf.dtypes.as_dtype(enum) if enum else None
    except TypeError:
        return None


def _tensor_name(inp: str) -> str:
    return inp if ":" in inp else f"{inp}:0"


def _consumers(graph_def: graph_pb2.GraphDef) -> dict[str, list]:
    """Return ``{node name: the nodes reading one of its outputs}`` (data edges only)."""
    out: dict[str, list] = {}
    for node in graph_def.node:
        for inp in node.input:
            if not inp.startswith("^"):
                out.setdefault(node_name(inp), []).append(node)
    return out


def _bytes_inputs(graph_def, nodes, tensors) -> list[Candidate]:
    """String placeholders of scalar (or unknown) shape: fed with one encoded image."""
    consumers = _consumers(graph_def)
    found = []
    for node in graph_def.node:
        if node.op not in PLACEHOLDER_OPS:
            continue
        info = tensor_info(f"{node.name}:0", nodes, tensors)
        if info.dtype != "string" or info.shape not in (None, []):
            continue
        decoders = [c.name for c in consumers.get(node.name, []) if c.op in DECODE_OPS]
        why = f"string placeholder fed to {', '.join(decoders)}" if decoders else "string placeholder, no decoder seen"
        found.append(Candidate("encoded image bytes", info, why))
    return found


def _topological(graph_def: graph_pb2.GraphDef) -> list:
    """Return the nodes inputs-first; nodes on cycles (while loops) come last, in file order."""
    nodes = {node.name: node for node in graph_def.node}
    pending = {node.name: len({node_name(i) for i in node.input if node_name(i) in nodes}) for node in graph_def.node}
    users: dict[str, list[str]] = {}
    for node in graph_def.node:
        for src in {node_name(i) for i in node.input if node_name(i) in nodes}:
            users.setdefault(src, []).append(node.name)
    ready = [name for name, n in pending.items() if n == 0]
    order = []
    while ready:
        name = ready.pop()
        order.append(nodes[name])
        for user in users.get(name, []):
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    placed = {node.name for node in order}
    return order + [node for node in graph_def.node if node.name not in placed]


def _normalised_inputs(graph_def, nodes, tensors) -> list[Candidate]:
    """The 4-D float data inputs of the convolutions that have no convolution upstream."""
    conv_upstream: dict[str, bool] = {}
    found, seen = [], set()
    for node in _topological(graph_def):
        sources = [node_name(i) for i in node.input]
        upstream = any(conv_upstream.get(s, False) or nodes[s].op in CONV_OPS for s in sources if s in nodes)
        conv_upstream[node.name] = upstream
        if node.op not in CONV_OPS or upstream or not node.input:
            continue
        info = tensor_info(_tensor_name(node.input[0]), nodes, tensors)
        if info.name in seen or not info.dtype.startswith(("float", "bfloat", "half")):
            continue
        if info.shape is not None and len(info.shape) != 4:
            continue
        seen.add(info.name)
        found.append(Candidate("normalised image", info, f"input of the first convolution {node.name}"))
    return found


def _is_const(name: str, nodes: dict) -> bool:
    """Return whether ``name`` is a Const node's output, looking through Identity."""
    node, seen = nodes.get(node_name(name)), set()
    while node is not None and node.op == "Identity" and node.input and node.name not in seen:
        seen.add(node.name)  # an Identity cycle is no constant
        node = nodes.get(node_name(node.input[0]))
    return node is not None and node.op == "Const"


def _data_input(node, nodes: dict) -> str | None:
    """Return the first non-constant data input of ``node``."""
    for inp in node.input:
        if not inp.startswith("^") and not _is_const(inp, nodes):
            return inp
    return None


def _bottlenecks(graph_def, nodes, tensors) -> list[Candidate]:
    """Walk back from each Softmax through BiasAdd/Add to the classifier's MatMul; its data input."""
    found, seen = [], set()
    for softmax in (n for n in graph_def.node if n.op == "Softmax"):
        node = nodes.get(node_name(softmax.input[0])) if softmax.input else None
        hops = 0
        while node is not None and node.op in LOGIT_PASS_THROUGH and hops < MAX_LOGIT_HOPS:
            data = _data_input(node, nodes)
            node = nodes.get(node_name(data)) if data else None
            hops += 1
        if node is None or node.op not in MATMUL_OPS:
            continue
        data = _data_input(node, nodes)
        if data is None or _tensor_name(data) in seen:
            continue
        info = tensor_info(_tensor_name(data), nodes, tensors)
        seen.add(info.name)
        flat = nodes.get(node_name(data))
        why = f"input of the last {node.op}, {node.name}"
        if _fixed_batch_reshape(flat, nodes):
            why += "; constant reshape: one image only"
        found.append(Candidate("bottleneck", info, why))
        if flat is not None and flat.op in FLATTEN_OPS and flat.input:
            before = tensor_info(_tensor_name(flat.input[0]), nodes, tensors)
            if before.name not in seen:
                seen.add(before.name)
                found.append(Candidate("bottleneck", before, f"input of the {flat.op} {flat.name}"))
    return found


def _fixed_batch_reshape(node, nodes: dict) -> bool:
    """Whether ``node`` is a Reshape to a constant shape with a fixed batch size (the 2015 ``pool_3/_reshape``)."""
    if node is None or node.op != "Reshape" or len(node.input) < 2 or not _is_const(node.input[1], nodes):
        return False
    shape_node = nodes[node_name(node.input[1])]
    while shape_node.op == "Identity":
        shape_node = nodes[node_name(shape_node.input[0])]
    try:
        shape = tf.make_ndarray(shape_node.attr["value"].tensor).reshape(-1)
    except (TypeError, ValueError):  # a Const without a (valid) value
        return False
    return shape.size > 0 and int(shape[0]) != -1


def _softmax_outputs(graph_def, nodes, tensors) -> list[Candidate]:
    """The output of every Softmax op."""
    return [Candidate("softmax output", tensor_info(f"{n.name}:0", nodes, tensors), "output of a Softmax op")
            for n in graph_def.node if n.op == "Softmax"]


__all__ = [
    "CONV_OPS", "DECODE_OPS", "FLATTEN_OPS", "LOGIT_PASS_THROUGH", "MATMUL_OPS", "PLACEHOLDER_OPS",
    "Candidate", "Shape", "TensorInfo", "dtype_or_none", "find_candidates", "tensor_info",
]
