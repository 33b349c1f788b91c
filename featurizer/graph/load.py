"""Load a frozen Inception-style GraphDef and run it: batched, or one JPEG at a time.

Two ways through the same file:

* :class:`BottleneckGraph` — the fast path. The old ops are rewritten
  (:mod:`imgclf.featurizer.graph.legacy_ops`), the normalised-image tensor becomes a
  placeholder with a free batch dimension, everything the bottleneck does not
  need (JPEG decoding, softmax) is cut away, and batches of images decoded
  outside the graph are fed in. Runs in fp32 or, through auto mixed
  precision, in bf16 (oneDNN, CPU) or fp16 (GPU; see :mod:`imgclf.core.precision`).
* :class:`SingleImageGraph` — the graph as the 2015 scripts used it, untouched:
  one encoded JPEG per run through ``DecodeJpeg/contents`` to the one-image
  bottleneck. It is the reference the batched path is checked against, and the
  baseline of the benchmark.

Safety (:mod:`imgclf.core.op_policy`): a graph is a program. :func:`load_graph`
and both graph classes refuse graphs holding ops outside
imgclf's inference allow-list (file, process and network ops) with
:class:`~imgclf.core.errors.UnsafeGraph`, unless ``allow_unsafe_ops=True``.
:func:`parse_graph_def` only parses.

Devices (:mod:`imgclf.core.devices`): both configure TensorFlow's devices before
anything else; with ``IMGCLF_DEVICE`` set, the graph is imported under
``tf.device(...)`` with the nodes' own device fields cleared, so every op asks
for that device and soft placement moves the few without a kernel there
(``DecodeJpeg`` on a GPU) to the CPU. Pinning per graph this way, rather than
through the session's ``device_count`` or ``gpu_options.visible_device_list``,
works for any GPU index (``device_count`` can only hide GPUs), leaves the
process-wide GPU setup alone (a second ``visible_device_list`` in one process
is an error), and uses the same device string as the service's eager calls.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import graph_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

from imgclf.core import devices
from imgclf.core.errors import GraphError
from imgclf.core.op_policy import check_graph_def
from imgclf.featurizer.graph import contract as names
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT, GraphContract, node_name
from imgclf.featurizer.graph.fold import fold_scale_shift
from imgclf.featurizer.graph.legacy_ops import RewriteReport, rewrite_legacy_ops
from imgclf.featurizer.graph.prune import drop_pure_control_edges, keep_ancestors

log = logging.getLogger(__name__)


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_graph_def(data: bytes, source: str = "graph") -> graph_pb2.GraphDef:
    """Parse serialized GraphDef bytes, raising :class:`GraphError` when they are not one."""
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise GraphError(f"{source} is not a frozen TensorFlow GraphDef: {exc}") from exc
    if not graph_def.node:
        raise GraphError(f"{source} holds no nodes; is it a frozen GraphDef (.pb)?")
    return graph_def


def read_graph_bytes(path: str | os.PathLike) -> bytes:
    """Return a graph file's bytes, raising :class:`GraphError` when it cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GraphError(f"cannot read graph {str(path)!r}: {exc.strerror or exc}") from exc


def missing_tensors(graph_def: graph_pb2.GraphDef, names: list[str]) -> list[str]:
    """Return those of ``names`` (tensor names) whose node is not in ``graph_def``."""
    present = {node.name for node in graph_def.node}
    return [name for name in names if node_name(name) not in present]


def require_tensors(graph_def: graph_pb2.GraphDef, names: list[str], source: str = "graph") -> None:
    """Raise :class:`GraphError` naming every tensor of ``names`` the graph lacks."""
    missing = missing_tensors(graph_def, names)
    if missing:
        raise GraphError(f"{source} lacks tensor(s) {', '.join(missing)}; "
                         "pass the right names (see `imgclf inspect GRAPH`)")


@dataclass(frozen=True)
class ThreadConfig:
    """TensorFlow thread pools; 0 means "let TensorFlow pick" (all usable cores)."""

    intra_op: int = 0  # threads inside one op (matrix multiplies, convolutions)
    # Ops run side by side. Inception's parallel branches are small: running them at once on top of
    # multi-threaded convolutions oversubscribes the cores (measured ~20% slower on 2 cores), so 1.
    inter_op: int = 1


def usable_cpus() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def session_config(threads: ThreadConfig = ThreadConfig(), precision: str = "fp32",
                   log_device_placement: bool | None = None) -> config_pb2.ConfigProto:
    """Return a v1 session config: thread pools, precision rewrite, GPU memory options and placement logging.

    ``precision`` "bf16" turns on oneDNN's bfloat16 rewrite (CPU-placed ops),
    "fp16" grappler's auto mixed precision (float16, GPU-placed ops of compute
    capability >= 7.0). The GPU options are the process's own (memory growth or
    limit, from :func:`imgclf.core.devices.configure_tensorflow`), which a session
    with its own config would otherwise not get. ``log_device_placement``
    defaults to ``IMGCLF_LOG_DEVICE_PLACEMENT``. Soft placement is always on.
    """
    settings = devices.configure_tensorflow()
    config = config_pb2.ConfigProto(
        intra_op_parallelism_threads=threads.intra_op or usable_cpus(),
        inter_op_parallelism_threads=threads.inter_op,
        allow_soft_placement=True,
        log_device_placement=settings.log_device_placement if log_device_placement is None
        else bool(log_device_placement),
    )
    config.gpu_options.CopyFrom(devices.session_gpu_options())
    if precision == "bf16":
        config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = \
            rewriter_config_pb2.RewriterConfig.ON
    elif precision == "fp16":
        config.graph_options.rewrite_options.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    elif precision != "fp32":
        raise ValueError(f"session precision must be fp32, bf16 or fp16; received {precision!r}")
    return config


def _pinned(graph_def: graph_pb2.GraphDef, device: str) -> graph_pb2.GraphDef:
    """Return ``graph_def`` with every node's own device cleared when ``device`` pins one, else as it is."""
    if not device or not any(node.device for node in graph_def.node):
        return graph_def
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        node.device = ""
    return out


def _graph_constant(graph_def: graph_pb2.GraphDef, node: str, input_index: int):
    """Return the constant fed to input ``input_index`` of ``node``, or None."""
    by_name = {n.name: n for n in graph_def.node}
    target = by_name.get(node)
    if target is None or len(target.input) <= input_index:
        return None
    source = by_name.get(node_name(target.input[input_index]))
    if source is None or source.op != "Const":
        return None
    return tf.make_ndarray(source.attr["value"].tensor)


def _scalar(value: np.ndarray) -> float:
    """Return the one value of a size-1 array of any shape ([] or [1], ...) as a float."""
    return float(np.asarray(value).reshape(()).item())


def contract_from_graph(graph_def: graph_pb2.GraphDef, contract: GraphContract = DEFAULT_CONTRACT) -> GraphContract:
    """Return ``contract`` with input size, mean, std and JPEG decoding read from the graph's preprocessing chain.

    The 2015 graph resizes with ``ResizeBilinear`` then computes ``(x - Sub/y) *
    Mul/y``; where those nodes exist with constant operands their values win
    over the defaults, so a graph with a different input size still works.
    """
    size = _graph_constant(graph_def, names.RESIZE_NODE, 1)
    mean = _graph_constant(graph_def, names.SUB_NODE, 1)
    mul = _graph_constant(graph_def, names.MUL_NODE, 1)
    updates = {}
    if size is not None and np.size(size) == 2 and size[0] == size[1]:
        updates["input_size"] = int(size[0])
    if mean is not None and np.size(mean) == 1:
        updates["input_mean"] = _scalar(mean)
    if mul is not None and np.size(mul) == 1 and _scalar(mul) != 0.0:
        updates["input_std"] = 1.0 / _scalar(mul)
    decode = next((n for n in graph_def.node if n.name == names.DECODE_NODE and n.op == "DecodeJpeg"), None)
    if decode is not None:  # decode JPEGs outside the graph exactly as this node does
        updates["jpeg_dct_method"] = decode.attr["dct_method"].s.decode() if "dct_method" in decode.attr else ""
    return contract.with_overrides(**updates)


# fp32 runs a batch as session runs of this many images (0 = the whole batch at once). Measured on a
# 2-core AVX-512 machine (bench.peers, bench/fp32 A/B): at batch 32 every fp32 activation (up to
# 32×147×147×64 floats, 177 MB) streams through memory between ops and the batch ran at 0.45–0.7×
# of one image per run; one image per run keeps them in cache, and fp32 convolutions are already
# near the cores' peak at batch 1. bf16 (AMX) gains from big batches: it keeps them.
FP32_MICRO_BATCH = 1
# Micro-batches run this many at once (0 = one per intra-op thread the config allows: every usable CPU
# by default), each a session run of its own. Inside one run the convolutions split every op over the
# cores and wait for the slowest part at every op, so a decode thread taking a core stalls both; two runs
# side by side keep both cores busy through that, and through the small ops where one image cannot fill
# two cores. Measured on a 2-core AVX-512 machine, the full graph, model only, two interleaved rounds:
# 13.1 and 13.7 img/s one run at a time, 15.4 and 14.6 with two at once.
FP32_CONCURRENT_RUNS = 0


class BottleneckGraph:
    """The batched fast path: normalised images [N, S, S, 3] in, bottlenecks [N, D] out.

    Raises :class:`~imgclf.core.errors.UnsafeGraph` for a graph with ops outside
    the inference allow-list unless ``allow_unsafe_ops`` (the caller's opt-in).
    """

    def __init__(self, graph_def: graph_pb2.GraphDef, contract: GraphContract = DEFAULT_CONTRACT,
                 precision: str = "fp32", threads: ThreadConfig = ThreadConfig(), *,
                 allow_unsafe_ops: bool = False):
        if not allow_unsafe_ops:  # with the opt-in, whoever read the file has warned already
            check_graph_def(graph_def)
        require_tensors(graph_def, [contract.image_input, contract.bottleneck])
        device = devices.configure_tensorflow().device  # before the first session (fold_scale_shift runs one)
        rewritten, self.rewrite_report = rewrite_legacy_ops(graph_def)
        rewritten, self.folded_scale_shifts = fold_scale_shift(rewritten)
        self.contract = contract
        self.precision = precision
        self.micro_batch = FP32_MICRO_BATCH if precision == "fp32" else 0
        pruned = _pinned(_cut_at_image_input(rewritten, contract), device)
        self.graph = tf.Graph()
        with self.graph.as_default(), devices.device_scope(device):
            (bottleneck,) = tf.graph_util.import_graph_def(pruned, name="", return_elements=[contract.bottleneck])
            self.dim = _bottleneck_dim(bottleneck.shape, contract.bottleneck)
            self._input = self.graph.get_tensor_by_name(contract.image_input)
            self._output = tf.reshape(bottleneck, [-1, self.dim], name="imgclf/bottleneck")
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config(threads, precision))
        self.concurrent_runs = (FP32_CONCURRENT_RUNS or threads.intra_op or usable_cpus()) if self.micro_batch \
            else 1
        # Threads start with the first batch of several micro-batches; close() ends them.
        self._runners = ThreadPoolExecutor(max(1, self.concurrent_runs), thread_name_prefix="fp32-run")

    def run(self, images: np.ndarray) -> np.ndarray:
        """Return float32 bottlenecks [N, D] for normalised float32 images [N, S, S, 3]."""
        self.contract.check_images(images)
        images = images.astype(np.float32, copy=False)
        step = self.micro_batch or len(images)
        slices = [images[i:i + step] for i in range(0, len(images), step)]
        if len(slices) > 1 and self.concurrent_runs > 1 and self._runners is not None:
            parts = list(self._runners.map(self._run_one, slices))  # session runs are thread-safe; map keeps order
        else:
            parts = [self._run_one(part) for part in slices]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if out.shape[0] != images.shape[0]:  # dimensions unknown at load were not 1 after all
            raise GraphError(f"bottleneck {self.contract.bottleneck} gave {out.shape[0]} vectors of "
                             f"{self.dim} for {images.shape[0]} images; it must be [N, {self.dim}] or "
                             f"[N, 1, 1, {self.dim}] (pooled)")
        return np.asarray(out, dtype=np.float32)

    def _run_one(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(self._output, {self._input: images})

    def close(self) -> None:
        """Release the session (and the threads of concurrent micro-batches)."""
        if self._runners is not None:
            self._runners.shutdown(wait=True)
            self._runners = None
        self.session.close()


def _bottleneck_dim(shape: tf.TensorShape, name: str) -> int:
    """Return D of a bottleneck shaped [N, D] or [N, 1, ..., 1, D].

    The bottleneck is flattened to [-1, D]: an unpooled one ([N, 8, 8, D]) would
    silently become 64·N rows. Dimensions unknown here are checked by
    :meth:`BottleneckGraph.run`.
    """
    dims = shape.as_list() if shape.rank is not None else None
    if dims is not None and len(dims) < 2:
        raise GraphError(f"bottleneck {name} must have a batch and a feature dimension; received shape {dims}")
    if dims is None or dims[-1] is None:
        raise GraphError(f"bottleneck {name} has an unknown last dimension")
    spatial = [d for d in dims[1:-1] if d is not None and d != 1]
    if spatial:
        raise GraphError(f"bottleneck {name} has shape {dims}: one vector per image needs every dimension "
                         "between batch and features to be 1 (is it before the pooling?)")
    return int(dims[-1])


def _cut_at_image_input(graph_def: graph_pb2.GraphDef, contract: GraphContract) -> graph_pb2.GraphDef:
    """Turn the image-input node into a [None, S, S, 3] placeholder and keep only what the bottleneck needs."""
    image_node = node_name(contract.image_input)
    if not contract.image_input.endswith(":0") and ":" in contract.image_input:
        raise GraphError(f"image input must be output 0 of its node; received {contract.image_input!r}")
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        copy = out.node.add()
        copy.CopyFrom(node)
        if node.name == image_node:
            dtype = node.attr["T"].type if "T" in node.attr else types_pb2.DT_FLOAT
            copy.op = "Placeholder"
            del copy.input[:]
            copy.attr.clear()
            copy.attr["dtype"].type = dtype
            shape = tensor_shape_pb2.TensorShapeProto()
            for size in (-1, contract.input_size, contract.input_size, 3):
                shape.dim.add(size=size)
            copy.attr["shape"].shape.CopyFrom(shape)
    # Without the frozen function's pure control edges, the pre-fold weights are not ancestors any more.
    return keep_ancestors(drop_pure_control_edges(out), node_name(contract.bottleneck))


def inference_graph_def(graph_def: graph_pb2.GraphDef, contract: GraphContract = DEFAULT_CONTRACT
                        ) -> tuple[graph_pb2.GraphDef, RewriteReport]:
    """Return the graph as :class:`BottleneckGraph` runs it (old ops rewritten, scale/shift folded, cut at the
    normalised image, [None, S, S, 3] → bottleneck), for other runtimes (OpenVINO), with the rewrite report."""
    require_tensors(graph_def, [contract.image_input, contract.bottleneck])
    rewritten, report = rewrite_legacy_ops(graph_def)
    rewritten, _ = fold_scale_shift(rewritten)
    return _cut_at_image_input(rewritten, contract), report


class SingleImageGraph:
    """The untouched 2015 path: one encoded JPEG per run → the one-image bottleneck.

    Raises :class:`~imgclf.core.errors.UnsafeGraph` for a graph with ops outside
    the inference allow-list unless ``allow_unsafe_ops`` (the caller's opt-in).
    """

    def __init__(self, graph_def: graph_pb2.GraphDef, contract: GraphContract = DEFAULT_CONTRACT,
                 threads: ThreadConfig = ThreadConfig(), *, allow_unsafe_ops: bool = False):
        if not allow_unsafe_ops:
            check_graph_def(graph_def)
        require_tensors(graph_def, [contract.jpeg_input, contract.bottleneck_single])
        device = devices.configure_tensorflow().device
        self.contract = contract
        self.graph = tf.Graph()
        with self.graph.as_default(), devices.device_scope(device):
            tf.graph_util.import_graph_def(_pinned(graph_def, device), name="")
        self._input = self.graph.get_tensor_by_name(contract.jpeg_input)
        self._output = self.graph.get_tensor_by_name(contract.bottleneck_single)
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config(threads, "fp32"))

    def run(self, jpeg: bytes) -> np.ndarray:
        """Return the float32 bottleneck [D] of one encoded JPEG."""
        out = self.session.run(self._output, {self._input: jpeg})
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def close(self) -> None:
        """Release the session."""
        self.session.close()


def load_graph(path: str | os.PathLike, *, allow_unsafe_ops: bool = False) -> tuple[graph_pb2.GraphDef, str]:
    """Read a frozen graph, check its ops against the inference allow-list, and return it with the file's sha256.

    Args:
        allow_unsafe_ops: accept (with a logged warning) ops outside the allow-list.

    Raises:
        GraphError: the file cannot be read or is not a GraphDef.
        UnsafeGraph: it holds ops outside the allow-list (names them).
    """
    path = Path(path)
    data = read_graph_bytes(path)  # parse and hash the same bytes: the file may be replaced meanwhile
    graph_def = parse_graph_def(data, source=repr(str(path)))
    check_graph_def(graph_def, source=f"graph {str(path)!r}", allow_unsafe_ops=allow_unsafe_ops)
    return graph_def, hashlib.sha256(data).hexdigest()


__all__ = [
    "BottleneckGraph", "SingleImageGraph", "RewriteReport", "ThreadConfig", "contract_from_graph",
    "file_sha256", "inference_graph_def", "load_graph", "missing_tensors", "parse_graph_def", "read_graph_bytes",
    "require_tensors", "session_config",
]
