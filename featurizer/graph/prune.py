"""Cut a GraphDef down to what some nodes need."""

from __future__ import annotations

from tensorflow.core.framework import graph_pb2

from imgclf.featurizer.graph.contract import node_name

_PURE_WRAPPERS = ("NoOp", "Identity")  # pure when everything they read is


def keep_ancestors(graph_def: graph_pb2.GraphDef, targets: str | list[str]) -> graph_pb2.GraphDef:
    """Return ``graph_def`` with only ``targets`` (node or tensor names) and what they depend on, in order."""
    by_name = {node.name: node for node in graph_def.node}
    keep: set[str] = set()
    stack = [node_name(t) for t in ([targets] if isinstance(targets, str) else targets)]
    while stack:
        name = stack.pop()
        if name in keep or name not in by_name:
            continue
        keep.add(name)
        stack.extend(node_name(inp) for inp in by_name[name].input)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(node for node in graph_def.node if node.name in keep)
    return out


def drop_pure_control_edges(graph_def: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
    """Remove control edges from nodes that only compute a constant, in place; return the graph.

    A frozen Keras function ends in ``Identity ← ^NoOp ← ^ReadVariableOp``
    for every weight: in a graph of constants these edges order nothing, but
    they keep every original weight an "ancestor" of the output, so after the
    featurizer folded its batch norms into new filters the old filters would
    be exported beside them (175 MB instead of 87 MB for Inception-v3). A
    node counts as pure when it is a ``Const``, or a ``NoOp``/``Identity`` all
    of whose inputs are pure; control edges to anything else (an ``Assert``)
    stay.
    """
    by_name = {node.name: node for node in graph_def.node}
    pure = {name for name, node in by_name.items() if node.op == "Const"}
    changed = True
    while changed:
        changed = False
        for name, node in by_name.items():
            if name not in pure and node.op in _PURE_WRAPPERS and all(node_name(i) in pure for i in node.input):
                pure.add(name)
                changed = True
    for node in graph_def.node:
        kept = [i for i in node.input if not (i.startswith("^") and node_name(i) in pure)]
        if len(kept) != len(node.input):
            del node.input[:]
            node.input.extend(kept)
    return graph_def
