"""imgclf.core.tf_private: each wrapper of a private TensorFlow API still does what its callers rely on.

A TensorFlow upgrade that moves one of these internals fails here first.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import op_def_pb2
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context

from imgclf.core import tf_private


def test_eager_runtime_started_turns_true_at_the_first_op():
    """Device settings must be applied before the runtime exists; this tells the two moments apart."""
    script = textwrap.dedent("""
        import tensorflow as tf
        from imgclf.core.tf_private import eager_runtime_started
        before = eager_runtime_started()
        tf.constant(1.0) + 1.0
        print(before, eager_runtime_started())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "True"]


def test_eager_runtime_started_in_this_process():
    assert float(tf.constant(1.0) + 1.0) == 2.0
    assert tf_private.eager_runtime_started() is True


def test_eager_gpu_options_are_the_contexts_gpu_options_proto():
    options = tf_private.eager_gpu_options()
    assert isinstance(options, config_pb2.GPUOptions)
    assert options == context.context().config.gpu_options


def test_onednn_enabled_is_a_bool():
    assert isinstance(tf_private.onednn_enabled(), bool)


def test_op_def_returns_the_registered_op_def():
    matmul = tf_private.op_def("MatMul")
    assert isinstance(matmul, op_def_pb2.OpDef)
    assert matmul.name == "MatMul" and [a.name for a in matmul.input_arg] == ["a", "b"]
    # the 2015 graph's old op is still registered (deprecated, not removed): the featurizer loads it
    assert tf_private.op_def("BatchNormWithGlobalNormalization").name == "BatchNormWithGlobalNormalization"


@pytest.mark.parametrize("name", ["NoSuchOp2015", "", "matmul"])
def test_op_def_of_an_unknown_op_is_none(name):
    assert tf_private.op_def(name) is None


def test_convert_variables_to_constants_freezes_the_variables_into_the_graph():
    weights = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def forward(x):
        return tf.matmul(x, weights) + 1.0

    concrete = forward.get_concrete_function()
    frozen = tf_private.convert_variables_to_constants(concrete)

    ops = {node.op for node in frozen.graph.as_graph_def().node}
    assert not ops & {"VarHandleOp", "ReadVariableOp", "VariableV2"}, ops
    assert not frozen.captured_inputs  # nothing outside the graph any more
    x = np.array([[1, 2, 3], [-1, 0, 0.5]], dtype=np.float32)
    expected = x @ np.arange(6, dtype=np.float32).reshape(3, 2) + 1.0
    np.testing.assert_allclose(frozen(tf.constant(x))[0].numpy(), expected, rtol=1e-6)
    weights.assign(tf.zeros([3, 2]))  # the frozen copy keeps the values it was frozen with
    np.testing.assert_allclose(frozen(tf.constant(x))[0].numpy(), expected, rtol=1e-6)


def _rewrites(options: context.FunctionCallOptions) -> dict[str, int]:
    config = config_pb2.ConfigProto.FromString(options.config_proto_serialized)
    return {name: getattr(config.graph_options.rewrite_options, name) for name in tf_private.MIXED_PRECISION_REWRITES}


def test_every_mixed_precision_rewrite_is_a_rewriter_option():
    """A name TensorFlow dropped would make full_precision() fail on setattr; a renamed one would slip through."""
    fields = rewriter_config_pb2.RewriterConfig.DESCRIPTOR.fields_by_name
    assert set(tf_private.MIXED_PRECISION_REWRITES) <= set(fields)
    assert {name for name in fields if name.startswith("auto_mixed_precision")} \
        == set(tf_private.MIXED_PRECISION_REWRITES)


def test_full_precision_switches_the_rewrites_off_for_the_call_and_restores_the_options():
    ctx = context.context()
    saved = ctx.function_call_options
    before = saved.config_proto_serialized

    with tf_private.full_precision():
        inside = ctx.function_call_options
        assert _rewrites(inside) == dict.fromkeys(tf_private.MIXED_PRECISION_REWRITES,
                                                  rewriter_config_pb2.RewriterConfig.OFF)
        assert inside.executor_type == saved.executor_type
        assert float(tf.function(lambda: tf.constant(2.0) * 3.0)()) == 6.0  # calls still run

    assert ctx.function_call_options is saved
    assert ctx.function_call_options.config_proto_serialized == before


def test_full_precision_restores_the_options_after_an_exception():
    ctx = context.context()
    saved = ctx.function_call_options
    with pytest.raises(RuntimeError, match="the model call failed"):
        with tf_private.full_precision():
            raise RuntimeError("the model call failed")
    assert ctx.function_call_options is saved


def test_full_precision_nests():
    ctx = context.context()
    saved = ctx.function_call_options
    with tf_private.full_precision():
        outer = ctx.function_call_options
        with tf_private.full_precision():
            assert _rewrites(ctx.function_call_options) == _rewrites(outer)
        assert ctx.function_call_options is outer
    assert ctx.function_call_options is saved
