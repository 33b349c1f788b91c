"""Build a small frozen graph with the 2015 Inception-v3 interface and old ops.

The graph is written node by node as the 2015 exporter did: producer version
below 9, ``BatchNormWithGlobalNormalization`` after every convolution (both
values of ``scale_after_normalization``), the old ``Concat`` with its axis as
the first input, the JPEG-decoding preprocessing chain, ``pool_3`` →
``pool_3/_reshape`` with a constant ``[1, 2048]`` shape, and a softmax. It is
tiny (a few convolutions) so tests stay fast, but it exercises every code path
the real ``tensorflow_inception_graph.pb`` needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2

PRODUCER_VERSION = 5  # the 2015 graphs predate version 9, where the old batch norm was removed
NUM_CLASSES = 16


def _attr(value) -> attr_value_pb2.AttrValue:
    if isinstance(value, attr_value_pb2.AttrValue):
        return value
    if isinstance(value, bool):
        return attr_value_pb2.AttrValue(b=value)
    if isinstance(value, int):
        return attr_value_pb2.AttrValue(i=value)
    if isinstance(value, float):
        return attr_value_pb2.AttrValue(f=value)
    if isinstance(value, str):
        return attr_value_pb2.AttrValue(s=value.encode())
    if isinstance(value, list):
        return attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(i=value))
    raise TypeError(f"unsupported attr value {value!r}")


def _type(dtype: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=dtype)


class _Builder:
    def __init__(self, seed: int):
        self.graph = graph_pb2.GraphDef()
        self.graph.versions.producer = PRODUCER_VERSION
        self.rng = np.random.default_rng(seed)

    def node(self, name: str, op: str, inputs=(), **attrs) -> str:
        node = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
        for key, value in attrs.items():
            node.attr[key].CopyFrom(_attr(value))
        self.graph.node.append(node)
        return name

    def const(self, name: str, value) -> str:
        array = np.asarray(value)
        tensor = tf.make_tensor_proto(array)
        return self.node(name, "Const", dtype=_type(tensor.dtype), value=attr_value_pb2.AttrValue(tensor=tensor))

    def conv_bn_relu(self, name, x, cin, cout, k, stride, padding, scale_after):
        fan_in = k * k * cin
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (k, k, cin, cout)).astype(np.float32)
        conv = self.node(f"{name}/Conv2D", "Conv2D", [x, self.const(f"{name}/conv2d_params", w)],
                         T=_type(types_pb2.DT_FLOAT), strides=[1, stride, stride, 1], padding=padding,
                         use_cudnn_on_gpu=True, data_format="NHWC")
        mean = self.rng.normal(0.0, 0.3, cout).astype(np.float32)
        var = self.rng.uniform(0.5, 2.0, cout).astype(np.float32)
        beta = self.rng.normal(0.0, 0.1, cout).astype(np.float32)
        gamma = self.rng.uniform(0.8, 1.2, cout).astype(np.float32)
        bn = self.node(f"{name}/batchnorm", "BatchNormWithGlobalNormalization",
                       [conv, self.const(f"{name}/batchnorm/moving_mean", mean),
                        self.const(f"{name}/batchnorm/moving_variance", var),
                        self.const(f"{name}/batchnorm/beta", beta),
                        self.const(f"{name}/batchnorm/gamma", gamma)],
                       T=_type(types_pb2.DT_FLOAT), variance_epsilon=0.001,
                       scale_after_normalization=scale_after)
        return self.node(name, "Relu", [bn], T=_type(types_pb2.DT_FLOAT))


def build_legacy_graph_def(seed: int = 0, num_classes: int = NUM_CLASSES) -> graph_pb2.GraphDef:
    """Return a tiny 2015-style Inception GraphDef (seeded random weights)."""
    b = _Builder(seed)
    f32 = _type(types_pb2.DT_FLOAT)
    contents = b.node("DecodeJpeg/contents", "Placeholder", dtype=_type(types_pb2.DT_STRING))
    decoded = b.node("DecodeJpeg", "DecodeJpeg", [contents], channels=3, ratio=1, fancy_upscaling=True,
                     try_recover_truncated=False, acceptable_fraction=1.0)
    cast = b.node("Cast", "Cast", [decoded], SrcT=_type(types_pb2.DT_UINT8), DstT=f32)
    expand = b.node("ExpandDims", "ExpandDims", [cast, b.const("ExpandDims/dim", np.int32(0))],
                    T=f32, Tdim=_type(types_pb2.DT_INT32))
    resized = b.node("ResizeBilinear", "ResizeBilinear",
                     [expand, b.const("ResizeBilinear/size", np.array([299, 299], np.int32))],
                     T=f32, align_corners=False)
    sub = b.node("Sub", "Sub", [resized, b.const("Sub/y", np.float32(128.0))], T=f32)
    mul = b.node("Mul", "Mul", [sub, b.const("Mul/y", np.float32(1.0 / 128.0))], T=f32)

    x = b.conv_bn_relu("conv", mul, 3, 16, 3, 2, "VALID", scale_after=False)  # 149
    x = b.node("pool", "MaxPool", [x], T=f32, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="VALID")  # 74
    x = b.conv_bn_relu("conv_1", x, 16, 24, 3, 3, "VALID", scale_after=True)  # 24
    # An Inception-style block: three towers joined by the old Concat (axis first).
    t0 = b.conv_bn_relu("mixed/conv", x, 24, 16, 1, 1, "SAME", scale_after=False)
    t1 = b.conv_bn_relu("mixed/tower/conv", x, 24, 8, 1, 1, "SAME", scale_after=True)
    t1 = b.conv_bn_relu("mixed/tower/conv_1", t1, 8, 16, 3, 1, "SAME", scale_after=False)
    t2 = b.node("mixed/tower_1/pool", "AvgPool", [x], T=f32, ksize=[1, 3, 3, 1], strides=[1, 1, 1, 1],
                padding="SAME", data_format="NHWC")
    t2 = b.conv_bn_relu("mixed/tower_1/conv", t2, 24, 8, 1, 1, "SAME", scale_after=True)
    joined = b.node("mixed/join", "Concat", [b.const("mixed/join/concat_dim", np.int32(3)), t0, t1, t2],
                    N=3, T=f32)
    x = b.conv_bn_relu("mixed_1/conv", joined, 40, 2048, 1, 1, "SAME", scale_after=False)
    pool3 = b.node("pool_3", "AvgPool", [x], T=f32, ksize=[1, 24, 24, 1], strides=[1, 1, 1, 1],
                   padding="VALID", data_format="NHWC")
    flat = b.node("pool_3/_reshape", "Reshape", [pool3, b.const("pool_3/_reshape/shape",
                                                                 np.array([1, 2048], np.int32))],
                  T=f32, Tshape=_type(types_pb2.DT_INT32))
    w = b.rng.normal(0.0, 0.02, (2048, num_classes)).astype(np.float32)
    logits = b.node("softmax/logits/MatMul", "MatMul", [flat, b.const("softmax/weights", w)], T=f32,
                    transpose_a=False, transpose_b=False)
    logits = b.node("softmax/logits", "BiasAdd", [logits, b.const("softmax/biases",
                                                                   np.zeros(num_classes, np.float32))], T=f32)
    b.node("softmax", "Softmax", [logits], T=f32)
    return b.graph


def write_legacy_graph(path: Path, seed: int = 0) -> Path:
    """Write the tiny legacy graph to ``path`` and return the path."""
    path = Path(path)
    path.write_bytes(build_legacy_graph_def(seed).SerializeToString())
    return path
