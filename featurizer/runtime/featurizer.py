"""The featurizer: encoded images in, bottleneck vectors out, in batches.

:class:`Featurizer` owns one loaded graph (see :mod:`imgclf.featurizer.graph.load`), its
precision and the preprocessing that must match the graph. Its identity
(:mod:`imgclf.featurizer.store.identity`), made once when it loads, has the
fingerprint — graph sha256, bottleneck tensor, precision, preprocessing, decode
mode — that keys the feature cache, so vectors of different graphs, precisions
or decodings never mix.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.core.errors import ImgclfError, UsageError
from imgclf.core.precision import resolve_precision
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT, GraphContract
from imgclf.featurizer.graph.load import BottleneckGraph, ThreadConfig, contract_from_graph, load_graph, usable_cpus
from imgclf.featurizer.images.decode import (
    DEFAULT_MAX_PIXELS,
    check_decode,
    decode_input,
    decode_rgb,
    normalize,
    resize_bilinear,
)
from imgclf.featurizer.runtime.backend import DEFAULT_BACKEND, check_backend_precision, resolve_backend
from imgclf.featurizer.runtime.calibration import DEFAULT_CALIBRATION_IMAGES, Calibration, choose_calibration
from imgclf.featurizer.runtime.openvino import INT8_FIDELITY_FLOOR
from imgclf.featurizer.store.identity import FeaturizerIdentity, fingerprint_of

if TYPE_CHECKING:
    from imgclf.featurizer.images.folders import ImageDirectory

log = logging.getLogger(__name__)

# Bump when preprocessing changes in a way that changes features: old cache entries then miss.
PREPROCESSING = "graph-jpeg-decoder/pillow-rgb/tf-legacy-bilinear/v2"


@dataclass(frozen=True)
class FeaturizerConfig:
    """How to load and run a featurizer graph."""

    graph: Path  # frozen GraphDef (.pb) with the 2015 Inception-v3 interface
    contract: GraphContract = DEFAULT_CONTRACT  # tensor names; size/mean/std are read from the graph
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (see imgclf.core.precision)
    threads: ThreadConfig = field(default_factory=ThreadConfig)  # TensorFlow intra/inter-op threads
    max_pixels: int = DEFAULT_MAX_PIXELS  # images with more pixels are refused before decoding
    # Load a graph holding ops outside the inference allow-list (imgclf.core.op_policy): file, process
    # and network ops. A graph is a program; only for graphs from a trusted source. Not in the fingerprint:
    # it changes what may load, not what the graph computes.
    allow_unsafe_ops: bool = False
    backend: str = DEFAULT_BACKEND  # tensorflow | openvino | auto (imgclf.featurizer.runtime.backend)
    # int8 (OpenVINO): calibrate on this many images of the folder being featurized (calibration_for).
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    # int8 (OpenVINO): the worst cosine to fp32 the int8 graph keeps on the calibration images it is checked on;
    # layers stay float until it holds (0: measured only). Part of the IR's cache key.
    int8_floor: float = INT8_FIDELITY_FLOOR
    openvino_cache: Path | None = None  # converted/compiled OpenVINO models (None = $IMGCLF_HOME/openvino)

    @property
    def needs_calibration(self) -> bool:
        """Return whether this featurizer calibrates on images: int8 (TensorFlow refuses int8 when it loads)."""
        return self.precision == "int8" and self.backend != "tensorflow"


class Featurizer:
    """A loaded graph that turns images into bottleneck vectors."""

    def __init__(self, config: FeaturizerConfig, calibration: Calibration | None = None):
        """Load ``config.graph``; int8 quantizes on ``calibration`` (see :func:`calibration_for`), else it is unused.

        Raises:
            UsageError: int8 without ``calibration``.
            GraphError: the graph cannot be read or lacks the contract's tensors.
            UnsafeGraph: it holds ops outside the inference allow-list and
                ``config.allow_unsafe_ops`` is not set.
        """
        self.config = config
        graph_def, self.graph_sha256 = load_graph(config.graph, allow_unsafe_ops=config.allow_unsafe_ops)
        self.contract = contract_from_graph(graph_def, config.contract)
        self.backend = resolve_backend(config.backend, precision=config.precision)
        check_backend_precision(self.backend, config.precision)
        self.calibration: Calibration | None = None  # int8's; part of the fingerprint
        if self.backend == "openvino":
            self.graph = self._openvino_graph(graph_def, calibration)
            self.precision = self.graph.precision
        else:
            self.precision = resolve_precision(config.precision)
            self.graph = BottleneckGraph(graph_def, self.contract, self.precision, config.threads,
                                         allow_unsafe_ops=config.allow_unsafe_ops)
        self.dim = self.graph.dim
        self.identity = self._identity()  # computed once: the cache, datasets, reports and model card take it
        report = self.graph.rewrite_report
        if report is not None and (report.folded_batch_norms or report.rewritten_batch_norms
                                   or report.rewritten_concats):
            log.info("rewrote legacy ops: %d batch norms folded, %d rewritten, %d Concat -> ConcatV2",
                     report.folded_batch_norms, report.rewritten_batch_norms, report.rewritten_concats)

    def _openvino_graph(self, graph_def, calibration: Calibration | None):
        """Convert the graph for OpenVINO (cached on disk), quantizing on ``calibration`` for int8."""
        from imgclf.featurizer.runtime.openvino import OpenVINOGraph, resolve_openvino_precision

        config = self.config
        if not config.allow_unsafe_ops:  # as BottleneckGraph does; with the opt-in, load_graph has warned
            from imgclf.core.op_policy import check_graph_def

            check_graph_def(graph_def)
        precision = resolve_openvino_precision(config.precision)
        if precision == "int8":
            if calibration is None:
                raise UsageError("int8 precision calibrates on the images being featurized; this featurizer "
                                 "was given none (Featurizer(config, calibration_for(config, images)))")
            self.calibration = calibration
        return OpenVINOGraph.from_graph_def(graph_def, self.graph_sha256, self.contract, precision,
                                            threads=config.threads.intra_op, cache_dir=config.openvino_cache,
                                            calibration=self.calibration, preprocess=self.preprocess,
                                            int8_floor=config.int8_floor)

    def _key_parts(self) -> dict:
        return {**self._backend_key_parts(),
                "graph_sha256": self.graph_sha256, "image_input": self.contract.image_input,
                "bottleneck": self.contract.bottleneck, "input_size": self.contract.input_size,
                "input_mean": self.contract.input_mean, "input_std": self.contract.input_std,
                "jpeg_dct_method": self.contract.jpeg_dct_method,
                "precision": self.precision, "preprocessing": PREPROCESSING, **decode_key(self.contract.decode)}

    def _backend_key_parts(self) -> dict:
        """Return the backend's part of the fingerprint: nothing for TensorFlow (older caches stay valid)."""
        if self.backend == "tensorflow":
            return {}
        parts = {"backend": self.backend}
        if self.calibration is not None:
            parts["calibration_sha256"] = self.calibration.sha256
        recipe = getattr(self.graph, "info", {}).get("int8_recipe")
        if recipe not in (None, "vnni"):  # features of another int8 recipe differ; round 2's vnni keys stay valid
            parts["int8_recipe"] = recipe
        kept = getattr(self.graph, "info", {}).get("int8_kept_float")
        if kept:  # layers the fidelity floor kept float: other vectors than the same recipe fully int8
            parts["int8_kept_float"] = list(kept)
        return parts

    def _identity(self) -> FeaturizerIdentity:
        """Return the fingerprint of the key parts and the description (what is shown too), made once."""
        parts = self._key_parts()
        described = {**parts, "fingerprint": fingerprint_of(parts), "dim": self.dim,
                     "graph": str(self.config.graph), "contract": self.contract.describe(), "backend": self.backend}
        if self.backend == "openvino":
            described["openvino"] = self.graph.describe()
        return FeaturizerIdentity.from_description(described)

    @property
    def fingerprint(self) -> str:
        """Return the sha256 that keys this featurizer's vectors (:attr:`identity`'s)."""
        return self.identity.fingerprint

    def describe(self) -> dict:
        """Return what this featurizer is, JSON-ready (a copy of :attr:`identity`'s description)."""
        return self.identity.describe()

    @property
    def min_batch(self) -> int:
        """Return the fewest images that keep the graph as busy as a whole batch (0: only whole batches do).

        OpenVINO runs a slice of images (one, today) per infer request (two
        per stream: one running, one queued) and fp32 one image per session
        run, side by side: as many images as those keep every core busy.
        bf16 and fp16 gain from big batches: 0.
        """
        if self.backend == "openvino":
            return int(self.graph.requests) * max(1, int(self.graph.slice_images))
        return int(self.graph.micro_batch * self.graph.concurrent_runs)

    def decode(self, data: bytes) -> np.ndarray:
        """Decode and validate one encoded image to uint8 RGB [H, W, 3]."""
        c = self.contract
        return decode_rgb(data, self.config.max_pixels, c.jpeg_dct_method, c.decode, c.input_size)

    def to_input(self, rgb: np.ndarray) -> np.ndarray:
        """Resize and normalise a decoded RGB image to the network input [S, S, 3]."""
        c = self.contract
        return normalize(resize_bilinear(rgb, c.input_size), c.input_mean, c.input_std)

    def preprocess(self, data: bytes) -> np.ndarray:
        """Decode and normalise one encoded image to the network input [S, S, 3] (as to_input(decode(data)))."""
        c = self.contract
        return decode_input(data, c.input_size, c.input_mean, c.input_std, self.config.max_pixels,
                            c.jpeg_dct_method, c.decode)

    def run(self, images: np.ndarray) -> np.ndarray:
        """Return bottlenecks [N, D] for preprocessed images [N, S, S, 3]."""
        return self.graph.run(images)

    def features(self, images: list[bytes]) -> list[np.ndarray | ImgclfError]:
        """Return one vector per encoded image, or the error that image raised."""
        results: list[np.ndarray | ImgclfError] = []
        good: list[tuple[int, np.ndarray]] = []
        for i, data in enumerate(images):
            try:
                good.append((i, self.preprocess(data)))
                results.append(None)  # type: ignore[arg-type]
            except ImgclfError as exc:
                results.append(exc)
        if good:
            vectors = self.run(np.stack([arr for _, arr in good]))
            for (i, _), vector in zip(good, vectors):
                results[i] = vector
        return results

    def close(self) -> None:
        """Release the TensorFlow session or the OpenVINO compiled model."""
        self.graph.close()

    def __enter__(self) -> Featurizer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def calibration_for(config: FeaturizerConfig, images: ImageDirectory | str | os.PathLike) -> Calibration | None:
    """Return the int8 calibration ``config`` needs, chosen from the folder being featurized, or None.

    Args:
        images: the caller's scan or listing of the folder (a job has one), or the folder itself,
            scanned here only when ``config`` needs a calibration. The featurizer never reads a folder.
    """
    from imgclf.featurizer.images.folders import ImageDirectory, scan_image_dir

    if not config.needs_calibration:
        return None
    directory = images if isinstance(images, ImageDirectory) else scan_image_dir(images)
    return choose_calibration(directory, config.calibration_images, PREPROCESSING)


def decode_key(decode: str) -> dict:
    """Return the fingerprint part of a decode mode: none for "exact" (keys made before it existed stay valid)."""
    return {} if check_decode(decode) == "exact" else {"decode": decode}


def default_decode_threads() -> int:
    """Return the number of decode threads: one per usable CPU."""
    return usable_cpus()
