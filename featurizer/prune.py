"""Cut a GraphDef down to what some nodes need."""

from __future__ import annotations

from tensorflow.core.framework import graph_pb2

from featurizer.contract import node_name


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
