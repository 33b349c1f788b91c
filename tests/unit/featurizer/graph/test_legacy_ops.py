"""Rewriting the 2015 graph's old ops must not change what it computes."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, types_pb2

from imgclf.featurizer.graph.legacy_ops import deprecated_ops, rewrite_legacy_ops
from tests.support import images
from tests.support.legacy_graph import PRODUCER_VERSION, build_legacy_graph_def


def _run(graph_def, fetch, feed):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetch, feed)


@pytest.fixture(scope="module")
def legacy():
    return build_legacy_graph_def(seed=3)


def test_rewrite_folds_every_batch_norm_and_concat(legacy):
    rewritten, report = rewrite_legacy_ops(legacy)
    old_ops = [n.op for n in legacy.node]
    new_ops = [n.op for n in rewritten.node]
    assert report.folded_batch_norms == old_ops.count("BatchNormWithGlobalNormalization") == 7
    assert report.rewritten_concats == old_ops.count("Concat") == 1
    assert "BatchNormWithGlobalNormalization" not in new_ops and "Concat" not in new_ops
    assert new_ops.count("ConcatV2") == 1
    assert report.still_deprecated == []
    assert report.producer_before == PRODUCER_VERSION
    assert rewritten.versions.producer == tf.version.GRAPH_DEF_VERSION
    # batch-norm parameters are gone, the filters carry them now
    assert not any(n.name.endswith("/moving_variance") for n in rewritten.node)


def test_rewritten_graph_computes_the_same_bottleneck(legacy):
    rewritten, _ = rewrite_legacy_ops(legacy)
    feed = {"DecodeJpeg/contents:0": images.jpeg(1)}
    before = _run(legacy, "pool_3/_reshape:0", feed)
    after = _run(rewritten, "pool_3/_reshape:0", feed)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)


def test_old_ops_fail_at_a_current_producer_and_the_rewrite_fixes_that(legacy):
    bumped = tf.compat.v1.GraphDef()
    bumped.CopyFrom(legacy)
    bumped.versions.producer = tf.version.GRAPH_DEF_VERSION
    with pytest.raises(Exception, match="BatchNormWithGlobalNormalization is not available in GraphDef version"):
        with tf.Graph().as_default():
            tf.graph_util.import_graph_def(bumped, name="")
    rewritten, _ = rewrite_legacy_ops(legacy)
    with tf.Graph().as_default():
        tf.graph_util.import_graph_def(rewritten, name="")  # no error


def test_batch_norm_that_follows_no_convolution_becomes_mul_add():
    graph_def = build_legacy_graph_def(seed=5)
    # Put a batch norm after the max-pool instead of after a convolution.
    by_name = {n.name: n for n in graph_def.node}
    conv_1 = by_name["conv_1/Conv2D"]
    norm = graph_def.node.add(name="pool/batchnorm", op="BatchNormWithGlobalNormalization")
    rng = np.random.default_rng(0)
    for part, value in (("mean", rng.normal(0, 1, 16)), ("var", rng.uniform(0.5, 2, 16)),
                        ("beta", rng.normal(0, 1, 16)), ("gamma", rng.uniform(0.5, 2, 16))):
        const = graph_def.node.add(name=f"pool/bn_{part}", op="Const")
        tensor = tf.make_tensor_proto(value.astype(np.float32))
        const.attr["dtype"].type = tensor.dtype
        const.attr["value"].tensor.CopyFrom(tensor)
        norm.input.append(const.name)
    norm.input.insert(0, "pool")
    norm.attr["T"].type = types_pb2.DT_FLOAT
    norm.attr["variance_epsilon"].CopyFrom(attr_value_pb2.AttrValue(f=0.001))
    norm.attr["scale_after_normalization"].CopyFrom(attr_value_pb2.AttrValue(b=True))
    conv_1.input[0] = "pool/batchnorm"
    rewritten, report = rewrite_legacy_ops(graph_def)
    assert report.rewritten_batch_norms == 1 and report.folded_batch_norms == 7
    assert {n.op for n in rewritten.node if n.name == "pool/batchnorm"} == {"Add"}
    feed = {"DecodeJpeg/contents:0": images.jpeg(2)}
    np.testing.assert_allclose(_run(rewritten, "pool_3:0", feed), _run(graph_def, "pool_3:0", feed),
                               rtol=1e-4, atol=1e-5)


def test_deprecated_ops_reports_versions(legacy):
    assert deprecated_ops(legacy) == {"BatchNormWithGlobalNormalization": 9}
    assert deprecated_ops(legacy, at_version=8) == {}


def test_batch_norm_parameter_on_an_identity_cycle_is_refused_not_looped_on():
    graph_def = build_legacy_graph_def(seed=6)
    norm = next(n for n in graph_def.node if n.name == "conv/batchnorm")
    norm.input[1] = "cycle/a"  # the moving mean now comes from Identity → Identity → back
    graph_def.node.add(name="cycle/a", op="Identity", input=["cycle/b"])
    graph_def.node.add(name="cycle/b", op="Identity", input=["cycle/a"])
    with pytest.raises(ValueError, match="non-constant parameters"):
        rewrite_legacy_ops(graph_def)
