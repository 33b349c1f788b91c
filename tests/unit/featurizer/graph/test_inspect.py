"""Tests of `imgclf inspect`: the graph report, its text form and the TensorBoard export."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from imgclf.core.errors import GraphError
from imgclf.featurizer.graph.inspect import format_report, format_shape, inspect_graph, write_tensorboard_graph
from tests.support.legacy_graph import PRODUCER_VERSION, build_legacy_graph_def


@pytest.fixture(scope="module")
def legacy_report(legacy_graph_path):
    return inspect_graph(legacy_graph_path)


@pytest.fixture(scope="module")
def legacy_report_all(legacy_graph_path):
    return inspect_graph(legacy_graph_path, show_all=True)


def _freeze(fn, tmp_path, name):
    """Freeze a tf.function the TF 2 way (variables → constants) and write its GraphDef."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    graph_def = convert_variables_to_constants_v2(fn.get_concrete_function()).graph.as_graph_def()
    path = tmp_path / name
    path.write_bytes(graph_def.SerializeToString())
    return path


def _candidates(candidates):
    return {c.tensor.name: c.tensor.shape for c in candidates}


# --- the file and its ops -------------------------------------------------------------------------------------


def test_file_facts(legacy_graph_path, legacy_report):
    data = legacy_graph_path.read_bytes()
    graph_def = graph_pb2.GraphDef.FromString(data)
    assert legacy_report.path == legacy_graph_path
    assert legacy_report.size_bytes == len(data)
    assert legacy_report.sha256 == hashlib.sha256(data).hexdigest()
    assert legacy_report.node_count == len(graph_def.node)
    assert legacy_report.producer == PRODUCER_VERSION == 5


def test_op_counts_match_the_graph_def_and_are_sorted(legacy_report):
    expected = Counter(node.op for node in build_legacy_graph_def().node)
    assert dict(legacy_report.op_counts) == expected
    counts = [n for _, n in legacy_report.op_counts]
    assert counts == sorted(counts, reverse=True)
    assert expected["BatchNormWithGlobalNormalization"] == 7 and expected["Concat"] == 1


def test_old_ops_are_flagged(legacy_report):
    flagged = {d.op: d for d in legacy_report.deprecated}
    assert set(flagged) == {"BatchNormWithGlobalNormalization", "Concat"}
    bn = flagged["BatchNormWithGlobalNormalization"]
    assert (bn.count, bn.removed_at) == (7, 9)
    assert "removed at GraphDef version 9" in bn.note and "folds" in bn.note
    concat = flagged["Concat"]
    assert (concat.count, concat.removed_at) == (1, None)
    assert "ConcatV2" in concat.note


# --- inputs and weights ----------------------------------------------------------------------------------------


def test_placeholders(legacy_report):
    assert [(p.name, p.dtype) for p in legacy_report.placeholders] == [("DecodeJpeg/contents:0", "string")]


def test_const_summary_matches_the_values(legacy_report):
    consts = [n for n in build_legacy_graph_def().node if n.op == "Const"]
    values = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in consts}
    summary = legacy_report.consts
    assert summary.count == len(consts)
    assert summary.params == sum(v.size for v in values.values())
    assert summary.bytes == sum(v.nbytes for v in values.values())
    biggest = max(values, key=lambda k: values[k].nbytes)
    assert summary.largest[0].name == biggest == "mixed_1/conv/conv2d_params"
    assert summary.largest[0].shape == list(values[biggest].shape)
    sizes = [c.bytes for c in summary.largest]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) <= 5


# --- the likely tensors ----------------------------------------------------------------------------------------


def test_legacy_candidates(legacy_report):
    roles = {(c.role, c.tensor.name) for c in legacy_report.image_inputs}
    assert roles == {("encoded image bytes", "DecodeJpeg/contents:0"), ("normalised image", "Mul:0")}
    assert _candidates(legacy_report.image_inputs)["Mul:0"] == [1, 299, 299, 3]
    assert [c.tensor.name for c in legacy_report.bottlenecks] == ["pool_3/_reshape:0", "pool_3:0"]
    assert _candidates(legacy_report.bottlenecks) == {"pool_3/_reshape:0": [1, 2048], "pool_3:0": [1, 1, 1, 2048]}
    assert "one image only" in legacy_report.bottlenecks[0].why
    assert _candidates(legacy_report.softmax) == {"softmax:0": [1, 16]}
    assert legacy_report.shapes_from == "original graph"


def test_graph_without_the_expected_structure_has_no_candidates(tmp_path):
    w = tf.Variable(tf.random.stateless_normal([8, 4], seed=[1, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def dense(x):
        return tf.nn.relu(tf.matmul(x, w))

    report = inspect_graph(_freeze(dense, tmp_path, "dense.pb"))
    assert (report.image_inputs, report.bottlenecks, report.softmax) == ([], [], [])
    assert report.deprecated == []
    assert [(p.dtype, p.shape) for p in report.placeholders] == [("float32", [-1, 8])]
    assert "no candidates found for: image input, bottleneck, softmax" in format_report(report)


def test_keras_style_graph_candidates_come_from_structure_not_names(tmp_path):
    kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 4], seed=[1, 2]))
    dense = tf.Variable(tf.random.stateless_normal([4, 5], seed=[3, 4]))
    bias = tf.Variable(tf.zeros([5]))

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
    def net(images):
        features = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME")), axis=[1, 2])
        return tf.nn.softmax(tf.nn.bias_add(tf.matmul(features, dense), bias))

    report = inspect_graph(_freeze(net, tmp_path, "net.pb"))
    assert _candidates(report.image_inputs) == {"images:0": [-1, 16, 16, 3]}
    assert [c.role for c in report.image_inputs] == ["normalised image"]
    (bottleneck,) = report.bottlenecks
    assert bottleneck.tensor.shape == [-1, 4]
    assert [c.tensor.shape for c in report.softmax] == [[-1, 5]]


# --- shapes ----------------------------------------------------------------------------------------------------


def test_show_all_lists_every_node_with_shapes(legacy_report, legacy_report_all):
    assert legacy_report.nodes is None
    graph_def = build_legacy_graph_def()
    assert [n.name for n in legacy_report_all.nodes] == [n.name for n in graph_def.node]
    tensors = {t.name: t for node in legacy_report_all.nodes for t in node.outputs}
    assert (tensors["Mul:0"].dtype, tensors["Mul:0"].shape) == ("float32", [1, 299, 299, 3])
    assert tensors["DecodeJpeg:0"].shape == [-1, -1, 3]
    assert tensors["DecodeJpeg/contents:0"].shape is None  # declared without a shape
    assert tensors["mixed/join:0"].shape == [1, 24, 24, 40]  # through the old Concat


def test_shapes_fall_back_to_the_rewritten_graph(tmp_path):
    graph_def = build_legacy_graph_def()
    graph_def.versions.producer = tf.version.GRAPH_DEF_VERSION  # the old batch norm no longer imports
    path = tmp_path / "bumped.pb"
    path.write_bytes(graph_def.SerializeToString())
    report = inspect_graph(path, show_all=True)
    assert report.shapes_from == "rewritten graph"
    assert _candidates(report.bottlenecks)["pool_3:0"] == [1, 1, 1, 2048]


def test_unimportable_graph_reports_unknown_shapes_without_crashing(tmp_path):
    graph_def = build_legacy_graph_def()
    graph_def.node.append(node_def_pb2.NodeDef(name="mystery", op="NoSuchOpAnywhere", input=["softmax"]))
    graph_def.node.append(node_def_pb2.NodeDef(name="valueless", op="Const"))  # no dtype, no value
    path = tmp_path / "mystery.pb"
    path.write_bytes(graph_def.SerializeToString())
    report = inspect_graph(path, show_all=True)
    assert report.shapes_from.startswith("unavailable")
    assert report.consts.count == sum(n.op == "Const" for n in graph_def.node)
    assert _candidates(report.bottlenecks) == {"pool_3/_reshape:0": None, "pool_3:0": None}
    assert {n.name: n.outputs for n in report.nodes}["mystery"] == []
    text = format_report(report)
    assert "pool_3:0" in text and "shapes unavailable" in text


# --- output forms ----------------------------------------------------------------------------------------------


def test_to_dict_is_json_ready(legacy_report_all, legacy_graph_path):
    data = json.loads(json.dumps(legacy_report_all.to_dict()))
    assert data["path"] == str(legacy_graph_path)
    assert data["producer"] == 5
    assert {"op": "BatchNormWithGlobalNormalization", "count": 7} in data["op_counts"]
    assert data["bottlenecks"][1]["tensor"] == {"name": "pool_3:0", "dtype": "float32", "shape": [1, 1, 1, 2048]}


def test_format_report_names_what_matters(legacy_report, legacy_report_all):
    text = format_report(legacy_report)
    for needle in ("BatchNormWithGlobalNormalization", "removed at GraphDef version 9", "ConcatV2",
                   "DecodeJpeg/contents:0", "Mul:0", "[1,299,299,3]", "pool_3/_reshape:0", "[1,2048]",
                   "pool_3:0", "[1,1,1,2048]", "softmax:0", legacy_report.sha256):
        assert needle in text, needle
    assert "Nodes (" not in text and "mixed/tower_1/conv/batchnorm/beta:0" not in text
    full = format_report(legacy_report_all)
    row = next(line for line in full.splitlines() if line.split()[:1] == ["mixed/join:0"])
    assert row.split() == ["mixed/join:0", "Concat", "float32", "[1,24,24,40]"]


def test_format_shape():
    assert format_shape(None) == "<unknown>"
    assert format_shape([]) == "[]"
    assert format_shape([-1, 299, 299, 3]) == "[?,299,299,3]"


# --- TensorBoard -----------------------------------------------------------------------------------------------


def test_tensorboard_event_file_holds_the_graph(legacy_graph_path, tmp_path):
    logdir = tmp_path / "logs" / "graph"
    event_file = write_tensorboard_graph(legacy_graph_path, logdir)
    assert event_file.parent == logdir and event_file.name.startswith("events.out.tfevents.")
    graphs = [graph_pb2.GraphDef.FromString(event.graph_def)
              for event in tf.compat.v1.train.summary_iterator(str(event_file)) if event.HasField("graph_def")]
    assert len(graphs) == 1
    assert [n.name for n in graphs[0].node] == [n.name for n in build_legacy_graph_def().node]
    assert graphs[0].versions.producer == PRODUCER_VERSION  # written as it is, not rewritten


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, content", [
    ("missing.pb", None),
    ("empty.pb", b""),
    ("garbage.pb", b"\xff\xfe this is not a protobuf \x00\x01"),
    ("image.pb", np.arange(64, dtype=np.uint8).tobytes()),
])
def test_bad_files_raise_graph_error(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GraphError, match=name):
        inspect_graph(path)
    with pytest.raises(GraphError, match=name):
        write_tensorboard_graph(path, tmp_path / "logs")
    assert not (tmp_path / "logs").exists()
