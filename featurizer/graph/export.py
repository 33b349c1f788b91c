"""Export Keras Inception-v3 as a frozen GraphDef with the 2015 graph's interface.

The real ``tensorflow_inception_graph.pb`` cannot be downloaded here, so imgclf
builds a stand-in with exactly its tensor names and shapes: a JPEG-bytes
placeholder, the in-graph preprocessing chain (decode → cast → expand → resize
→ subtract 128 → multiply by 1/128), the Keras Inception-v3 convolutional body
frozen to constants, ``pool_3`` → ``pool_3/_reshape`` (constant ``[1, 2048]``
shape, like the real file) and a softmax.

Weights come from one of three places:

* ``"random"`` — seeded random weights. A random 94-convolution network lets its
  activations vanish, so every batch norm is *calibrated*: its moving mean and
  variance are set to the batch statistics of a few seeded smooth synthetic
  images, which keeps activations at unit scale and the bottleneck informative
  enough for tests and benchmarks.
* ``"imagenet"`` — Keras' own ImageNet weights (needs the network; fails fast
  with :class:`~imgclf.core.errors.DownloadError` when offline).
* a path to a Keras weights file (``.h5``, ``.weights.h5`` or ``.keras``), with
  or without the classification top.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from imgclf.core import tf_private
from imgclf.core.atomic import atomic_file
from imgclf.core.errors import DownloadError, GraphError
from imgclf.featurizer.graph.contract import (
    BOTTLENECK,
    BOTTLENECK_DIM,
    BOTTLENECK_SINGLE,
    DECODED_IMAGE,
    INPUT_MEAN,
    INPUT_SIZE,
    INPUT_STD,
    JPEG_INPUT,
    MUL_NODE,
    RESIZE_NODE,
    SOFTMAX,
    SUB_NODE,
    node_name,
)
from imgclf.featurizer.graph.load import keep_ancestors

if TYPE_CHECKING:  # keras is imported where used: it is heavy and Keras' global state is reset here
    import keras

log = logging.getLogger(__name__)

RANDOM_NUM_CLASSES = 1008  # the 2015 graph's softmax width
BODY_OUTPUT_LAYER = "mixed10"  # last block of Keras' InceptionV3: [N, 8, 8, 2048]
TOP_LAYER = "predictions"  # Keras' 2048 → 1000 classification layer
BODY_SCOPE = "inception_v3"  # name scope of the imported convolutional body
CAST_NODE = "Cast"  # not in the contract: nothing reads these two tensors by name
EXPAND_NODE = "ExpandDims"
INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation; an offline machine must not hang

# Keras' own ImageNet weights (keras/applications/inception_v3.py).
IMAGENET_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                        "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5")
IMAGENET_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_WEIGHTS_MD5 = "9a0d58056eeedaa3f26cb7ebd46da564"


@dataclass
class InceptionModel:
    """A Keras Inception-v3 split into what the frozen graph needs."""

    body: keras.Model  # normalised images [N, 299, 299, 3] → [N, 8, 8, 2048]
    logits_kernel: np.ndarray  # float32 [2048, num_classes]
    logits_bias: np.ndarray  # float32 [num_classes]
    description: str  # where the weights came from, for the returned summary

    @property
    def num_classes(self) -> int:
        """Return the width of the softmax."""
        return int(self.logits_kernel.shape[1])


def synthetic_images(count: int, seed: int, size: int = INPUT_SIZE) -> np.ndarray:
    """Return ``count`` seeded smooth random images [count, size, size, 3] in [-1, 1].

    Each image is low-resolution noise at three scales, upsampled bilinearly and
    summed: smooth like a photo, so calibration statistics resemble real ones
    better than white noise would.
    """
    rng = np.random.default_rng(seed)
    total = np.zeros((count, size, size, 3), np.float32)
    for res, amplitude in ((4, 1.0), (16, 0.5), (64, 0.25)):
        noise = rng.uniform(-1.0, 1.0, (count, res, res, 3)).astype(np.float32)
        total += amplitude * tf.image.resize(noise, (size, size), method="bilinear").numpy()
    peak = np.max(np.abs(total), axis=(1, 2, 3), keepdims=True)
    return (total / np.maximum(peak, 1e-6)).astype(np.float32)


def calibrate_batch_norm(model: keras.Model, images: np.ndarray) -> None:
    """Set every batch norm's moving statistics to the batch statistics of ``images``."""
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    try:
        for layer in norms:
            layer.momentum = 0.0  # moving = momentum * moving + (1 - momentum) * batch
        model(images, training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


def _random_logits(seed: int, num_classes: int = RANDOM_NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Return a seeded random 2048 → ``num_classes`` dense layer (Glorot-uniform kernel, zero bias)."""
    rng = np.random.default_rng([seed, 1008])
    limit = np.sqrt(6.0 / (BOTTLENECK_DIM + num_classes))
    kernel = rng.uniform(-limit, limit, (BOTTLENECK_DIM, num_classes)).astype(np.float32)
    return kernel, np.zeros(num_classes, np.float32)


def _fresh_keras(seed: int):
    """Reset Keras' global state and seed it; return the keras module.

    Layer names become node names of the frozen body, so fresh name counters
    make two exports with the same seed byte-identical.
    """
    import keras

    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)
    return keras


def _download_imagenet_weights() -> Path:
    """Fetch (or find in Keras' cache) the ImageNet weights file, failing fast when offline."""
    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        path = keras.utils.get_file(IMAGENET_WEIGHTS_FILE, IMAGENET_WEIGHTS_URL, cache_subdir="models",
                                    file_hash=IMAGENET_WEIGHTS_MD5)
    except Exception as exc:  # Keras wraps URLError/HTTPError in a bare Exception
        raise DownloadError(f"cannot download the Keras ImageNet weights from {IMAGENET_WEIGHTS_URL}: {exc}; "
                            "offline? pass weights=PATH to a local Keras weights file, or weights='random'"
                            ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return Path(path)


def _first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message (Keras' can run to pages)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _load_weights_file(path: Path, seed: int) -> InceptionModel:
    """Build Inception-v3 from a local Keras weights file, with its top if the file has one."""
    if not path.is_file():
        raise GraphError(f"weights file {str(path)!r} does not exist or is not a file")
    keras = _fresh_keras(seed)
    model = keras.applications.InceptionV3(include_top=True, weights=None)
    # A file without the top makes Keras warn that layers keep fresh weights before it
    # raises; that is expected here, so its warnings are replayed only on success.
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
    except Exception as top_error:
        log.info("%s has no classification top (%s); loading it without", path, _first_line(top_error))
        keras = _fresh_keras(seed)
        body = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=INPUT_SHAPE)
        try:
            body.load_weights(str(path))
        except Exception as exc:
            raise GraphError(f"cannot load Inception-v3 weights from {str(path)!r}: {_first_line(exc)} "
                             f"(with the classification top: {_first_line(top_error)})") from exc
        kernel, bias = _random_logits(seed)
        return InceptionModel(body, kernel, bias, f"{path} (no top; seeded random logits, seed {seed})")
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    body = keras.Model(model.input, model.get_layer(BODY_OUTPUT_LAYER).output, name="inception_v3_body")
    kernel, bias = model.get_layer(TOP_LAYER).get_weights()
    return InceptionModel(body, kernel.astype(np.float32), bias.astype(np.float32), str(path))


def build_inception(weights: str = "random", seed: int = 0, calibration_images: int = 8) -> InceptionModel:
    """Return the Keras Inception-v3 body and logit weights the graph will freeze.

    Args:
        weights: ``"random"``, ``"imagenet"`` or a path to a Keras weights file.
        seed: seeds the random weights, the calibration images and any random logits.
        calibration_images: how many synthetic images calibrate the random batch norms.
    """
    if weights == "random":
        if calibration_images < 1:
            raise ValueError(f"calibration_images must be at least 1; received {calibration_images!r}")
        keras = _fresh_keras(seed)
        body = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=INPUT_SHAPE)
        log.info("calibrating batch norms on %d synthetic images", calibration_images)
        calibrate_batch_norm(body, synthetic_images(calibration_images, seed))
        kernel, bias = _random_logits(seed)
        return InceptionModel(body, kernel, bias, "random")
    if weights == "imagenet":
        model = _load_weights_file(_download_imagenet_weights(), seed)
        model.description = "imagenet"
        return model
    path = Path(weights).expanduser()
    if not path.exists():
        raise GraphError(f"weights must be 'random', 'imagenet' or a path to a Keras weights file; "
                         f"received {weights!r}, which does not exist")
    return _load_weights_file(path, seed)


def freeze_body(body: keras.Model) -> tuple[graph_pb2.GraphDef, str, str]:
    """Freeze a Keras model to a GraphDef with a free batch dimension; return it, its input and output names."""

    spec = tf.TensorSpec([None, *INPUT_SHAPE], tf.float32, name="images")
    forward = tf.function(lambda images: body(images, training=False), input_signature=[spec])
    frozen = tf_private.convert_variables_to_constants(forward.get_concrete_function())
    (inp,), (out,) = frozen.inputs, frozen.outputs
    return frozen.graph.as_graph_def(), inp.name, out.name


def assemble_graph(body_def: graph_pb2.GraphDef, body_input: str, body_output: str,
                   logits_kernel: np.ndarray, logits_bias: np.ndarray) -> graph_pb2.GraphDef:
    """Wrap a frozen body in the 2015 graph's preprocessing, bottleneck and softmax nodes."""
    softmax = node_name(SOFTMAX)
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.raw_ops.Placeholder(dtype=tf.string, shape=[], name=node_name(JPEG_INPUT))
        decoded = tf.raw_ops.DecodeJpeg(contents=contents, channels=3, name=node_name(DECODED_IMAGE))
        pixels = tf.raw_ops.Cast(x=decoded, DstT=tf.float32, name=CAST_NODE)
        batch = tf.raw_ops.ExpandDims(input=pixels, axis=tf.constant(0, tf.int32, name=f"{EXPAND_NODE}/dim"),
                                      name=EXPAND_NODE)
        size = tf.constant([INPUT_SIZE, INPUT_SIZE], tf.int32, name=f"{RESIZE_NODE}/size")
        resized = tf.raw_ops.ResizeBilinear(images=batch, size=size, align_corners=False,
                                            half_pixel_centers=False, name=RESIZE_NODE)
        centred = tf.raw_ops.Sub(x=resized, y=tf.constant(INPUT_MEAN, tf.float32, name=f"{SUB_NODE}/y"),
                                 name=SUB_NODE)
        normalised = tf.raw_ops.Mul(x=centred, y=tf.constant(1.0 / INPUT_STD, tf.float32, name=f"{MUL_NODE}/y"),
                                    name=MUL_NODE)
        (features,) = tf.graph_util.import_graph_def(body_def, input_map={body_input: normalised},
                                                     return_elements=[body_output], name=BODY_SCOPE)
        height, width, depth = features.shape[1:]
        if depth != BOTTLENECK_DIM or height is None or width is None:
            raise GraphError(f"the body must end in [N, H, W, {BOTTLENECK_DIM}]; it gives {features.shape}")
        pooled = tf.raw_ops.AvgPool(value=features, ksize=[1, height, width, 1], strides=[1, 1, 1, 1],
                                    padding="VALID", name=node_name(BOTTLENECK))
        single = node_name(BOTTLENECK_SINGLE)
        flat = tf.raw_ops.Reshape(tensor=pooled, shape=tf.constant([1, BOTTLENECK_DIM], tf.int32,
                                                                   name=f"{single}/shape"), name=single)
        kernel = tf.constant(logits_kernel.astype(np.float32), name=f"{softmax}/weights")
        bias = tf.constant(logits_bias.astype(np.float32), name=f"{softmax}/biases")
        product = tf.raw_ops.MatMul(a=flat, b=kernel, name=f"{softmax}/logits/MatMul")
        logits = tf.raw_ops.BiasAdd(value=product, bias=bias, name=f"{softmax}/logits")
        tf.raw_ops.Softmax(logits=logits, name=softmax)
    # The body's own input placeholder survives the input_map unconnected; prune it.
    return keep_ancestors(graph.as_graph_def(), softmax)


def export_inception(out: Path, weights: str = "random", seed: int = 0, calibration_images: int = 8) -> dict:
    """Build a frozen Inception-v3 GraphDef with the 2015 interface and write it to ``out``.

    Args:
        out: the ``.pb`` file to write (parent directories are created).
        weights: ``"random"`` (seeded, batch norms calibrated), ``"imagenet"``
            (Keras' download) or a path to a Keras weights file.
        seed: seeds random weights, calibration images and random logits.
        calibration_images: synthetic images used to calibrate random batch norms.

    Returns:
        ``{"path", "sha256", "weights", "seed", "num_classes", "bytes", "producer"}``.
    """
    out = Path(out)
    started = time.monotonic()
    log.info("building Keras Inception-v3 (weights=%s, seed=%d)", weights, seed)
    model = build_inception(weights, seed, calibration_images)
    log.info("freezing the convolutional body (%.1f s)", time.monotonic() - started)
    body_def, body_input, body_output = freeze_body(model.body)
    log.info("assembling the 2015 interface (%.1f s)", time.monotonic() - started)
    graph_def = assemble_graph(body_def, body_input, body_output, model.logits_kernel, model.logits_bias)
    data = graph_def.SerializeToString(deterministic=True)
    with atomic_file(out) as fh:
        fh.write(data)
    log.info("wrote %s: %.1f MB, %d nodes (%.1f s)", out, len(data) / 1e6, len(graph_def.node),
             time.monotonic() - started)
    return {
        "path": str(out),
        "sha256": hashlib.sha256(data).hexdigest(),
        "weights": model.description,
        "seed": seed,
        "num_classes": model.num_classes,
        "bytes": len(data),
        "producer": int(graph_def.versions.producer),
    }


__all__ = ["InceptionModel", "assemble_graph", "build_inception", "calibrate_batch_norm", "export_inception",
           "freeze_body", "synthetic_images"]
