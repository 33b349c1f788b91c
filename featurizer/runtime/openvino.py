"""Run the featurizer graph on OpenVINO: fp32, bf16, or int8 quantized by NNCF on the user's own images.

The graph OpenVINO reads is the one TensorFlow runs
(:func:`imgclf.featurizer.graph.load.inference_graph_def`): the 2015 ops rewritten,
scale/shift folded, cut at the normalised image, ``[None, S, S, 3]`` in and the
bottleneck out. ``openvino.convert_model`` reads that frozen GraphDef; int8
adds ``nncf.quantize`` (post-training, calibrated on
:class:`~imgclf.featurizer.runtime.calibration.Calibration` images).

Caching: the converted (and for int8, quantized) model is saved as OpenVINO IR
under ``<cache>/<key>/`` where the key is the sha256 of the graph file's
sha256, the contract's tensor names, the OpenVINO version, the IR kind
(``float``; ``int8`` + the calibration identity, recipe and fidelity floor) and this module's
:data:`CONVERSION` version; it is written into a temporary folder and renamed,
so a killed run leaves nothing half-written that a later one would load.
Compiled blobs go to ``<key>/compiled`` (OpenVINO's own model cache, which
keys them on the compile options, precision included). fp32 and bf16 share
one IR: they differ only in the compile-time ``INFERENCE_PRECISION_HINT``.

Running: the model is compiled with the throughput hint (OpenVINO's streams:
one per core here) for a static shape of :data:`SLICE_IMAGES` images, and a
batch is cut into such slices that the model's infer requests (two per stream:
OpenVINO's optimal number, one per stream, and one queued behind each,
:data:`REQUESTS_PER_STREAM`) take from a shared pool as they come free, so
every stream works whatever the batch size and nothing is padded. This is
OpenVINO's recommended way to throughput on a CPU (batch 1, requests in
flight) and measured on the 2-core AVX2 machine with the full int8 graph: 30.5
img/s in slices of 1 against 29.3 in two slices of 16, 29.2 in slices of 4
(static shapes; the dynamic-batch model ran several times slower on the AMX
machine). Several threads may call :meth:`OpenVINOGraph.run` at once (the
service without batching): they share the requests, so sixteen single-image
calls keep both streams busy instead of queueing one by one. It is
``AsyncInferQueue``'s pattern without its Python completion callbacks: with
them, tearing a queue down while a callback waited for the GIL hung the
process now and then; plain requests need no Python code on OpenVINO's threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgclf.core.errors import GraphError, UsageError
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT, GraphContract
from imgclf.featurizer.runtime.backend import OPENVINO_PRECISIONS, require_openvino

log = logging.getLogger(__name__)

CONVERSION = "imgclf-openvino/v1"  # bump when the conversion or quantization recipe changes
IR_FILE = "model.xml"  # and model.bin beside it
META_FILE = "meta.json"
# OpenVINO's names for imgclf's precisions (INFERENCE_PRECISION_HINT). int8 runs the quantized convolutions
# in int8 and keeps the rest (pooling, concatenation) in f32.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
INT8_FIDELITY_IMAGES = 32  # calibration images a new int8 IR is checked on against its float model (its floor)
# The default worst per-image cosine to fp32 an int8 IR keeps on the images it is checked on (issue 25's floor);
# layers are kept in float until it holds (see _quantize). featurize --int8-floor sets another; 0: only measured.
INT8_FIDELITY_FLOOR = 0.99
# The floor's retry stops when it has kept this share of the int8 ops float without reaching the floor: int8
# gains little beyond it, and each further step can cost another ranking (minutes on the full-size graph).
MOSTLY_FLOAT = 0.25
# The largest shortfall the retry tries to win back (floor minus the fully int8 worst): the floor is for int8
# kernels that lose a little more than the quantization grid (issue 25's AMX machine: 0.0001, and 0.0018 with
# 32 calibration images, both within reach). On the full-size graph, shortfalls of 0.0001-0.001 took 1-8 ops
# kept float; one of 0.027 (drawn pictures, on which int8 itself loses) was still 0.024 short after 27
# reverts and 10 minutes. Beyond this the build warns at once.
INT8_FLOOR_REACH = 0.002
SLICE_IMAGES = 1  # images per infer request: the static shape every request runs (see the module notes)
# Infer requests per stream (static slices): one running and one queued behind it, so a stream starts its next
# image the moment it finishes one instead of idling until the calling thread, which may be waiting for the
# GIL behind decode threads, collects the result and starts another. Featurizing 320 photos end to end on the
# 2-core AVX-512 machine, two experiments of three interleaved rounds (two runs each): one request per stream
# 46.1 / 47.0 / 47.2 and 50.1 / 46.2 / 50.4 img/s, two per stream 49.9 / 49.0 / 48.4 and 50.1 / 53.9 / 47.8
# (+4 %; the machine's own noise is as large, so only the averages count).
REQUESTS_PER_STREAM = 2


def default_cache_dir() -> Path:
    """Return where converted models are cached by default: ``$IMGCLF_HOME/openvino``."""
    from imgclf.core.paths import imgclf_home

    return imgclf_home() / "openvino"


def native_bf16(core=None) -> bool:
    """Return whether OpenVINO's CPU plugin runs bf16 natively here (AMX or AVX512_BF16)."""
    if core is None:
        core = require_openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_openvino_precision(requested: str) -> str:
    """Return fp32, bf16 or int8 for a requested precision on OpenVINO's CPU plugin.

    ``auto`` is bf16 where the CPU has native bf16, else fp32; an explicit bf16
    without it is an error (OpenVINO would run fp32 silently).
    """
    if requested == "auto":
        choice = "bf16" if native_bf16() else "fp32"
        log.info("OpenVINO precision auto -> %s", choice)
        return choice
    if requested not in OPENVINO_PRECISIONS:
        raise UsageError(f"the OpenVINO backend runs in {', '.join(OPENVINO_PRECISIONS)} or auto; "
                         f"received {requested!r}")
    if requested == "bf16" and not native_bf16():
        raise UsageError("bf16 precision requested but this CPU has neither AMX_BF16 nor AVX512_BF16 "
                         "(OpenVINO would run fp32); use --precision fp32, int8 or auto")
    return requested


# int8 recipes (NNCF settings), by what the CPU multiplies int8 with. Without VNNI (or AMX) the int8 dot
# product is VPMADDUBSW, whose int16 sums saturate: NNCF's overflow fix (7-bit weights in every layer) avoids
# that, and asymmetric activations (the mixed preset) win back some of the lost precision. Measured on the
# full-size graph, 64 calibration images, worst image's cosine to TensorFlow fp32: on a 2-core AVX2 machine
# 0.9886 with NNCF's defaults, 0.9899 with the overflow fix, 0.9902 with both (and 0.9832 with full bias
# correction); NNCF's defaults gave 0.9903 on the AMX machine.
#
# The "-fullrange" recipes quantize each activation over the whole range the calibration images reach (the
# global min and max) instead of NNCF's default, the mean over images of each image's min and max, which
# clips every picture of more contrast than the average one in every layer. Measured in issue 25 on a 2-core
# AMD EPYC Zen 3 (AVX2, no VNNI/AMX; the no-vnni recipes), full-size graph, cosine to TensorFlow fp32 per
# image (python -m bench.int8_fidelity, docs/benchmarks.md): 64 photo-like JPEGs 0.99885 at worst with
# no-vnni, 0.99883 with no-vnni-fullrange (both above the 0.995 margin asked of CPUs without AMX); 64 drawn
# pictures: every one but one gains (checkerboards 0.988 -> 0.994), but the worst, a near-uniform picture of
# two close colours, falls from 0.926 to 0.700 (its activations are tiny against the wider ranges). By the
# worst image, the measure asked for, full range loses: the default stays vnni / no-vnni, and the
# full-range recipes are there to measure against. Keeping one convolution out of int8 (all 94 tried,
# FakeQuantize nodes bypassed, 16 worst of 64 images) raised the worst image by 0.004 at most: the loss is
# spread over every layer, so no layer is kept float either.
INT8_RECIPES = {
    "vnni": {},
    "no-vnni": {"overflow_fix": "enable", "preset": "mixed"},
    "vnni-fullrange": {"activation_ranges": "minmax"},
    "no-vnni-fullrange": {"overflow_fix": "enable", "preset": "mixed", "activation_ranges": "minmax"},
}


def int8_recipe(*, full_range: bool = False) -> str:
    """Return the int8 recipe for this CPU: ``vnni`` where it has AVX512_VNNI, AVX_VNNI or AMX_INT8, else
    ``no-vnni``; ``full_range``: its ``-fullrange`` variant (measured against it by ``bench.int8_fidelity``)."""
    from imgclf.core.precision import int8_dot_flags

    kind = "vnni" if int8_dot_flags() else "no-vnni"
    return f"{kind}-fullrange" if full_range else kind


def check_int8_floor(floor: float) -> float:
    """Return ``floor`` as a float; raise UsageError unless 0 <= floor < 1 (a cosine an int8 IR can reach)."""
    try:
        value = float(floor)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:  # NaN too
        raise UsageError(f"the int8 floor is a cosine from 0 (no floor) up to, not including, 1; received {floor!r}")
    return value


def ir_key(graph_sha256: str, contract: GraphContract, precision: str, calibration_sha256: str | None,
           openvino_version: str, recipe: str | None = None,
           floor: float = INT8_FIDELITY_FLOOR) -> tuple[str, dict]:
    """Return (key, key parts) of a converted model in the cache (see the module docstring).

    An int8 IR's key holds its fidelity floor: the floor decides which layers stay float. IRs quantized
    before the floor existed were never held to it, so their keys no longer match and they are rebuilt once.
    """
    parts = {"graph_sha256": graph_sha256, "image_input": contract.image_input, "bottleneck": contract.bottleneck,
             "openvino": openvino_version, "conversion": CONVERSION,
             "ir": "int8" if precision == "int8" else "float",
             "calibration_sha256": calibration_sha256 if precision == "int8" else None}
    if precision == "int8" and recipe not in (None, "vnni"):  # keys made before recipes existed stay valid
        parts["int8_recipe"] = recipe
    if precision == "int8":
        parts["int8_floor"] = float(floor)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts


class OpenVINOGraph:
    """The featurizer graph compiled by OpenVINO: normalised images [N, S, S, 3] in, bottlenecks [N, D] out.

    The same interface as :class:`imgclf.featurizer.graph.load.BottleneckGraph`
    (``run``, ``dim``, ``close``, ``rewrite_report``).
    """

    def __init__(self, compiled, contract: GraphContract, precision: str, *, ir_dir: Path | None = None,
                 rewrite_report=None, info: dict | None = None, source_graph_def=None, slice_images: int = 0):
        """``compiled`` runs ``slice_images`` images per request (its static batch), or any number (0: dynamic)."""
        self.compiled = compiled
        self._source = source_graph_def  # the frozen graph as read: the TensorFlow graph is built from it on demand
        self._tf_graph = None
        self.contract = contract
        self.precision = precision
        self.ir_dir = ir_dir
        self.rewrite_report = rewrite_report
        self.info = dict(info or {})
        shape = compiled.outputs[0].get_partial_shape()
        last = shape[shape.rank.get_length() - 1]
        if not last.is_static:
            raise GraphError(f"bottleneck {contract.bottleneck} has an unknown last dimension in OpenVINO")
        self.dim = int(last.get_length())
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.slice_images = int(slice_images)  # 0: the dynamic model, one slice per request
        # OpenVINO's optimal number of requests is one per stream; static slices queue one more behind each
        self.streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = self.streams * (REQUESTS_PER_STREAM if self.slice_images else 1)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # infer requests no call is using
        for _ in range(self.requests):
            self._idle.put(compiled.create_infer_request())

    @classmethod
    def from_graph_def(cls, graph_def, graph_sha256: str, contract: GraphContract = DEFAULT_CONTRACT,
                       precision: str = "fp32", *, threads: int = 0, cache_dir: Path | None = None,
                       calibration=None, preprocess: Callable[[bytes], np.ndarray] | None = None,
                       recipe: str | None = None, int8_floor: float = INT8_FIDELITY_FLOOR) -> OpenVINOGraph:
        """Convert (or take from the cache) and compile a frozen featurizer GraphDef as it was loaded.

        Args:
            graph_def: the frozen graph as read from the file (old ops and all).
            graph_sha256: the file's sha256 (the cache key).
            precision: fp32, bf16 or int8 (resolved; see :func:`resolve_openvino_precision`).
            threads: inference threads (0 = OpenVINO picks: all usable cores).
            calibration: a :class:`~imgclf.featurizer.runtime.calibration.Calibration`; required for int8.
            preprocess: encoded image → network input [S, S, 3], for the calibration images; required for
                int8 (used only when the quantized model is not in the cache).
            recipe: an int8 recipe of :data:`INT8_RECIPES` (default: :func:`int8_recipe`, this CPU's).
            int8_floor: the worst cosine to fp32 the int8 IR keeps on the images it is checked on (this CPU's
                kernels); layers stay float until it holds (0: measured only). See :func:`_quantize`.
        """
        from imgclf.featurizer.graph.load import inference_graph_def

        ov = require_openvino()
        if precision == "int8" and (calibration is None or preprocess is None):
            raise UsageError("int8 precision needs calibration images (the featurized folder; "
                             "--calibration-images N)")
        if recipe is not None and recipe not in INT8_RECIPES:
            raise UsageError(f"int8 recipe must be one of {', '.join(INT8_RECIPES)}; received {recipe!r}")
        int8_floor = check_int8_floor(int8_floor)
        version = ov.get_version()
        recipe = (recipe or int8_recipe()) if precision == "int8" else None
        key, parts = ir_key(graph_sha256, contract, precision, calibration.sha256 if calibration else None, version,
                            recipe, int8_floor)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        ir_dir = root / key
        report = None
        if not _complete(ir_dir):
            graph, report = inference_graph_def(graph_def, contract)
            _build_ir(ov, graph, precision, calibration, preprocess, ir_dir, parts)
        else:
            log.info("OpenVINO model from the cache: %s", ir_dir)
        info = {"openvino_version": version, "ir_key": key, "int8_recipe": recipe,
                "int8_settings": dict(INT8_RECIPES[recipe]) if recipe else None,
                "calibration": calibration.describe() if calibration is not None and precision == "int8" else None}
        if precision == "int8":  # measured when the IR was built
            fidelity = _meta(ir_dir).get("calibration", {}).get("fidelity") or {}
            info["int8_fidelity"] = fidelity or None
            info["int8_kept_float"] = list(fidelity.get("kept_float") or [])
        compiled = _compile(ov, ir_dir / IR_FILE, precision, threads, ir_dir / "compiled", batch=SLICE_IMAGES)
        return cls(compiled, contract, precision, ir_dir=ir_dir, rewrite_report=report, info=info,
                   source_graph_def=graph_def, slice_images=SLICE_IMAGES)

    @classmethod
    def from_ir(cls, xml: Path, contract: GraphContract, precision: str, *, threads: int = 0,
                compiled_cache: Path | None = None) -> OpenVINOGraph:
        """Compile a saved IR (an export's featurizer) at ``precision``; raise GraphError when it cannot be read."""
        ov = require_openvino()
        if not Path(xml).is_file() or not Path(xml).with_suffix(".bin").is_file():
            raise GraphError(f"OpenVINO featurizer {str(xml)!r} (and its .bin) is missing")
        compiled = _compile(ov, Path(xml), precision, threads, compiled_cache, batch=SLICE_IMAGES)
        return cls(compiled, contract, precision, ir_dir=Path(xml).parent, info={"openvino_version": ov.get_version()},
                   slice_images=SLICE_IMAGES)

    @property
    def graph(self):
        """Return the same network as a TensorFlow graph (the rewritten one BottleneckGraph runs).

        An export builds its SavedModel and frozen graphs from it (float32,
        TensorFlow Serving can serve them); the OpenVINO IR goes beside them.
        """
        if self._tf_graph is None:
            if self._source is None:
                raise GraphError("an OpenVINO featurizer compiled from an IR has no TensorFlow graph")
            import tensorflow as tf

            from imgclf.featurizer.graph.load import inference_graph_def

            graph = tf.Graph()
            with graph.as_default():
                tf.graph_util.import_graph_def(inference_graph_def(self._source, self.contract)[0], name="")
            self._tf_graph = graph
        return self._tf_graph

    def run(self, images: np.ndarray) -> np.ndarray:
        """Return float32 bottlenecks [N, D] for normalised float32 images [N, S, S, 3]; safe from any thread."""
        self.contract.check_images(images)
        if self.compiled is None:
            raise GraphError("this OpenVINO featurizer is closed")
        images = np.ascontiguousarray(images, dtype=np.float32)
        n = images.shape[0]
        out = np.empty((n, self.dim), np.float32)
        if self.slice_images:
            step = self.slice_images
            bounds = [(start, min(start + step, n)) for start in range(0, n, step)]
        else:  # the dynamic model: one slice per request
            cuts = np.linspace(0, n, min(n, self.requests) + 1).astype(int)
            bounds = list(zip(cuts[:-1], cuts[1:]))
        mine: list = []  # the requests this call holds, for as long as it has slices to run
        running: list = []  # (request, start, stop) started and not yet collected, oldest first

        def collect() -> object:
            request, start, stop = running.pop(0)
            request.wait()
            out[start:stop] = request.get_output_tensor(0).data.reshape(-1, self.dim)[:stop - start]
            return request

        try:
            for start, stop in bounds:
                request = None
                if len(mine) < self.requests:  # a free request of the pool, if there is one now
                    try:
                        request = self._idle.get_nowait()
                    except queue.Empty:
                        if not running:  # other calls hold them all: wait for one of theirs
                            request = self._idle.get()
                    if request is not None:
                        mine.append(request)
                if request is None:  # reuse this call's oldest one when it finishes
                    request = collect()
                batch = images[start:stop]
                if self.slice_images and stop - start < self.slice_images:
                    batch = np.concatenate([batch, np.zeros((self.slice_images - (stop - start), *batch.shape[1:]),
                                                            np.float32)])
                request.start_async({0: batch})  # runs in a stream of its own; the call releases the GIL
                running.append((request, start, stop))
            while running:  # nothing left to start: hand each request back as it finishes, for other calls
                request = collect()
                mine.remove(request)
                self._idle.put(request)
        finally:
            for request, _, _ in running:
                request.wait()  # never leave a request running on a batch the caller may free
            for request in mine:
                self._idle.put(request)
        return out

    def save_ir(self, directory: Path, stem: str = "featurizer") -> list[Path]:
        """Copy the IR this graph was compiled from into ``directory`` as ``stem``.xml/.bin; return the files."""
        if self.ir_dir is None:  # pragma: no cover - every constructor sets it
            raise GraphError("this OpenVINO featurizer has no IR on disk")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for suffix in (".xml", ".bin"):
            source = (self.ir_dir / IR_FILE).with_suffix(suffix)
            target = directory / f"{stem}{suffix}"
            shutil.copyfile(source, target)
            written.append(target)
        return written

    def describe(self) -> dict:
        """Return how this graph runs, JSON-ready."""
        return {**self.info, "inference_precision": self.inference_precision, "streams": self.streams,
                "infer_requests": self.requests, "slice_images": self.slice_images}

    def close(self) -> None:
        """Release the compiled models (a call still running keeps its requests until it returns)."""
        self.compiled = None
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break


def _meta(ir_dir: Path) -> dict:
    """Return the meta of the IR in ``ir_dir`` ({} if it cannot be read)."""
    try:
        return json.loads((ir_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _complete(ir_dir: Path) -> bool:
    return (ir_dir / META_FILE).is_file() and (ir_dir / IR_FILE).is_file() and \
        (ir_dir / IR_FILE).with_suffix(".bin").is_file()


def _compile(ov, xml: Path, precision: str, threads: int, cache: Path | None, batch: int = 0):
    config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    started = time.perf_counter()
    core = ov.Core()
    try:
        if batch:
            model = core.read_model(str(xml))
            model.reshape({model.inputs[0].get_any_name(): [batch, *list(model.inputs[0].get_partial_shape())[1:]]})
            compiled = core.compile_model(model, "CPU", config)
        else:
            compiled = core.compile_model(str(xml), "CPU", config)
    except RuntimeError as exc:
        raise GraphError(f"OpenVINO cannot compile {str(xml)!r}: {str(exc).strip().splitlines()[0]}") from exc
    log.info("OpenVINO compiled %s in %.1f s (%s, batch %s)", xml.name, time.perf_counter() - started, precision,
             batch or "dynamic")
    return compiled


def _build_ir(ov, graph_def, precision: str, calibration, preprocess, ir_dir: Path, parts: dict) -> None:
    """Convert (and for int8 quantize) ``graph_def``; write IR + meta into ``ir_dir`` atomically."""
    started = time.perf_counter()
    try:
        model = ov.convert_model(graph_def)
    except Exception as exc:  # OpenVINO raises plain Exceptions for unsupported graphs
        raise GraphError(f"OpenVINO cannot convert the featurizer graph: {str(exc).strip().splitlines()[-1]}") \
            from exc
    if len(model.outputs) != 1:
        raise GraphError(f"the featurizer graph converted with {len(model.outputs)} outputs; expected the "
                         "bottleneck only")
    log.info("OpenVINO converted the graph in %.1f s", time.perf_counter() - started)
    meta = {"key": parts, "created": time.time()}
    if precision == "int8":
        model, meta["calibration"] = _quantize(model, calibration, preprocess, parts.get("int8_recipe", "vnni"),
                                               parts.get("int8_floor", INT8_FIDELITY_FLOOR))
    ir_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{ir_dir.name[:16]}-", dir=ir_dir.parent))
    try:
        ov.save_model(model, str(work / IR_FILE), compress_to_fp16=False)
        (work / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for path in work.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(work, ir_dir)
        except OSError:  # another process cached the same key meanwhile: keep theirs
            if not _complete(ir_dir):
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _compiled_f32(model):
    """Return ``model`` compiled as the featurizer runs it on this CPU: int8 where quantized, the rest in f32."""
    return require_openvino().Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def _references(float_model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Return ``float_model``'s vector of each of ``inputs``, in fp32 on this CPU, one image at a time."""
    compiled = _compiled_f32(float_model)
    return [np.asarray(compiled(array[None])[0], dtype=np.float64).ravel() for array in inputs]


def _cosines(compiled, inputs: list[np.ndarray], references: list[np.ndarray]) -> list[float]:
    """Return the cosine of ``compiled``'s vector of each of ``inputs`` to its reference vector."""
    cosines = []
    for array, expected in zip(inputs, references):
        found = np.asarray(compiled(array[None])[0], dtype=np.float64).ravel()
        norms = np.linalg.norm(expected) * np.linalg.norm(found)
        cosines.append(float(expected @ found / norms) if norms else 1.0)
    return cosines


def _summary(cosines: list[float]) -> dict:
    from imgclf.core.precision import cpu_model, int8_dot_flags

    return {"images": len(cosines), "worst_cosine": round(min(cosines), 6),
            "mean_cosine": round(float(np.mean(cosines)), 6), "reference": "OpenVINO fp32, this CPU",
            "cpu": cpu_model(), "cpu_int8": int8_dot_flags()}


def int8_fidelity(float_model, quantized, inputs: list[np.ndarray], references: list[np.ndarray] | None = None) \
        -> dict:
    """Return how faithful ``quantized`` is to ``float_model`` on this CPU: the cosine of each of ``inputs``' vectors.

    Both run as the featurizer runs them (this CPU's kernels; what is not int8 in f32), one image at a time;
    ``references``: ``float_model``'s vectors when they are already known. Measured when the IR is built,
    on the first :data:`INT8_FIDELITY_IMAGES` calibration images (the user's own pictures, on the CPU that
    runs them); its worst and mean go into the IR's meta and the featurizer's description (the card).
    """
    if references is None:
        references = _references(float_model, inputs)
    return _summary(_cosines(_compiled_f32(quantized), inputs, references))


def _op_ids(model) -> dict[str, str]:
    """Return each op of ``model`` by name with a name that holds across conversions: its type and its place.

    OpenVINO numbers the ops it converts with a counter of the process ("Convolution_15" one time,
    "Convolution_236626" the next); "Convolution 3", the third convolution in topological order, is the
    same op whichever process converted the graph.
    """
    counts: dict[str, int] = {}
    ids = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        counts[kind] = counts.get(kind, 0) + 1
        ids[op.get_friendly_name()] = f"{kind} {counts[kind]}"
    return ids


# What NNCF puts before an op it quantizes: FakeQuantize on activations; int8 weights as a Constant followed
# by a dequantization (Convert, Subtract, Multiply; a Reshape or Transpose may sit between).
_DEQUANTIZE = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}
_PLUMBING = _DEQUANTIZE | {"FakeQuantize", "Constant"}


def _takes_int8(model) -> set[str]:
    """Return the names of the ops of ``model`` that take an input NNCF quantized: activations through a
    FakeQuantize op, or weights stored in int8 (the quantization's own ops left out)."""

    def quantized(node, hops: int = 4) -> bool:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
        return hops > 0 and kind in _DEQUANTIZE and any(quantized(value.get_node(), hops - 1)
                                                        for value in node.input_values())

    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() not in _PLUMBING
            and any(quantized(value.get_node()) for value in op.input_values())}


def _keep_faithful(model, dataset, inputs: list[np.ndarray], references: list[np.ndarray], floor: float,
                   options: dict, quantized) -> tuple[object, list[str], int]:
    """Return ``model`` quantized with the fewest layers kept float that hold ``inputs`` at ``floor``, the ops
    that take float inputs where the fully quantized model took int8 ones (by :func:`_op_ids`), and how many
    ops took int8 inputs there.

    NNCF's accuracy control: it ranks the quantized layers by what reverting each to float wins back on the
    images that lose the most, and reverts them one by one until the worst cosine to ``references`` is at
    ``floor``, or until it has taken :data:`MOSTLY_FLOAT` of the int8 ops' steps (one group of quantizers
    each) without reaching it. It measures with this CPU's kernels, what the IR runs with.
    """
    import nncf

    def worst_cosine(compiled, items) -> tuple[float, list[float]]:
        items = list(items)
        cosines = _cosines(compiled, [array for array, _ in items], [expected for _, expected in items])
        return min(cosines), cosines

    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    ids, int8 = _op_ids(quantized), _takes_int8(quantized)
    # each step reverts one group of quantizers (one op or a few): stop at about MOSTLY_FLOAT of the int8 ops
    steps = max(1, math.ceil(MOSTLY_FLOAT * len(int8)))
    restored = nncf.quantize_with_accuracy_control(
        model, dataset, nncf.Dataset(list(zip(inputs, references))), worst_cosine,
        max_drop=max(0.0, 1.0 - floor - 1e-6), drop_type=nncf.DropType.ABSOLUTE, subset_size=options["subset_size"],
        preset=options.get("preset"), advanced_quantization_parameters=options.get("advanced_parameters"),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=steps))
    kept = int8 - _takes_int8(restored)  # ops that take float inputs now
    return restored, sorted((ids[name] for name in kept), key=lambda id_: (id_.split()[0], int(id_.split()[1]))), \
        len(int8)


def _quantize(model, calibration, preprocess, recipe: str = "vnni",
              floor: float = INT8_FIDELITY_FLOOR) -> tuple[object, dict]:
    """Return ``model`` quantized to int8 by NNCF on the calibration images (``recipe``: :data:`INT8_RECIPES`).

    The quantized model is then checked against ``model`` on this CPU (:func:`int8_fidelity`, the first
    :data:`INT8_FIDELITY_IMAGES` calibration images). Where its worst cosine is under ``floor`` (a CPU
    whose int8 kernels lose more than the recipe's grid), it is quantized again under NNCF's accuracy
    control, which keeps the layers that lose the most in float until the floor holds: their names go
    into the meta (``kept_float``) and the featurizer's fingerprint. A shortfall of more than
    :data:`INT8_FLOOR_REACH` is not tried (int8 itself loses there, not one CPU's kernels). If the floor
    is not reached, a warning says so and names bf16 and fp32.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    inputs = calibration.inputs(preprocess)
    started = time.perf_counter()
    log.info("int8: quantizing with NNCF on %d calibration image(s)", len(inputs))
    dataset = nncf.Dataset(inputs, lambda array: array[None])
    settings = INT8_RECIPES[recipe]
    options = {}
    if "overflow_fix" in settings:
        options["advanced_parameters"] = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix(settings["overflow_fix"]))
    if settings.get("activation_ranges") == "minmax":  # the global min and max over the calibration images
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        options.setdefault("advanced_parameters", AdvancedQuantizationParameters())
        options["advanced_parameters"].activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    if settings.get("preset") == "mixed":
        options["preset"] = nncf.QuantizationPreset.MIXED
    quantized = nncf.quantize(model, dataset, subset_size=len(inputs), **options)
    seconds = time.perf_counter() - started
    log.info("int8: quantized in %.1f s", seconds)
    checked = inputs[:INT8_FIDELITY_IMAGES]
    references = _references(model, checked)
    cosines = _cosines(_compiled_f32(quantized), checked, references)
    fidelity = {**_summary(cosines), "floor": floor, "floor_reach": INT8_FLOOR_REACH, "kept_float": []}
    why = ""  # what the under-the-floor warning adds
    if floor - min(cosines) > INT8_FLOOR_REACH:
        why = (f", more than {INT8_FLOOR_REACH:g} under it: int8 loses more on these images than keeping layers "
               "float wins back in reasonable time, so none were")
    elif min(cosines) < floor:
        started = time.perf_counter()
        log.info("int8: worst cosine to fp32 %.5f on %d calibration image(s), under the floor %s: keeping the "
                 "layers that lose the most in float", fidelity["worst_cosine"], len(checked), floor)
        first = {key: fidelity[key] for key in ("worst_cosine", "mean_cosine")}
        quantized, kept, int8_ops = _keep_faithful(model, dataset, checked, references, floor,
                                                   {**options, "subset_size": len(inputs)}, quantized)
        cosines = _cosines(_compiled_f32(quantized), checked, references)
        fidelity = {**_summary(cosines), "floor": floor, "kept_float": kept, "before_kept_float": first,
                    "kept_float_seconds": round(time.perf_counter() - started, 1)}
        log.info("int8: %d of %d op(s) take float inputs now, chosen in %.1f s: worst cosine %.5f", len(kept),
                 int8_ops, fidelity["kept_float_seconds"], fidelity["worst_cosine"])
        why = f", with {len(kept)} of its {int8_ops} int8 op(s) kept float"
        if len(kept) > int8_ops * MOSTLY_FLOAT:
            log.warning("int8: to reach the floor %s, %d of the %d ops that took int8 inputs take float ones: int8 "
                        "gains little here; --precision bf16 (CPUs with AMX or AVX512_BF16), fp32 or a lower "
                        "--int8-floor", floor, len(kept), int8_ops)
    if min(cosines) < floor:
        log.warning("int8: on %d calibration image(s) this CPU's int8 featurizer is as close as cosine %.5f to fp32 "
                    "(worst; mean %.5f), under the floor %s%s; --precision bf16 (CPUs with AMX or AVX512_BF16) or "
                    "fp32 keeps it faithful", fidelity["images"], fidelity["worst_cosine"], fidelity["mean_cosine"],
                    floor, why)
    return quantized, {**calibration.describe(), "decoded": len(inputs), "skipped": calibration.skipped,
                       "nncf": nncf.__version__, "recipe": recipe, "settings": dict(settings),
                       "seconds": round(seconds, 1), "fidelity": fidelity}
