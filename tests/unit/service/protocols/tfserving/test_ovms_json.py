"""OpenVINO Model Server's spelling of the metadata answer, checked against protobuf's own JSON printer.

The reference parses TF Serving's snake_case dict into TensorFlow's
``SignatureDef`` message and prints it back with ``MessageToDict`` (protobuf's
JSON names), so the expected camelCase comes from protobuf, not from us.
"""

import copy

import pytest
from google.protobuf import json_format
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from imgclf.service.protocols.tfserving.ovms_json import json_name, signature_def_map, with_json_names

SIGNATURES = {
    "serving_default": {
        "inputs": {"image_bytes": {"dtype": "DT_STRING", "name": "serving_default_image_bytes:0",
                                   "tensor_shape": {"dim": [{"size": "-1"}]}}},
        "outputs": {"probabilities": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"},
                                                                                    {"size": "4", "name": "k"}]}},
                    "rank_unknown": {"dtype": "DT_INT64", "tensor_shape": {"unknown_rank": True}}},
        "method_name": "tensorflow/serving/predict"},
    "bottleneck": {
        "inputs": {"bottleneck": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "2048"}]}}},
        "outputs": {"labels": {"dtype": "DT_STRING", "tensor_shape": {"dim": [{"size": "-1"}]}}},
        "method_name": "tensorflow/serving/predict"},
}


@pytest.mark.parametrize("message, field", [
    (meta_graph_pb2.TensorInfo, "tensor_shape"), (meta_graph_pb2.TensorInfo, "dtype"),
    (meta_graph_pb2.SignatureDef, "method_name"), (tensor_shape_pb2.TensorShapeProto, "unknown_rank")])
def test_json_name_is_protobufs(message, field):
    assert json_name(field) == message.DESCRIPTOR.fields_by_name[field].json_name


def test_json_name_of_tf_servings_model_spec_fields():
    assert [json_name(f) for f in ("model_spec", "signature_name", "version")] == ["modelSpec", "signatureName",
                                                                                    "version"]


def test_signature_defs_equal_protobufs_json_printing():
    converted = signature_def_map(SIGNATURES)
    assert set(converted) == set(SIGNATURES)  # signature names are kept
    for name, definition in SIGNATURES.items():
        message = json_format.ParseDict(definition, meta_graph_pb2.SignatureDef())
        assert converted[name] == json_format.MessageToDict(message), name
        # and protobuf reads the converted form back to the same message
        assert json_format.ParseDict(converted[name], meta_graph_pb2.SignatureDef()) == message


def test_with_json_names_keeps_tf_servings_spelling():
    body = {"model_spec": {"name": "shapes", "signature_name": "", "version": "3"},
            "metadata": {"signature_def": {"signature_def": copy.deepcopy(SIGNATURES)}}, "labels": ["a"]}
    original = copy.deepcopy(body)
    out = with_json_names(body)
    assert out["modelSpec"] == {"name": "shapes", "signatureName": "", "version": "3"}
    assert out["metadata"]["signature_def"]["signatureDef"] == signature_def_map(SIGNATURES)
    # everything TF Serving's clients read is still there, unchanged
    assert out["model_spec"] == original["model_spec"] and out["labels"] == original["labels"]
    assert out["metadata"]["signature_def"]["signature_def"] == SIGNATURES
