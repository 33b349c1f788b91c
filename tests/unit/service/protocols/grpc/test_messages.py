"""imgclf's gRPC messages: the committed descriptor set is what protoc makes of the .proto files, and every
message, field and enum value has the name and number of the published definitions (TensorFlow's own
descriptors, tritonclient's for the Open Inference Protocol; TF Serving's are checked in tests/system/test_grpc.py
against the tensorflow-serving-api stubs, which this test environment installs on demand)."""

from __future__ import annotations

import pytest

from imgclf.service.protocols.grpc import messages
from tests.support.proto_descriptors import check_file


def test_the_committed_descriptor_set_is_compiled_from_the_proto_files():
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a test extra")
    assert messages.compile_descriptors() == messages.DESCRIPTORS.read_bytes(), (
        "protos/*.proto changed: run python -m imgclf.service.protocols.grpc.messages")


def test_open_inference_protocol_messages_match_tritonclients():
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2", reason="tritonclient is a test extra")
    check_file("inference.proto", {m.full_name: m for m in service_pb2.DESCRIPTOR.message_types_by_name.values()})
    ours = messages.service("inference.GRPCInferenceService")
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        assert method.input_type.full_name == theirs.methods_by_name[method.name].input_type.full_name


def test_tensorflow_messages_match_tensorflows_own():
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2

    published = {}
    for module in (example_pb2, feature_pb2, tensor_pb2, tensor_shape_pb2, types_pb2, meta_graph_pb2):
        published.update({m.full_name: m for m in module.DESCRIPTOR.message_types_by_name.values()})
        published.update({e.full_name: e for e in module.DESCRIPTOR.enum_types_by_name.values()})
    check_file("tensorflow.proto", published)
    codes = error_codes_pb2.DESCRIPTOR.dependencies[0]  # xla/tsl/protobuf/error_codes.proto: tensorflow.error.Code
    check_file("error_codes.proto", {e.full_name: e for e in codes.enum_types_by_name.values()})
