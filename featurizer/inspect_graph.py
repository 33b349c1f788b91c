"""Describe a frozen GraphDef so a user can find their way in it (`imgclf inspect`).

The report says what the file is (size, sha256, producer version), which ops it
uses and which of them are too old for a current graph, what it takes as input
(placeholders) and carries as weights (constants), and which tensors are
*likely* the ones imgclf needs: the encoded-image input, the normalised image
before the first convolution, the bottleneck that feeds the final classifier,
and the softmax. The guesses are heuristics over the graph's structure, not
names, so they also work on graphs that do not follow the 2015 naming; where
nothing fits, the report says so.

:func:`write_tensorboard_graph` writes the graph as a TensorBoard event file,
for browsing it in the Graphs tab.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from featurizer.graph import file_sha256, read_graph_def
from featurizer.legacy_ops import OLD_BATCH_NORM, OLD_CONCAT, deprecated_ops, rewrite_legacy_ops

log = logging.getLogger(__name__)

CONV_OPS = ("Conv2D", "DepthwiseConv2dNative", "Conv3D")
DECODE_OPS = ("DecodeJpeg", "DecodeImage", "DecodePng", "DecodeBmp", "DecodeGif", "DecodeAndCropJpeg")
LOGIT_PASS_THROUGH = ("BiasAdd", "Add", "AddV2", "Identity")  # between the classifier's MatMul and Softmax
MATMUL_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3")
FLATTEN_OPS = ("Reshape", "Squeeze")
PLACEHOLDER_OPS = ("Placeholder", "PlaceholderWithDefault")
LARGEST_CONSTS = 5

Shape = list  # list of int (-1 where unknown) per dimension, or None for unknown rank


@dataclass
class TensorInfo:
    """One tensor: its name, dtype and static shape (None: unknown rank; -1: unknown dimension)."""

    name: str
    dtype: str
    shape: Shape | None


@dataclass
class ConstInfo:
    """One Const node's size."""

    name: str
    dtype: str
    shape: list[int]
    params: int  # number of elements
    bytes: int  # in memory (strings: their total length)


@dataclass
class ConstSummary:
    """All Const nodes together, and the largest few."""

    count: int = 0
    params: int = 0
    bytes: int = 0
    largest: list[ConstInfo] = field(default_factory=list)


@dataclass
class DeprecatedOp:
    """An op too old for a current graph, and what imgclf does about it."""

    op: str
    count: int  # nodes using it
    removed_at: int | None  # GraphDef version where it stops working (None: not marked deprecated)
    note: str


@dataclass
class Candidate:
    """A tensor that is likely one of those imgclf needs, and why it was picked."""

    role: str  # "encoded image bytes", "normalised image", "bottleneck", "softmax output"
    tensor: TensorInfo
    why: str


@dataclass
class NodeInfo:
    """One node and its outputs (only collected with ``show_all``)."""

    name: str
    op: str
    outputs: list[TensorInfo]


@dataclass
class GraphReport:
    """What :func:`inspect_graph` found in a frozen graph."""

    path: Path
    size_bytes: int
    sha256: str
    node_count: int
    producer: int  # versions.producer: the GraphDef version the graph was written with
    min_consumer: int
    op_counts: list[tuple[str, int]]  # most used first
    deprecated: list[DeprecatedOp]
    placeholders: list[TensorInfo]
    consts: ConstSummary
    image_inputs: list[Candidate]  # encoded image bytes, normalised image
    bottlenecks: list[Candidate]
    softmax: list[Candidate]
    shapes_from: str  # "original graph", "rewritten graph" or "unavailable: <why>"
    nodes: list[NodeInfo] | None = None  # every node, with show_all only

    def to_dict(self) -> dict:
        """Return the report as a JSON-ready dict."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["op_counts"] = [{"op": op, "count": n} for op, n in self.op_counts]
        return out


def inspect_graph(path: Path, show_all: bool = False) -> GraphReport:
    """Read the frozen graph at ``path`` and describe it.

    Raises:
        GraphError: the file is missing, empty or not a GraphDef.
    """
    path = Path(path)
    graph_def = read_graph_def(path)
    tensors, shapes_from = _static_tensors(graph_def)
    nodes = {node.name: node for node in graph_def.node}
    op_counts = Counter(node.op for node in graph_def.node)
    return GraphReport(
        path=path,
        size_bytes=path.stat().st_size,
        sha256=file_sha256(path),
        node_count=len(graph_def.node),
        producer=graph_def.versions.producer,
        min_consumer=graph_def.versions.min_consumer,
        op_counts=sorted(op_counts.items(), key=lambda item: (-item[1], item[0])),
        deprecated=_deprecated(graph_def, op_counts),
        placeholders=[_tensor(f"{n.name}:0", nodes, tensors) for n in graph_def.node if n.op in PLACEHOLDER_OPS],
        consts=_const_summary(graph_def),
        image_inputs=_bytes_inputs(graph_def, nodes, tensors) + _normalised_inputs(graph_def, nodes, tensors),
        bottlenecks=_bottlenecks(graph_def, nodes, tensors),
        softmax=[Candidate("softmax output", _tensor(f"{n.name}:0", nodes, tensors), "output of a Softmax op")
                 for n in graph_def.node if n.op == "Softmax"],
        shapes_from=shapes_from,
        nodes=_node_infos(graph_def, tensors) if show_all else None,
    )


def _node_infos(graph_def: graph_pb2.GraphDef, tensors: dict[str, TensorInfo]) -> list[NodeInfo]:
    by_node: dict[str, list[TensorInfo]] = {}
    for name, info in tensors.items():
        by_node.setdefault(_node_of(name), []).append(info)
    return [NodeInfo(n.name, n.op, by_node.get(n.name, [])) for n in graph_def.node]


def _static_tensors(graph_def: graph_pb2.GraphDef) -> tuple[dict[str, TensorInfo], str]:
    """Import the graph into a v1 graph and return every output's static dtype and shape."""
    attempts = [("original graph", lambda: graph_def), ("rewritten graph", lambda: rewrite_legacy_ops(graph_def)[0])]
    errors = []
    for label, make in attempts:
        try:
            graph = tf.Graph()
            with graph.as_default():
                tf.compat.v1.import_graph_def(make(), name="")
        except Exception as exc:  # any import failure just means "shapes unknown"
            log.debug("importing the %s failed: %s", label, exc)
            errors.append(f"{label}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        tensors = {}
        for op in graph.get_operations():
            for out in op.outputs:
                tensors[out.name] = TensorInfo(out.name, out.dtype.name, _shape_list(out.shape))
        return tensors, label
    return {}, "unavailable: " + "; ".join(errors)


def _shape_list(shape: tf.TensorShape) -> Shape | None:
    if shape.rank is None:
        return None
    return [-1 if d is None else int(d) for d in shape.as_list()]


def _node_of(tensor: str) -> str:
    return tensor.lstrip("^").split(":", 1)[0]


def _tensor_name(inp: str) -> str:
    return inp if ":" in inp else f"{inp}:0"


def _tensor(name: str, nodes: dict, tensors: dict[str, TensorInfo]) -> TensorInfo:
    """Return what is known about tensor ``name``: imported shapes first, then the node's own attrs."""
    if name in tensors:
        return tensors[name]
    node = nodes.get(_node_of(name))
    dtype, shape = "unknown", None
    if node is not None:
        for key in ("dtype", "T"):
            if key in node.attr and _dtype(node.attr[key].type) is not None:
                dtype = _dtype(node.attr[key].type).name
                break
        if "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
            shape = [d.size for d in node.attr["shape"].shape.dim]
    return TensorInfo(name, dtype, shape)


def _dtype(enum: int) -> tf.dtypes.DType | None:
    """Return the DType of a DataType enum, or None for an invalid one."""
    try:
        return tf.dtypes.as_dtype(enum) if enum else None
    except TypeError:
        return None


def _deprecated(graph_def: graph_pb2.GraphDef, op_counts: Counter) -> list[DeprecatedOp]:
    found = [DeprecatedOp(op, op_counts[op], version, _deprecation_note(op, version))
             for op, version in sorted(deprecated_ops(graph_def).items())]
    if op_counts[OLD_CONCAT]:  # not marked deprecated by TensorFlow, but imgclf rewrites it
        found.append(DeprecatedOp(OLD_CONCAT, op_counts[OLD_CONCAT], None,
                                  "old axis-first Concat; rewritten to ConcatV2 on load"))
    return found


def _deprecation_note(op: str, version: int) -> str:
    if op == OLD_BATCH_NORM:
        return f"removed at GraphDef version {version}; imgclf folds it into the convolutions on load"
    return f"removed at GraphDef version {version}; imgclf has no rewrite for it (keep the graph in a v1 session)"


def _const_summary(graph_def: graph_pb2.GraphDef) -> ConstSummary:
    consts = []
    for node in graph_def.node:
        if node.op != "Const":
            continue
        proto = node.attr["value"].tensor if "value" in node.attr else None
        shape = [max(d.size, 0) for d in proto.tensor_shape.dim] if proto is not None else []
        params = int(np.prod(shape, dtype=np.int64))
        dtype = _dtype(proto.dtype) if proto is not None else None
        if dtype is None:  # a malformed Const: list it, count nothing
            consts.append(ConstInfo(node.name, "unknown", shape, 0, 0))
            continue
        # Strings have no fixed size; count their bytes.
        size = sum(len(s) for s in proto.string_val) if dtype == tf.string else params * dtype.size
        consts.append(ConstInfo(node.name, dtype.name, shape, params, size))
    consts.sort(key=lambda c: (-c.bytes, c.name))
    return ConstSummary(count=len(consts), params=sum(c.params for c in consts),
                        bytes=sum(c.bytes for c in consts), largest=consts[:LARGEST_CONSTS])


def _consumers(graph_def: graph_pb2.GraphDef) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph_def.node:
        for inp in node.input:
            if not inp.startswith("^"):
                out.setdefault(_node_of(inp), []).append(node)
    return out


def _bytes_inputs(graph_def, nodes, tensors) -> list[Candidate]:
    """String placeholders of scalar (or unknown) shape: fed with one encoded image."""
    consumers = _consumers(graph_def)
    found = []
    for node in graph_def.node:
        if node.op not in PLACEHOLDER_OPS:
            continue
        info = _tensor(f"{node.name}:0", nodes, tensors)
        if info.dtype != "string" or info.shape not in (None, []):
            continue
        decoders = [c.name for c in consumers.get(node.name, []) if c.op in DECODE_OPS]
        why = f"string placeholder fed to {', '.join(decoders)}" if decoders else "string placeholder, no decoder seen"
        found.append(Candidate("encoded image bytes", info, why))
    return found


def _topological(graph_def: graph_pb2.GraphDef) -> list:
    """Return the nodes inputs-first; nodes on cycles (while loops) come last, in file order."""
    nodes = {node.name: node for node in graph_def.node}
    pending = {node.name: len({_node_of(i) for i in node.input if _node_of(i) in nodes}) for node in graph_def.node}
    users: dict[str, list[str]] = {}
    for node in graph_def.node:
        for src in {_node_of(i) for i in node.input if _node_of(i) in nodes}:
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
        sources = [_node_of(i) for i in node.input]
        upstream = any(conv_upstream.get(s, False) or nodes[s].op in CONV_OPS for s in sources if s in nodes)
        conv_upstream[node.name] = upstream
        if node.op not in CONV_OPS or upstream or not node.input:
            continue
        info = _tensor(_tensor_name(node.input[0]), nodes, tensors)
        if info.name in seen or not info.dtype.startswith(("float", "bfloat", "half")):
            continue
        if info.shape is not None and len(info.shape) != 4:
            continue
        seen.add(info.name)
        found.append(Candidate("normalised image", info, f"input of the first convolution {node.name}"))
    return found


def _is_const(name: str, nodes: dict) -> bool:
    node = nodes.get(_node_of(name))
    while node is not None and node.op == "Identity" and node.input:
        node = nodes.get(_node_of(node.input[0]))
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
        node = nodes.get(_node_of(softmax.input[0])) if softmax.input else None
        hops = 0
        while node is not None and node.op in LOGIT_PASS_THROUGH and hops < 16:
            data = _data_input(node, nodes)
            node = nodes.get(_node_of(data)) if data else None
            hops += 1
        if node is None or node.op not in MATMUL_OPS:
            continue
        data = _data_input(node, nodes)
        if data is None or _tensor_name(data) in seen:
            continue
        info = _tensor(_tensor_name(data), nodes, tensors)
        seen.add(info.name)
        flat = nodes.get(_node_of(data))
        why = f"input of the last {node.op}, {node.name}"
        if _fixed_batch_reshape(flat, nodes):
            why += "; constant reshape: one image only"
        found.append(Candidate("bottleneck", info, why))
        if flat is not None and flat.op in FLATTEN_OPS and flat.input:
            before = _tensor(_tensor_name(flat.input[0]), nodes, tensors)
            if before.name not in seen:
                seen.add(before.name)
                found.append(Candidate("bottleneck", before, f"input of the {flat.op} {flat.name}"))
    return found


def _fixed_batch_reshape(node, nodes: dict) -> bool:
    """Whether ``node`` is a Reshape to a constant shape with a fixed batch size (the 2015 ``pool_3/_reshape``)."""
    if node is None or node.op != "Reshape" or len(node.input) < 2 or not _is_const(node.input[1], nodes):
        return False
    shape_node = nodes[_node_of(node.input[1])]
    while shape_node.op == "Identity":
        shape_node = nodes[_node_of(shape_node.input[0])]
    shape = tf.make_ndarray(shape_node.attr["value"].tensor).reshape(-1)
    return shape.size > 0 and int(shape[0]) != -1


def format_shape(shape: Shape | None) -> str:
    """Return ``[1,299,299,3]`` (``?`` for unknown dimensions), or ``<unknown>`` for unknown rank."""
    if shape is None:
        return "<unknown>"
    return "[" + ",".join("?" if d < 0 else str(d) for d in shape) + "]"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-align ``rows`` in columns (the last column is not padded)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(len(r) for r in rows))]
    return [indent + "  ".join(cell.ljust(widths[i]) if i < len(row) - 1 else cell
                               for i, cell in enumerate(row)).rstrip() for row in rows]


def format_report(report: GraphReport) -> str:
    """Return the report as readable, column-aligned text."""
    lines = _table([
        ["file", str(report.path)],
        ["size", f"{_human_bytes(report.size_bytes)} ({report.size_bytes:,} bytes)"],
        ["sha256", report.sha256],
        ["nodes", f"{report.node_count:,}"],
        ["producer", f"{report.producer} (GraphDef version written with; this TensorFlow writes "
                     f"{tf.version.GRAPH_DEF_VERSION})"],
    ], indent="")
    lines += ["", f"Op types ({len(report.op_counts)})"]
    lines += _table([[op, str(n)] for op, n in report.op_counts])
    lines += ["", "Deprecated / old ops"]
    lines += _table([[d.op, f"x{d.count}", d.note] for d in report.deprecated]) or ["  none"]
    lines += ["", "Inputs (placeholders)"]
    lines += _table([[p.name, p.dtype, format_shape(p.shape)] for p in report.placeholders]) or ["  none"]
    c = report.consts
    lines += ["", f"Constants: {c.count:,} tensor{'' if c.count == 1 else 's'}, {c.params:,} parameters, "
                  f"{_human_bytes(c.bytes)}"]
    if c.largest:
        lines += ["  largest:"]
        lines += _table([[k.name, k.dtype, format_shape(k.shape), f"{k.params:,}", _human_bytes(k.bytes)]
                         for k in c.largest], indent="    ")
    lines += ["", "Likely tensors (guessed from the graph's structure)"]
    candidates = report.image_inputs + report.bottlenecks + report.softmax
    if candidates:
        lines += _table([[k.role, k.tensor.name, k.tensor.dtype, format_shape(k.tensor.shape), k.why]
                         for k in candidates])
    missing = [role for role, found in (("image input", report.image_inputs), ("bottleneck", report.bottlenecks),
                                        ("softmax", report.softmax)) if not found]
    if missing:
        lines.append(f"  no candidates found for: {', '.join(missing)}; pass those tensor names explicitly "
                     "(`--all` lists every tensor)")
    if not report.shapes_from.startswith(("original", "rewritten")):
        lines.append(f"  shapes {report.shapes_from}")
    if report.nodes is not None:
        lines += ["", f"Nodes ({len(report.nodes):,}; shapes from the {report.shapes_from})"]
        rows = []
        for node in report.nodes:  # one row per output tensor; nodes without outputs get one row
            rows += [[t.name, node.op, t.dtype, format_shape(t.shape)] for t in node.outputs] or [[node.name, node.op]]
        lines += _table(rows)
    return "\n".join(lines) + "\n"


def write_tensorboard_graph(path: Path, logdir: Path) -> Path:
    """Write the graph at ``path`` as an event file in ``logdir`` for TensorBoard's Graphs tab.

    Returns:
        The event file written.
    """
    graph_def = read_graph_def(path)
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    before = set(logdir.glob("events.out.tfevents.*"))
    writer = tf.summary.create_file_writer(str(logdir))
    try:
        with writer.as_default():
            tf.summary.graph(graph_def)
        writer.flush()
    finally:
        writer.close()
    created = sorted(set(logdir.glob("events.out.tfevents.*")) - before, key=lambda p: p.stat().st_mtime)
    if not created:  # pragma: no cover - the writer always creates a fresh file
        raise OSError(f"no event file appeared in {str(logdir)!r}")
    return created[-1]


__all__ = [
    "Candidate", "ConstInfo", "ConstSummary", "DeprecatedOp", "GraphReport", "NodeInfo", "TensorInfo",
    "format_report", "format_shape", "inspect_graph", "write_tensorboard_graph",
]
