"""Which TensorFlow ops a graph or SavedModel may hold before imgclf loads it: an allow-list for inference.

A GraphDef or SavedModel is a program, not data (TensorFlow's security policy
says so): besides convolutions it can read and write files (``ReadFile``,
``WriteFile``, ``MatchingFiles``, data set and reader ops, ``ImmutableConst``),
call back into Python (``PyFunc``), print to files (``PrintV2``) or talk to
other processes (``RemoteCall``, collectives). imgclf therefore loads only
graphs made of the ops in :data:`ALLOWED_OPS` — math, neural-network layers,
array and shape ops, the control flow of ``tf.function``, variables, image
decoding and resizing, pure string ops, ``map_fn``'s tensor lists — unless the
user opts in (``--allow-unsafe-ops``, ``allow_unsafe_ops=True``,
``IMGCLF_ALLOW_UNSAFE_OPS=1``). The list was built from the ops imgclf's own
exports use (the featurizer graphs, ``saved_model.pb``, ``head.pb``,
``end_to_end.pb``, Keras MLPs and convolutional nets) plus the usual inference
set around them; it is an allow-list, not "everything but a few bad ops".

A SavedModel's meta graph always carries a saver: ``SaveV2``,
``MergeV2Checkpoints``, ``ShardedFilename`` (writing a checkpoint) and
``RestoreV2`` (reading its own ``variables/``). TensorFlow 2 lays it out as
top-level ``StatefulPartitionedCall`` nodes named by ``saver_def`` (the
``save_tensor_name``'s node calls ``__inference__traced_save_N``, the
``restore_op_name`` node calls ``__inference__traced_restore_N``); TensorFlow 1
as a ``save/...`` subgraph feeding the same two names. These ops are allowed
only there: in top-level nodes that only the save target (or only the restore
target) needs, and in library functions that only those nodes call — saving
ops on the save side, ``RestoreV2`` on the restore side. Everything the
signatures, the init ops, the saved objects' functions or any other node can
reach is held to :data:`ALLOWED_OPS` alone. Calls are followed through every
function-valued attribute (``f`` of ``PartitionedCall``, ``then_branch``,
``body``, ``branches``, ...), through nodes whose op is a library function, and
from a function to its registered gradient; a function name that is not in the
library is checked as an op (TensorFlow runs a bare op by that name). An op
this TensorFlow does not have is reported as a load error (:class:`GraphError`),
not as unsafe: no opt-in could make it run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from imgclf.core import tf_private
from imgclf.core.errors import GraphError, UnsafeGraph
from imgclf.core.settings import env_bool

log = logging.getLogger(__name__)

ENV_ALLOW_UNSAFE_OPS = "IMGCLF_ALLOW_UNSAFE_OPS"
MAX_LISTED = 10  # findings named in an error message; the rest are counted

_GRAPH = {  # structure, the control flow of tf.function and TF1, checks
    "Const", "Placeholder", "PlaceholderV2", "PlaceholderWithDefault", "NoOp", "ControlTrigger",
    "Identity", "IdentityN", "Snapshot", "StopGradient", "PreventGradient", "EnsureShape",
    "CheckNumerics", "CheckNumericsV2", "Assert",
    "PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf", "While", "StatelessWhile",
    "Case", "StatelessCase", "For",
    "Switch", "Merge", "Enter", "Exit", "NextIteration", "LoopCond",
    "OptionalFromValue", "OptionalGetValue", "OptionalHasValue", "OptionalNone",
}
_VARIABLES = {  # resource variables (TF2) and reference variables (TF1); values live in memory
    "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
    "VarIsInitializedOp", "VariableShape", "ResourceGather", "ResourceGatherNd", "DestroyResourceOp",
    "VariableV2", "Assign", "IsVariableInitialized",
}
_MATH = {
    "Abs", "Acos", "Acosh", "Add", "AddN", "AddV2", "All", "Any", "ApproximateEqual", "ArgMax", "ArgMin",
    "Asin", "Asinh", "Atan", "Atan2", "Atanh", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Bucketize", "Cast", "Ceil", "ClipByValue", "Cos", "Cosh",
    "Cumprod", "Cumsum", "Div", "DivNoNan", "Einsum", "Equal", "Erf", "Erfc", "EuclideanNorm", "Exp",
    "Expm1", "Floor", "FloorDiv", "FloorMod", "Greater", "GreaterEqual", "Inv", "Invert", "IsFinite",
    "IsInf", "IsNan", "LeftShift", "Less", "LessEqual", "LinSpace", "Log", "Log1p", "LogicalAnd",
    "LogicalNot", "LogicalOr", "MatMul", "Max", "Maximum", "Mean", "Min", "Minimum", "Mod", "Mul",
    "MulNoNan", "Neg", "NotEqual", "Pow", "Prod", "Range", "RealDiv", "Reciprocal", "RightShift", "Rint",
    "Round", "Rsqrt", "SegmentMax", "SegmentMean", "SegmentMin", "SegmentSum", "Select", "SelectV2",
    "Sign", "Sin", "Sinh", "Sqrt", "Square", "SquaredDifference", "Sub", "Sum", "Tan", "Tanh",
    "TruncateDiv", "TruncateMod", "UnsortedSegmentMax", "UnsortedSegmentMin", "UnsortedSegmentSum",
    "Xdivy", "Xlog1py", "Xlogy",
}
_NN = {  # layers: convolutions, pooling, normalisation, activations, output heads
    "AvgPool", "AvgPool3D", "BatchNormWithGlobalNormalization", "BiasAdd", "BiasAddV1", "Conv2D",
    "Conv2DBackpropInput", "Conv3D", "Conv3DBackpropInputV2", "DataFormatDimMap", "DataFormatVecPermute",
    "DepthwiseConv2dNative", "Elu", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "InTopKV2",
    "LeakyRelu", "LogSoftmax", "LRN", "MaxPool", "MaxPool3D", "MaxPoolV2", "MaxPoolWithArgmax",
    "Relu", "Relu6", "Selu", "Sigmoid", "Softmax", "Softplus", "Softsign", "TopKV2",
}
_ARRAY = {  # shapes, slicing, joining, gathering; values only
    "BatchToSpaceND", "Bitcast", "BroadcastArgs", "BroadcastGradientArgs", "BroadcastTo", "Concat",
    "ConcatOffset", "ConcatV2", "DepthToSpace", "ExpandDims", "Fill", "Gather", "GatherNd", "GatherV2",
    "InvertPermutation", "ListDiff", "LowerBound", "MatrixBandPart", "MatrixDiagPartV3", "MatrixDiagV3",
    "MatrixSetDiagV3", "MirrorPad", "OneHot", "OnesLike", "Pack", "Pad", "PadV2", "Rank", "Reshape",
    "Reverse", "ReverseSequence", "ReverseV2", "Roll", "ScatterNd", "Shape", "ShapeN", "Size", "Slice",
    "SpaceToBatchND", "SpaceToDepth", "SparseToDense", "Split", "SplitV", "Squeeze", "StridedSlice",
    "TensorScatterAdd", "TensorScatterUpdate", "Tile", "Transpose", "Unique", "Unpack", "UpperBound",
    "Where", "ZerosLike",
}
_RANDOM = {  # seeded or stateless generators (initialisers of TF1 graphs, sampling layers)
    "RandomStandardNormal", "RandomUniform", "RandomUniformInt", "StatelessRandomGetAlg",
    "StatelessRandomGetKeyCounter", "StatelessRandomNormal", "StatelessRandomNormalV2",
    "StatelessRandomUniform", "StatelessRandomUniformIntV2", "StatelessRandomUniformV2",
    "StatelessTruncatedNormalV2", "TruncatedNormal",
}
_IMAGE = {  # decoding and encoding in memory, resizing, colour, boxes
    "AdjustContrastv2", "AdjustHue", "AdjustSaturation", "CropAndResize", "DecodeAndCropJpeg", "DecodeBmp",
    "DecodeGif", "DecodeImage", "DecodeJpeg", "DecodePng", "EncodeJpeg", "EncodePng", "ExtractImagePatches",
    "ExtractJpegShape", "HSVToRGB", "NonMaxSuppressionV3", "NonMaxSuppressionV4", "NonMaxSuppressionV5",
    "ResizeArea", "ResizeBicubic", "ResizeBilinear", "ResizeNearestNeighbor", "RGBToHSV",
    "ScaleAndTranslate",
}
_STRINGS = {  # pure string ops (labels, image headers, tf.Example parsing); none touches a file
    "AsString", "DecodeBase64", "DecodeRaw", "EncodeBase64", "ParseExample", "ParseExampleV2",
    "ParseSingleExample", "ReduceJoin", "RegexFullMatch", "RegexReplace", "StaticRegexFullMatch",
    "StaticRegexReplace", "StringFormat", "StringJoin", "StringLength", "StringLower", "StringSplitV2",
    "StringStrip", "StringToHashBucketFast", "StringToNumber", "StringUpper", "Substr",
}
_LISTS_AND_TABLES = {  # map_fn / while-loop tensor lists and arrays, lookup tables built from tensors
    "EmptyTensorList", "TensorListConcatV2", "TensorListElementShape", "TensorListFromTensor",
    "TensorListGather", "TensorListGetItem", "TensorListLength", "TensorListPopBack", "TensorListPushBack",
    "TensorListReserve", "TensorListResize", "TensorListScatterIntoExistingList", "TensorListSetItem",
    "TensorListSplit", "TensorListStack",
    "TensorArrayCloseV3", "TensorArrayConcatV3", "TensorArrayGatherV3", "TensorArrayReadV3",
    "TensorArrayScatterV3", "TensorArraySizeV3", "TensorArraySplitV3", "TensorArrayV3",
    "TensorArrayWriteV3",
    "HashTableV2", "InitializeTableV2", "LookupTableFindV2", "LookupTableImportV2", "LookupTableSizeV2",
}

ALLOWED_OPS: frozenset[str] = frozenset(
    _GRAPH | _VARIABLES | _MATH | _NN | _ARRAY | _RANDOM | _IMAGE | _STRINGS | _LISTS_AND_TABLES)
"""Ops a graph may use anywhere: inference on tensors in memory, nothing that reaches outside the process."""

SAVE_OPS: frozenset[str] = frozenset({
    "SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec",
    "DisableCopyOnRead",
})
"""Extra ops allowed only in a SavedModel's save target (``saver_def.save_tensor_name``) and what only it calls."""

RESTORE_OPS: frozenset[str] = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
"""Extra ops allowed only in a SavedModel's restore target (``saver_def.restore_op_name``) and what only it calls."""


@dataclass(frozen=True)
class Finding:
    """One node whose op is not allowed where it is."""

    op: str
    node: str
    function: str = ""  # library function holding the node; "" = the top-level graph
    attr: str = ""  # set when the op is named by this function-valued attribute of the node

    def describe(self) -> str:
        """Return e.g. ``ReadFile (node 'foo')`` or ``PyFunc (function 'bar' node 'baz')``."""
        where = f"function {self.function!r} node {self.node!r}" if self.function else f"node {self.node!r}"
        return f"{self.op} ({where}{f' attr {self.attr!r}' if self.attr else ''})"


def _called_functions(attrs: Mapping) -> Iterator[tuple[str, str]]:
    """Yield (attr name, function name) for every function-valued attribute, nested ones included."""
    for key, value in attrs.items():
        which = value.WhichOneof("value")
        if which == "func":
            yield key, value.func.name
            yield from ((key, name) for _, name in _called_functions(value.func.attr))
        elif which == "list":
            for func in value.list.func:
                yield key, func.name
                yield from ((key, name) for _, name in _called_functions(func.attr))


class _Library:
    """A graph's function library: who calls whom, and the ops each node runs."""

    def __init__(self, graph_def):
        self.functions = {f.signature.name: f for f in graph_def.library.function}
        self.gradients = {g.function_name: g.gradient_func for g in graph_def.library.gradient}

    def calls(self, node) -> set[str]:
        """Return the library functions ``node`` calls (by its op or through function-valued attrs)."""
        names = {name for _, name in _called_functions(node.attr)}
        if node.op in self.functions:
            names.add(node.op)
        return names & self.functions.keys()

    def closure(self, roots: Iterable[str]) -> set[str]:
        """Return ``roots`` (function names) and every function they call, transitively."""
        seen: set[str] = set()
        todo = [name for name in roots if name in self.functions]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in self.functions[name].node_def:
                todo.extend(self.calls(node) - seen)
            gradient = self.gradients.get(name)
            if gradient in self.functions and gradient not in seen:
                todo.append(gradient)
        return seen

    def findings(self, node, function: str, extra: frozenset[str]) -> Iterator[Finding]:
        """Yield the ops ``node`` runs that are neither allowed nor in ``extra``."""
        allowed = ALLOWED_OPS | extra
        if node.op not in allowed and node.op not in self.functions:
            yield Finding(node.op, node.name, function)
        for attr, name in _called_functions(node.attr):
            if name and name not in self.functions and name not in allowed:  # a bare op run as a function
                yield Finding(name, node.name, function, attr)


def _input_node(name: str) -> str:
    """Return the node of an input or tensor name: ``^a`` → ``a``, ``a:1`` → ``a``."""
    return name.lstrip("^").split(":")[0]


def _ancestors(nodes: Mapping, roots: Iterable[str]) -> set[str]:
    """Return ``roots`` (node names) and every node they read, control inputs included."""
    seen: set[str] = set()
    todo = [r for r in roots if r in nodes]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(i for i in (_input_node(x) for x in nodes[name].input) if i in nodes and i not in seen)
    return seen


def _scan(graph_def, contexts: list[tuple[set[str], set[str], frozenset[str]]]) -> list[Finding]:
    """Check every node of ``graph_def`` and of its library.

    Each context is (top-level nodes, root functions, extra ops). A top-level
    node or a function may use the ops that *every* context reaching it allows
    (the intersection), so an op allowed in the saver alone is refused as soon
    as anything else reaches it. Nodes no context reaches get no extra ops.
    """
    library = _Library(graph_def)
    node_extra: dict[str, frozenset[str]] = {}
    function_extra: dict[str, frozenset[str]] = {}
    for nodes, functions, extra in contexts:
        reached = library.closure(functions | {f for n in graph_def.node if n.name in nodes
                                               for f in library.calls(n)})
        for name in nodes:
            node_extra[name] = node_extra.get(name, extra) & extra
        for name in reached:
            function_extra[name] = function_extra.get(name, extra) & extra
    found = []
    for node in graph_def.node:
        found += library.findings(node, "", node_extra.get(node.name, frozenset()))
    for name, function in library.functions.items():
        extra = function_extra.get(name, frozenset())
        for node in function.node_def:
            found += library.findings(node, name, extra)
    return found


def unsafe_ops_in_graph_def(graph_def) -> list[Finding]:
    """Return every node of a GraphDef (top level and function library) whose op is not in :data:`ALLOWED_OPS`."""
    return _scan(graph_def, [])


def unsafe_ops_in_meta_graph(meta_graph) -> list[Finding]:
    """Return the disallowed ops of one SavedModel meta graph, allowing the saver's ops only in the saver.

    The saver's nodes are the ancestors of ``saver_def.save_tensor_name`` and
    ``saver_def.restore_op_name``; every other node, the signatures' tensors,
    the init and main ops of the collections, and the concrete functions of the
    saved object graph are held to :data:`ALLOWED_OPS`.
    """
    graph_def = meta_graph.graph_def
    nodes = {node.name: node for node in graph_def.node}
    saver = meta_graph.saver_def
    save = _ancestors(nodes, [_input_node(saver.save_tensor_name)] if saver.save_tensor_name else [])
    restore = _ancestors(nodes, [_input_node(saver.restore_op_name)] if saver.restore_op_name else [])
    named = {_input_node(t.name) for s in meta_graph.signature_def.values()
             for t in list(s.inputs.values()) + list(s.outputs.values()) if t.name}
    for collection in meta_graph.collection_def.values():  # init ops, main ops, table initialisers
        named.update(_input_node(n) for n in collection.node_list.value)
    strict_nodes = _ancestors(nodes, named | (set(nodes) - save - restore))
    strict_functions = set(meta_graph.object_graph_def.concrete_functions)
    for obj in meta_graph.object_graph_def.nodes:
        kind = obj.WhichOneof("kind")
        if kind == "function":
            strict_functions.update(obj.function.concrete_functions)
        elif kind == "bare_concrete_function":
            strict_functions.add(obj.bare_concrete_function.concrete_function_name)
    library = _Library(graph_def)
    saver_functions = library.closure(f for n in save | restore for f in library.calls(nodes[n]))
    # Library functions nothing names (neither the saver nor anything else) get no extra ops either.
    strict_functions |= set(library.functions) - saver_functions
    return _scan(graph_def, [(save, set(), SAVE_OPS), (restore, set(), RESTORE_OPS),
                             (strict_nodes, strict_functions, frozenset())])


def refusal_message(source: str, findings: list[Finding]) -> str:
    """Return the error message for ``findings`` in ``source`` (e.g. ``graph 'x.pb'``)."""
    listed = ", ".join(f.describe() for f in findings[:MAX_LISTED])
    more = f" and {len(findings) - MAX_LISTED} more" if len(findings) > MAX_LISTED else ""
    return (f"{source} contains ops outside imgclf's inference allow-list: {listed}{more}; a graph is a "
            "program — load it only if you trust its source, with --allow-unsafe-ops "
            f"(service: {ENV_ALLOW_UNSAFE_OPS}=1)")


def _is_tensorflow_op(name: str) -> bool:
    return tf_private.op_def(name) is not None


def _enforce(source: str, findings: list[Finding], allow_unsafe_ops: bool) -> None:
    """Raise for ``findings`` (or, with ``allow_unsafe_ops``, log them).

    Ops this TensorFlow does not have cannot run at all; they get a
    :class:`GraphError` saying so rather than advice to allow them.
    """
    if not findings:
        return
    unknown = [f for f in findings if not _is_tensorflow_op(f.op)]
    if unknown and not allow_unsafe_ops:
        import tensorflow as tf

        raise GraphError(f"{source} does not load: it uses ops TensorFlow {tf.version.VERSION} does not have: "
                         + ", ".join(f.describe() for f in unknown[:MAX_LISTED])
                         + (f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""))
    message = refusal_message(source, findings)
    if not allow_unsafe_ops:
        raise UnsafeGraph(message)
    log.warning("loading anyway (unsafe ops allowed): %s", message)


def check_graph_def(graph_def, *, source: str = "graph", allow_unsafe_ops: bool = False) -> None:
    """Refuse a GraphDef holding ops outside :data:`ALLOWED_OPS`, in its nodes or its function library.

    Args:
        graph_def: a ``tf.compat.v1.GraphDef``.
        source: how the message names it, e.g. ``"graph '/models/x.pb'"``.
        allow_unsafe_ops: log a warning instead of raising.

    Raises:
        UnsafeGraph: naming each refused op and its node (and function).
        GraphError: it uses ops this TensorFlow does not have (it could not run anyway).
    """
    _enforce(source, unsafe_ops_in_graph_def(graph_def), allow_unsafe_ops)


def read_saved_model_proto(path: str | os.PathLike):
    """Parse a SavedModel directory's ``saved_model.pb`` (else ``saved_model.pbtxt``), running nothing.

    The file is chosen as ``tf.saved_model.load`` chooses it
    (``loader_impl.parse_saved_model``): the binary one when both exist.

    Raises:
        GraphError: neither file exists, or it is not a SavedModel.
    """
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    directory = Path(path)
    proto = saved_model_pb2.SavedModel()
    binary, text = directory / "saved_model.pb", directory / "saved_model.pbtxt"
    try:
        if binary.is_file():
            proto.ParseFromString(binary.read_bytes())
        elif text.is_file():
            text_format.Parse(text.read_text(encoding="utf-8"), proto)
        else:
            raise GraphError(f"{str(directory)!r} holds no saved_model.pb to check")
    except (OSError, DecodeError, text_format.ParseError, UnicodeDecodeError, RuntimeWarning, ValueError) as exc:
        raise GraphError(f"cannot check SavedModel {str(directory)!r}: it cannot be read as one "
                          f"({type(exc).__name__}: {exc})") from exc
    return proto


def check_saved_model(path: str | os.PathLike, *, allow_unsafe_ops: bool = False) -> None:
    """Refuse a SavedModel directory whose meta graphs hold ops outside the allow-list, before loading it.

    Every meta graph is checked; the saver's ``SaveV2``/``RestoreV2``/... are
    allowed only in the saver (see the module notes).

    Args:
        path: the SavedModel directory (holding ``saved_model.pb``).
        allow_unsafe_ops: log a warning instead of raising.

    Raises:
        UnsafeGraph: naming each refused op, its function and node.
        GraphError: the directory holds no readable ``saved_model.pb``, or it uses ops this
            TensorFlow does not have.
    """
    proto = read_saved_model_proto(path)
    findings = [f for meta_graph in proto.meta_graphs for f in unsafe_ops_in_meta_graph(meta_graph)]
    _enforce(f"SavedModel {str(path)!r}", findings, allow_unsafe_ops)


def allow_unsafe_ops_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Return whether ``IMGCLF_ALLOW_UNSAFE_OPS`` allows unsafe ops (a boolean setting; unset: no).

    Raises:
        UsageError: the variable is set to something that is not a yes or a no.
    """
    return env_bool(ENV_ALLOW_UNSAFE_OPS, default=False, env=env)


__all__ = [
    "ALLOWED_OPS", "ENV_ALLOW_UNSAFE_OPS", "Finding", "RESTORE_OPS", "SAVE_OPS", "allow_unsafe_ops_from_env",
    "check_graph_def", "check_saved_model", "read_saved_model_proto", "refusal_message",
    "unsafe_ops_in_graph_def", "unsafe_ops_in_meta_graph",
]
