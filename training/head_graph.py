"""The exported head: bottlenecks → calibrated float32 probabilities and an unfamiliar-input score.

The head that training fitted (Keras, :mod:`imgclf.training.head`) is
exported as a plain TensorFlow graph built from its weights, with the
calibration temperature (:mod:`imgclf.training.calibration`) and the
unfamiliar-input detector (:mod:`imgclf.training.unfamiliar`) inside it.

Precision: the graph computes in **float64** from the float32 bottleneck to
the softmax, and casts the answers to float32 at the end. Every mixed-precision
rewrite a runtime may apply to the whole graph — oneDNN's bfloat16 rewrite on
CPUs, grappler's float16 rewrite on GPUs — rewrites float32 ops only, so the
backbone runs in the serving precision while the head's matmuls, logits and
softmax cannot be rounded to 16 bits (Keras' mixed-precision guide keeps the
final softmax in float32 for the same reason: bf16 probabilities sum to
0.997–0.998). The probabilities then sum to 1 within float32 rounding.

:class:`HeadWeights` is the same computation in numpy: the reference the
tests and the training job use (calibration is fitted on its logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imgclf.core import export_names as names
from imgclf.featurizer.graph.contract import node_name
from imgclf.training.detector import Detector


@dataclass
class Dense:
    """One dense layer: ``x @ kernel + bias``, then ReLU when ``relu``."""

    kernel: np.ndarray  # [in, out] float32
    bias: np.ndarray  # [out] float32
    relu: bool


@dataclass
class HeadWeights:
    """A trained head as arrays: optional standardisation, then dense layers to the logits."""

    layers: list[Dense]
    mean: np.ndarray | None = None  # [D]: x ↦ (x − mean) / scale before the first layer
    scale: np.ndarray | None = None  # [D]

    @classmethod
    def from_keras(cls, head) -> HeadWeights:
        """Read the weights of a head built by :func:`imgclf.training.head.build_head` (dropout is skipped)."""
        import keras

        layers, mean, scale = [], None, None
        dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
        for layer in head.layers:
            if isinstance(layer, keras.layers.Normalization):
                # Keras divides by max(sqrt(variance), epsilon).
                mean = np.asarray(layer.mean, np.float64).reshape(-1)
                scale = np.maximum(np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1)),
                                   keras.backend.epsilon())
            elif isinstance(layer, keras.layers.Dense):
                kernel, bias = layer.get_weights()
                activation = keras.activations.serialize(layer.activation)
                activation = activation if isinstance(activation, str) else activation.get("config", {}).get(
                    "name", str(activation))
                # A last layer with the softmax fused in gives the logits before it (the graph adds the softmax).
                known = ("relu", "linear", "softmax") if layer is dense[-1] else ("relu", "linear")
                if activation not in known:
                    raise ValueError(f"the head's layer {layer.name!r} has activation {activation!r}; "
                                     f"the export knows {', '.join(known)} there")
                layers.append(Dense(np.asarray(kernel, np.float32), np.asarray(bias, np.float32),
                                    activation == "relu"))
            elif not isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout, keras.layers.Softmax)):
                raise ValueError(f"the head's layer {layer.name!r} ({type(layer).__name__}) cannot be exported")
        if not layers:
            raise ValueError("the head has no dense layer")
        return cls(layers, mean, scale)

    @property
    def dim(self) -> int:
        return int(self.layers[0].kernel.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.layers[-1].kernel.shape[1])

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Return the logits [N, C] of bottlenecks [N, D], computed in float64."""
        x = np.asarray(features, dtype=np.float64)
        if self.mean is not None:
            x = (x - self.mean) / self.scale
        for layer in self.layers:
            x = x @ layer.kernel.astype(np.float64) + layer.bias.astype(np.float64)
            if layer.relu:
                x = np.maximum(x, 0.0)
        return x


@dataclass
class TrustedHead:
    """What the export computes from a bottleneck: the head, its temperature and its unfamiliar-input detector."""

    weights: HeadWeights
    temperature: float = 1.0
    detector: Detector = field(default_factory=Detector)

    def outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Return probabilities [N, C] float32 and the unfamiliar score [N] float32 (the numpy reference)."""
        from imgclf.training.calibration import softmax

        features = np.asarray(features, dtype=np.float64)
        logits = self.weights.logits(features)
        scores = self.detector.score(features, logits) if self.detector.fitted else np.zeros(len(features))
        return {names.PROBABILITIES_KEY: softmax(logits, self.temperature).astype(np.float32),
                names.UNFAMILIAR_SCORE_KEY: scores.astype(np.float32)}

    def graph_def(self):
        """Return the frozen head: ``input/BottleneckInputPlaceholder`` float32 [None, D] → ``final_result``
        (calibrated probabilities, float32 [None, C]), ``unfamiliar_score`` (float32 [None]) and
        ``unfamiliar`` (bool [None]: the score above the detector's threshold)."""
        import tensorflow as tf

        from imgclf.training.frozen_graphs import current_graph_def

        graph = tf.Graph()
        with graph.as_default():
            vectors = tf.compat.v1.placeholder(tf.float32, [None, self.weights.dim],
                                               name=node_name(names.HEAD_INPUT))
            with tf.name_scope("head"):
                x = features = tf.cast(vectors, tf.float64)
                w = self.weights
                if w.mean is not None:
                    x = (x - tf.constant(w.mean, tf.float64)) * tf.constant(1.0 / w.scale, tf.float64)
                for i, layer in enumerate(w.layers):
                    x = tf.matmul(x, tf.constant(layer.kernel.astype(np.float64)), name=f"matmul_{i}")
                    x = tf.nn.bias_add(x, tf.constant(layer.bias.astype(np.float64)))
                    if layer.relu:
                        x = tf.nn.relu(x)
                logits = x
                probabilities = tf.nn.softmax(logits * tf.constant(1.0 / self.temperature, tf.float64))
                score = self.detector.tf_score(features, logits)
            tf.identity(tf.cast(probabilities, tf.float32), name=node_name(names.HEAD_OUTPUT))
            score = tf.identity(tf.cast(score, tf.float32), name=node_name(names.HEAD_UNFAMILIAR_SCORE))
            # Compared in float32, as the service compares the float32 score it answers with.
            tf.greater(score, tf.constant(np.float32(self.detector.threshold)), name=node_name(names.HEAD_UNFAMILIAR))
        return current_graph_def(graph, names.HEAD_OUTPUTS)
