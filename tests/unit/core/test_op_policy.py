"""The inference allow-list: imgclf's own graphs and exports pass, graphs that touch files are refused."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2

from imgclf.core import export_names as names
from imgclf.core import op_policy
from imgclf.core.errors import GraphError, UnsafeGraph, UsageError
from imgclf.core.op_policy import (
    ALLOWED_OPS,
    RESTORE_OPS,
    SAVE_OPS,
    check_graph_def,
    check_saved_model,
    read_saved_model_proto,
    unsafe_ops_in_graph_def,
)
from imgclf.service.cli.main import main
from tests.support import images

REFUSED = "contains ops outside imgclf's inference allow-list"

# Ops that reach outside the process: files, Python, printing to files, other processes, data sets.
DANGEROUS = [
    "ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc", "ImmutableConst",
    "Print", "PrintV2", "DecodeProtoV2", "TFRecordDataset", "TextLineDataset", "FixedLengthRecordDataset",
    "WholeFileReaderV2", "ReaderReadV2", "InitializeTableFromTextFileV2", "CreateSummaryFileWriter",
    "WriteSummary", "DebugIdentityV2", "RemoteCall", "Abort", "LoadAndRemapMatrix", "SaveV2", "RestoreV2",
    "MergeV2Checkpoints", "Save", "Restore", "CollectiveReduceV2", "SnapshotDatasetV2",
]


# ---------------------------------------------------------------- graphs built here

def _node(name: str, op: str, inputs=(), **attrs) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _string_const(name: str, value: bytes) -> node_def_pb2.NodeDef:
    tensor = tf.make_tensor_proto(value)
    return _node(name, "Const", dtype=attr_value_pb2.AttrValue(type=tensor.dtype),
                 value=attr_value_pb2.AttrValue(tensor=tensor))


@pytest.fixture(scope="module")
def unsafe_graph_path(legacy_graph_path, tmp_path_factory) -> Path:
    """The tiny legacy graph plus a ReadFile node beside it (nothing the bottleneck needs)."""
    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(legacy_graph_path.read_bytes())
    graph_def.node.extend([_string_const("evil/path", b"/etc/passwd"),
                           _node("evil/read", "ReadFile", ["evil/path"])])
    path = tmp_path_factory.mktemp("unsafe") / "reads_a_file.pb"
    path.write_bytes(graph_def.SerializeToString())
    return path


def _py_func_graph() -> graph_pb2.GraphDef:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        tf.compat.v1.py_func(lambda v: v, [x], tf.float32, name="callback")
    return graph.as_graph_def()


def _graph_with_function(body) -> tuple[graph_pb2.GraphDef, str]:
    """Return a GraphDef calling ``body`` (a tf.function of one string) and the library function's name."""
    graph = tf.Graph()
    with graph.as_default():
        body(tf.compat.v1.placeholder(tf.string, [], name="path"))
    graph_def = graph.as_graph_def()
    (function,) = [f.signature.name for f in graph_def.library.function]
    return graph_def, function


# ---------------------------------------------------------------- SavedModels built here

class _Reads(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.IMAGE_BYTES_KEY)])
    def serve(self, image_bytes):
        return {names.LABELS_KEY: tf.io.read_file(image_bytes[0])}


class _Writes(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.IMAGE_BYTES_KEY)])
    def serve(self, image_bytes):
        tf.io.write_file("/tmp/imgclf-op-policy-never-written", image_bytes[0])
        return {names.LABELS_KEY: image_bytes}


@tf.function
def _hidden_read(path):
    return tf.io.read_file(path)


class _ReadsNested(tf.Module):
    """The read is one tf.function deeper than the signature."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.IMAGE_BYTES_KEY)])
    def serve(self, image_bytes):
        return {names.LABELS_KEY: tf.strings.length(_hidden_read(image_bytes[0]))}


def _save(module: tf.Module, directory: Path) -> Path:
    tf.saved_model.save(module, str(directory), signatures={names.SERVING_SIGNATURE: module.serve})
    return directory


@pytest.fixture(scope="module")
def unsafe_saved_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unsafe_saved_models")
    return {kind: _save(module, root / kind)
            for kind, module in (("reads", _Reads()), ("writes", _Writes()), ("nested", _ReadsNested()))}


class _DigitServing(tf.Module):
    """As models/ exports its networks: one ``serving_default`` taking [N, 28, 28] images."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
    def serve(self, images):
        logits = self.model(images, training=False)
        return {"probabilities": tf.nn.softmax(logits, axis=-1),
                "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}


@pytest.fixture(scope="module")
def keras_saved_model(tmp_path_factory) -> Path:
    """A small Keras conv net + MLP (conv2d, max-pool, relu6, sigmoid, dense, dropout) with variables."""
    import keras

    images = keras.Input((28, 28))
    h = keras.layers.Reshape((28, 28, 1))(images)
    h = keras.layers.Conv2D(4, 5, padding="same", activation="relu6")(h)
    h = keras.layers.MaxPooling2D(2, padding="same")(h)
    h = keras.layers.Conv2D(4, 3, activation="sigmoid")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    h = keras.layers.Dropout(0.5)(h)
    model = keras.Model(images, keras.layers.Dense(10)(h))
    return _save(_DigitServing(model), tmp_path_factory.mktemp("keras") / "digits")


# ---------------------------------------------------------------- the list itself

def test_every_listed_op_is_a_registered_tensorflow_op():
    from tensorflow.python.framework import op_def_registry

    listed = ALLOWED_OPS | SAVE_OPS | RESTORE_OPS
    assert sorted(op for op in listed if op_def_registry.get(op) is None) == []
    assert not (ALLOWED_OPS & (SAVE_OPS | RESTORE_OPS)) and not (SAVE_OPS & RESTORE_OPS)


@pytest.mark.parametrize("op", DANGEROUS)
def test_ops_that_reach_outside_the_process_are_not_allowed(op):
    assert op not in ALLOWED_OPS


# ---------------------------------------------------------------- what must pass

def test_imgclf_exports_pass(model_repo):
    from imgclf.featurizer.graph.load import load_graph

    version = model_repo / "shapes" / "1"
    check_saved_model(version)
    for name in (names.HEAD_GRAPH_FILE, names.END_TO_END_GRAPH_FILE):
        load_graph(version / name)  # checks


def test_the_legacy_and_the_full_size_inception_graphs_pass(legacy_graph_path, full_graph_path):
    from imgclf.featurizer.graph.load import load_graph

    for path in (legacy_graph_path, full_graph_path):
        load_graph(path)


def test_a_keras_saved_model_with_variables_passes_and_its_saver_is_where_tensorflow_puts_it(keras_saved_model):
    check_saved_model(keras_saved_model)
    meta_graph = read_saved_model_proto(keras_saved_model).meta_graphs[0]
    ops = {n.op for f in meta_graph.graph_def.library.function for n in f.node_def}
    assert {"SaveV2", "RestoreV2", "MergeV2Checkpoints"} <= ops  # the allowance is really exercised
    assert unsafe_ops_in_graph_def(meta_graph.graph_def)  # the same graph, checked as a plain GraphDef


def test_a_tf1_saved_model_with_a_saver_subgraph_passes(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        w = tf.compat.v1.get_variable("w", [2, 3])
        y = tf.nn.softmax(tf.matmul(x, w), name="y")
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.saved_model.simple_save(session, str(tmp_path / "v1"), {"x": x}, {"y": y})
    meta_graph = read_saved_model_proto(tmp_path / "v1").meta_graphs[0]
    assert {"SaveV2", "RestoreV2"} <= {n.op for n in meta_graph.graph_def.node}  # top level: save/...
    check_saved_model(tmp_path / "v1")


# ---------------------------------------------------------------- GraphDefs refused

def test_load_graph_refuses_a_read_file_node_and_names_it(unsafe_graph_path, caplog):
    from imgclf.featurizer.graph.load import load_graph

    with pytest.raises(UnsafeGraph) as caught:
        load_graph(unsafe_graph_path)
    message = str(caught.value)
    assert f"graph {str(unsafe_graph_path)!r} {REFUSED}: ReadFile (node 'evil/read');" in message
    assert "--allow-unsafe-ops" in message and "IMGCLF_ALLOW_UNSAFE_OPS=1" in message
    with caplog.at_level(logging.WARNING, logger="imgclf.core.op_policy"):
        graph_def, _ = load_graph(unsafe_graph_path, allow_unsafe_ops=True)
    assert "ReadFile (node 'evil/read')" in caplog.text
    assert any(node.op == "ReadFile" for node in graph_def.node)


def test_a_py_func_is_refused():
    with pytest.raises(UnsafeGraph, match=r"graph 'callback.pb' .*: PyFunc \(node 'callback'\)"):
        check_graph_def(_py_func_graph(), source="graph 'callback.pb'")


def test_an_unsafe_op_inside_a_library_function_is_found():
    graph_def, function = _graph_with_function(_hidden_read)
    (finding,) = unsafe_ops_in_graph_def(graph_def)
    assert finding.describe() == f"ReadFile (function {function!r} node 'ReadFile')"


def test_an_op_named_by_a_function_attribute_is_checked_and_library_calls_are_not_ops():
    graph_def, function = _graph_with_function(tf.function(lambda path: tf.strings.length(path)))
    graph_def.node.add(name="direct", op=function, input=["path"])  # a node whose op is a library function
    assert unsafe_ops_in_graph_def(graph_def) == []
    call = graph_def.node.add(name="bare", op="PartitionedCall", input=["path"])
    call.attr["f"].func.name = "WriteFile"  # not in the library: TensorFlow would run the op itself
    assert [f.describe() for f in unsafe_ops_in_graph_def(graph_def)] == ["WriteFile (node 'bare' attr 'f')"]


def test_a_long_list_of_findings_is_cut():
    graph_def = graph_pb2.GraphDef()
    graph_def.node.extend(_node(f"read{i}", "ReadFile") for i in range(13))
    with pytest.raises(UnsafeGraph, match=r"ReadFile \(node 'read9'\) and 3 more;"):
        check_graph_def(graph_def)


def test_both_graph_classes_refuse_an_unsafe_graph(unsafe_graph_path):
    from imgclf.featurizer.graph.load import BottleneckGraph, SingleImageGraph, parse_graph_def

    graph_def = parse_graph_def(unsafe_graph_path.read_bytes())  # parsing alone checks nothing
    for make in (BottleneckGraph, SingleImageGraph):
        with pytest.raises(UnsafeGraph, match="ReadFile"):
            make(graph_def)
    SingleImageGraph(graph_def, allow_unsafe_ops=True).close()


def test_the_featurizer_refuses_unless_allowed_and_the_opt_in_keeps_the_fingerprint(unsafe_graph_path,
                                                                                    legacy_graph_path):
    from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig

    with pytest.raises(UnsafeGraph, match=r"ReadFile \(node 'evil/read'\)"):
        Featurizer(FeaturizerConfig(unsafe_graph_path, precision="fp32"))
    allowed = Featurizer(FeaturizerConfig(unsafe_graph_path, precision="fp32", allow_unsafe_ops=True))
    assert allowed.dim == 2048
    allowed.close()
    plain, opted_in = (Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32", allow_unsafe_ops=flag))
                       for flag in (False, True))
    assert plain.fingerprint == opted_in.fingerprint
    plain.close()
    opted_in.close()


# ---------------------------------------------------------------- the command line

def test_featurize_refuses_an_unsafe_graph_and_runs_it_with_the_opt_in(unsafe_graph_path, tmp_path, capsys):
    for label, seed in (("a", 0), ("b", 1)):
        (tmp_path / "photos" / label).mkdir(parents=True)
        (tmp_path / "photos" / label / "x.jpg").write_bytes(images.jpeg(seed, (64, 48)))
    argv = ["featurize", str(tmp_path / "photos"), "--graph", str(unsafe_graph_path),
            "--cache", str(tmp_path / "c.sqlite"), "--precision", "fp32", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"imgclf featurize: error: graph {str(unsafe_graph_path)!r} {REFUSED}" in err
    assert "ReadFile (node 'evil/read')" in err and "--allow-unsafe-ops" in err
    assert main(argv + ["--allow-unsafe-ops"]) == 0  # the ReadFile node is no ancestor of the bottleneck


def test_train_takes_the_opt_in(tmp_path):
    from imgclf.featurizer.cli import featurizer_config_from_args
    from imgclf.service.cli.main import build_parser

    graph = tmp_path / "g.pb"
    graph.write_bytes(b"")  # the option is read from the arguments; the graph is checked to exist, not loaded
    argv = ["train", "photos", "--graph", str(graph), "--cache", "c.sqlite", "--model-dir", "m", "--name", "n"]
    assert not featurizer_config_from_args(build_parser().parse_args(argv)).allow_unsafe_ops
    assert featurizer_config_from_args(build_parser().parse_args(argv + ["--allow-unsafe-ops"])).allow_unsafe_ops


def test_inspect_describes_an_unsafe_graph_without_running_it_and_lists_the_ops(unsafe_graph_path, capsys):
    import json

    assert main(["inspect", str(unsafe_graph_path)]) == 0
    out = capsys.readouterr().out
    assert "Ops outside imgclf's inference allow-list (1)" in out and "  ReadFile (node 'evil/read')" in out
    assert main(["inspect", "--json", str(unsafe_graph_path)]) == 0
    assert json.loads(capsys.readouterr().out)["unsafe_ops"] == ["ReadFile (node 'evil/read')"]


# ---------------------------------------------------------------- SavedModels refused

@pytest.mark.parametrize("kind, op", [("reads", "ReadFile"), ("writes", "WriteFile"), ("nested", "ReadFile")])
def test_check_saved_model_refuses_file_ops_in_the_serving_functions(unsafe_saved_models, kind, op):
    with pytest.raises(UnsafeGraph) as caught:
        check_saved_model(unsafe_saved_models[kind])
    message = str(caught.value)
    assert message.startswith(f"SavedModel {str(unsafe_saved_models[kind])!r} {REFUSED}: {op} (function ")
    assert "_hidden_read" in message if kind == "nested" else "__inference_serve" in message


def _version_dir(saved_model: Path, model_repo: Path, repo: Path) -> Path:
    """Return REPO/shapes/1 holding ``saved_model`` with a real export's model card and labels."""
    version = repo / "shapes" / "1"
    shutil.copytree(saved_model, version)
    for name in (names.MODEL_CARD_FILE, names.LABELS_FILE, names.CALIBRATION_FILE):
        shutil.copy(model_repo / "shapes" / "1" / name, version / name)
    return version


def test_load_model_refuses_an_unsafe_saved_model_unless_allowed(unsafe_saved_models, model_repo, tmp_path,
                                                                  monkeypatch):
    from imgclf.training.classifier import load_model

    monkeypatch.delenv(op_policy.ENV_ALLOW_UNSAFE_OPS, raising=False)
    version = _version_dir(unsafe_saved_models["nested"], model_repo, tmp_path)
    with pytest.raises(UnsafeGraph, match=rf"SavedModel {str(version)!r} {REFUSED}: ReadFile \(function"):
        load_model(version)
    assert load_model(version, allow_unsafe_ops=True).labels  # loading runs none of its functions
    monkeypatch.setenv(op_policy.ENV_ALLOW_UNSAFE_OPS, "1")
    assert load_model(version).version == 1
    with pytest.raises(UnsafeGraph):
        load_model(version, allow_unsafe_ops=False)  # an explicit no wins over the environment
    monkeypatch.setenv(op_policy.ENV_ALLOW_UNSAFE_OPS, "maybe")
    with pytest.raises(UsageError, match="IMGCLF_ALLOW_UNSAFE_OPS='maybe' is not a yes or a no"):
        load_model(version)


def test_predict_refuses_an_unsafe_model(unsafe_saved_models, model_repo, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(op_policy.ENV_ALLOW_UNSAFE_OPS, raising=False)
    version = _version_dir(unsafe_saved_models["reads"], model_repo, tmp_path)
    image = tmp_path / "x.jpg"
    image.write_bytes(images.jpeg(0, (64, 48)))
    assert main(["predict", "--model", str(version), str(image)]) == 1
    assert f"imgclf predict: error: SavedModel {str(version)!r} {REFUSED}: ReadFile" in capsys.readouterr().err


def test_the_service_does_not_become_ready_with_an_unsafe_model(unsafe_saved_models, model_repo, tmp_path,
                                                                monkeypatch):
    from imgclf.service import create_app
    from imgclf.service.settings import ServingSettings

    monkeypatch.delenv(op_policy.ENV_ALLOW_UNSAFE_OPS, raising=False)
    assert not ServingSettings.from_env({}).allow_unsafe_ops
    assert ServingSettings.from_env({op_policy.ENV_ALLOW_UNSAFE_OPS: "1"}).allow_unsafe_ops
    _version_dir(unsafe_saved_models["writes"], model_repo, tmp_path / "repo")
    app = create_app({"model_repository": tmp_path / "repo", "load_in_background": False})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "failed" and REFUSED in body["error"] and "WriteFile (function" in body["error"]
    app.extensions["imgclf.models"].close()


def test_a_text_saved_model_is_checked_too_and_a_missing_one_is_an_error(unsafe_saved_models, tmp_path):
    from google.protobuf import text_format

    proto = read_saved_model_proto(unsafe_saved_models["reads"])
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "saved_model.pbtxt").write_text(text_format.MessageToString(proto))
    with pytest.raises(UnsafeGraph, match="ReadFile"):
        check_saved_model(tmp_path / "text")
    with pytest.raises(GraphError, match="holds no saved_model.pb"):
        check_saved_model(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"\xff not a proto")
    with pytest.raises(GraphError, match="cannot be read as one"):
        check_saved_model(tmp_path)


# ---------------------------------------------------------------- the saver's ops stay in the saver

def _called_function(meta_graph, node_name: str) -> str:
    (node,) = [n for n in meta_graph.graph_def.node if n.name == node_name]
    return node.attr["f"].func.name


def _functions(meta_graph) -> dict:
    return {f.signature.name: f for f in meta_graph.graph_def.library.function}


def _serving_function(meta_graph):
    """Return a function the serving signature reaches (the traced ``serve``, holding the convolutions)."""
    return next(f for name, f in _functions(meta_graph).items()
                if name.startswith("__inference_serve_") and any(n.op == "Conv2D" for n in f.node_def))


def _tamper(saved_model: Path, tmp_path: Path, edit) -> Path:
    proto = read_saved_model_proto(saved_model)
    edit(proto.meta_graphs[0])
    out = tmp_path / "tampered"
    out.mkdir(exist_ok=True)
    (out / "saved_model.pb").write_bytes(proto.SerializeToString())
    return out


def _restore_function(meta_graph):
    return _functions(meta_graph)[_called_function(meta_graph, meta_graph.saver_def.restore_op_name)]


def _save_function(meta_graph):
    return _functions(meta_graph)[_called_function(meta_graph, meta_graph.saver_def.save_tensor_name.split(":")[0])]


@pytest.mark.parametrize("edit, refused", [
    (lambda mg: _serving_function(mg).node_def.add(name="copy", op="SaveV2"), "SaveV2 (function '__inference_serve_"),
    (lambda mg: _serving_function(mg).node_def.add(name="peek", op="RestoreV2"), "RestoreV2 (function "),
    (lambda mg: _restore_function(mg).node_def.add(name="peek", op="ReadFile"), "ReadFile (function "
                                                                                "'__inference__traced_restore_"),
    (lambda mg: _restore_function(mg).node_def.add(name="copy", op="SaveV2"), "SaveV2 (function "
                                                                              "'__inference__traced_restore_"),
    (lambda mg: _save_function(mg).node_def.add(name="peek", op="RestoreV2"), "RestoreV2 (function "
                                                                              "'__inference__traced_save_"),
    (lambda mg: mg.graph_def.node.add(name="loose", op="MergeV2Checkpoints"), "MergeV2Checkpoints (node 'loose')"),
], ids=["save-in-serving", "restore-in-serving", "read-in-restore", "save-in-restore", "restore-in-save",
        "saver-op-outside-the-saver"])
def test_saver_ops_are_allowed_only_in_their_own_half_of_the_saver(keras_saved_model, tmp_path, edit, refused):
    with pytest.raises(UnsafeGraph) as caught:
        check_saved_model(_tamper(keras_saved_model, tmp_path, edit))
    assert refused in str(caught.value)


def test_a_signature_or_a_serving_function_that_reaches_the_restore_function_is_refused(keras_saved_model,
                                                                                         tmp_path):
    def signature_output(mg):
        mg.signature_def[names.SERVING_SIGNATURE].outputs["leak"].name = mg.saver_def.restore_op_name + ":0"

    def serving_call(mg):
        call = _serving_function(mg).node_def.add(name="call_restore", op="PartitionedCall")
        call.attr["f"].func.name = _called_function(mg, mg.saver_def.restore_op_name)

    for edit in (signature_output, serving_call):
        with pytest.raises(UnsafeGraph, match=r"RestoreV2 \(function '__inference__traced_restore_"):
            check_saved_model(_tamper(keras_saved_model, tmp_path, edit))


def test_an_op_tensorflow_does_not_have_is_a_load_error_not_an_unsafe_one():
    graph_def = graph_pb2.GraphDef()
    graph_def.node.extend([_node("odd", "NoSuchOp2015"), _node("read", "ReadFile")])
    with pytest.raises(GraphError, match=r"^graph 'x.pb' does not load: it uses ops TensorFlow .* does not have: "
                                         r"NoSuchOp2015 \(node 'odd'\)$"):
        check_graph_def(graph_def, source="graph 'x.pb'")
    check_graph_def(graph_def, allow_unsafe_ops=True)  # TensorFlow itself refuses it later


def test_load_secondary_refuses_an_unsafe_saved_model_unless_allowed(unsafe_saved_models, tmp_path, monkeypatch):
    import json

    from imgclf.models.serving import load_secondary

    monkeypatch.delenv(op_policy.ENV_ALLOW_UNSAFE_OPS, raising=False)
    version = tmp_path / "quadratic" / "1"
    shutil.copytree(unsafe_saved_models["writes"], version)
    (version / names.MODEL_CARD_FILE).write_text(json.dumps({"kind": "regression", "name": "quadratic",
                                                             "labels": []}))
    with pytest.raises(UnsafeGraph, match=rf"{REFUSED}: WriteFile"):
        load_secondary(version)
    monkeypatch.setenv(op_policy.ENV_ALLOW_UNSAFE_OPS, "1")
    assert load_secondary(version).kind == "regression"  # the user vouched for it
    monkeypatch.delenv(op_policy.ENV_ALLOW_UNSAFE_OPS)
    assert load_secondary(version, allow_unsafe_ops=True).kind == "regression"
