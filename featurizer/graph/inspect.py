"""Describe a frozen GraphDef so a user can find their way in it (`imgclf inspect`).

The report says what the file is (size, sha256, producer version), which ops it
uses and which of them are too old for a current graph, what it takes as input
(placeholders) and carries as weights (constants), and which tensors are
*likely* the ones imgclf needs: the encoded-image input, the normalised image
before the first convolution, the bottleneck that feeds the final classifier,
and the softmax. The guesses are heuristics over the graph's structure, not
names (see :mod:`imgclf.featurizer.graph.candidates`); where nothing fits, the
report says so.

:func:`write_tensorboard_graph` writes the graph as a TensorBoard event file,
for browsing it in the Graphs tab.

Neither runs the graph, so an untrusted graph may be inspected: ops outside
imgclf's inference allow-list (:mod:`imgclf.core.op_policy`) are listed in the
report, which is how a user learns why `featurize`, `train` or `serve` refuse
the graph before deciding on ``--allow-unsafe-ops``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from imgclf.core.op_policy import unsafe_ops_in_graph_def
from imgclf.featurizer.graph.candidates import (
    PLACEHOLDER_OPS,
    Candidate,
    Shape,
    TensorInfo,
    dtype_or_none,
    find_candidates,
    tensor_info,
)
from imgclf.featurizer.graph.contract import node_name
from imgclf.featurizer.graph.legacy_ops import OLD_BATCH_NORM, OLD_CONCAT, deprecated_ops, rewrite_legacy_ops
from imgclf.featurizer.graph.load import file_sha256, parse_graph_def, read_graph_bytes

log = logging.getLogger(__name__)

LARGEST_CONSTS = 5


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
    unsafe_ops: list[str]  # ops outside the inference allow-list, e.g. "ReadFile (node 'x')"; loading refuses them
    nodes: list[NodeInfo] | None = None  # every node, with show_all only

    def to_dict(self) -> dict:
        """Return the report as a JSON-ready dict."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["op_counts"] = [{"op": op, "count": n} for op, n in self.op_counts]
        return out


def inspect_graph(path: Path, show_all: bool = False) -> GraphReport:
    """Read the frozen graph at ``path`` and describe it.

    The graph is not run, so ops outside the inference allow-list are reported
    (``unsafe_ops``), not refused.

    Raises:
        GraphError: the file is missing, empty or not a GraphDef.
    """
    path = Path(path)
    graph_def = _read_unchecked(path)
    tensors, shapes_from = _static_tensors(graph_def)
    nodes = {node.name: node for node in graph_def.node}
    op_counts = Counter(node.op for node in graph_def.node)
    image_inputs, bottlenecks, softmax = find_candidates(graph_def, tensors)
    return GraphReport(
        path=path,
        size_bytes=path.stat().st_size,
        sha256=file_sha256(path),
        node_count=len(graph_def.node),
        producer=graph_def.versions.producer,
        min_consumer=graph_def.versions.min_consumer,
        op_counts=sorted(op_counts.items(), key=lambda item: (-item[1], item[0])),
        deprecated=_deprecated(graph_def, op_counts),
        placeholders=[tensor_info(f"{n.name}:0", nodes, tensors) for n in graph_def.node
                      if n.op in PLACEHOLDER_OPS],
        consts=_const_summary(graph_def),
        image_inputs=image_inputs,
        bottlenecks=bottlenecks,
        softmax=softmax,
        shapes_from=shapes_from,
        unsafe_ops=[finding.describe() for finding in unsafe_ops_in_graph_def(graph_def)],
        nodes=_node_infos(graph_def, tensors) if show_all else None,
    )


def _read_unchecked(path: Path) -> graph_pb2.GraphDef:
    """Read a GraphDef without the allow-list check: describing a graph does not run it."""
    return parse_graph_def(read_graph_bytes(path), source=repr(str(path)))


def _node_infos(graph_def: graph_pb2.GraphDef, tensors: dict[str, TensorInfo]) -> list[NodeInfo]:
    by_node: dict[str, list[TensorInfo]] = {}
    for name, info in tensors.items():
        by_node.setdefault(node_name(name), []).append(info)
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
        dtype = dtype_or_none(proto.dtype) if proto is not None else None
        if dtype is None:  # a malformed Const: list it, count nothing
            consts.append(ConstInfo(node.name, "unknown", shape, 0, 0))
            continue
        # Strings have no fixed size; count their bytes.
        size = sum(len(s) for s in proto.string_val) if dtype == tf.string else params * dtype.size
        consts.append(ConstInfo(node.name, dtype.name, shape, params, size))
    consts.sort(key=lambda c: (-c.bytes, c.name))
    return ConstSummary(count=len(consts), params=sum(c.params for c in consts),
                        bytes=sum(c.bytes for c in consts), largest=consts[:LARGEST_CONSTS])


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
    if report.unsafe_ops:
        lines += ["", f"Ops outside imgclf's inference allow-list ({len(report.unsafe_ops)}): featurize, train and "
                      "serve refuse this graph unless --allow-unsafe-ops (a graph is a program: only if you trust "
                      "its source)"]
        lines += [f"  {finding}" for finding in report.unsafe_ops]
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
    graph_def = _read_unchecked(path)  # written out for viewing, not run
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
