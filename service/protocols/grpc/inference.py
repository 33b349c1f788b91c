"""The Open Inference Protocol's (KServe v2) gRPC API over the data plane: GRPCInferenceService.

The v2 REST routes' model adapter (:mod:`imgclf.service.protocols.v2.model`)
decides what each model takes and answers, and checks a request's input with
the same messages; this module only moves tensors between protobuf and it.
An input's values come from its typed ``contents`` or from
``raw_input_contents`` (one entry per input, the binary extension's layout:
little-endian numbers, BYTES elements each after a 4-byte length). Outputs
are answered in ``raw_output_contents``, as Triton answers them.
"""

from __future__ import annotations

import re

import numpy as np

from imgclf.core.errors import BadRequest, NotReady
from imgclf.core.version import package_version
from imgclf.service.dataplane.plane import THRESHOLD_PARAMETER, DataPlane
from imgclf.service.protocols.grpc.messages import message
from imgclf.service.protocols.v2 import model as v2_model
from imgclf.service.protocols.v2.tensors import NUMPY_DTYPES, InputTensor, RequestedOutput, bytes_blob, from_binary
from imgclf.service.server import worker_states

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "imgclf"
EXTENSIONS = ["binary_tensor_data"]
_VERSION = re.compile(r"[0-9]{1,18}")
# The protocol's datatypes -> the InferTensorContents field holding them.
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _version(version: str) -> int | None:
    """Return a request's version string as an integer, None for "" or "0" (the default version)."""
    if version and not _VERSION.fullmatch(version):
        raise BadRequest(f"model version must be a non-negative integer (at most 18 digits); received {version!r}")
    return int(version or 0) or None


class Inference:
    """The handlers of GRPCInferenceService for one worker's data plane."""

    def __init__(self, plane: DataPlane):
        self.plane = plane

    def handlers(self) -> dict[str, dict]:
        """Return {service: {method: handler(request, context)}}."""
        return {SERVICE: {"ServerLive": self.server_live, "ServerReady": self.server_ready,
                          "ModelReady": self.model_ready, "ServerMetadata": self.server_metadata,
                          "ModelMetadata": self.model_metadata, "ModelInfer": self.model_infer}}

    def server_live(self, request, context):
        """Answer live while the process is, loading included."""
        return message("inference.ServerLiveResponse")(live=True)

    def server_ready(self, request, context):
        """Answer whether every worker has its models loaded and warmed up (as /readyz)."""
        models = self.plane.models
        return message("inference.ServerReadyResponse")(
            ready=worker_states.server_readiness(models.state, models.error).ready)

    def model_ready(self, request, context):
        """Answer whether the model (version) is loaded and serving: false for an unknown or loading one."""
        try:
            self.plane.models.get(request.name, _version(request.version))
        except (LookupError, NotReady, BadRequest):
            return message("inference.ModelReadyResponse")(ready=False)
        return message("inference.ModelReadyResponse")(ready=True)

    def server_metadata(self, request, context):
        """Answer the server's name, version and protocol extensions."""
        return message("inference.ServerMetadataResponse")(name=SERVER_NAME, version=package_version(),
                                                           extensions=EXTENSIONS)

    def model_metadata(self, request, context):
        """Answer the model's versions, platform, inputs and outputs (datatype and shape)."""
        models = self.plane.models
        served = models.get(request.name, _version(request.version))
        body = v2_model.model_metadata(served)
        if not request.version:  # every version this worker serves
            body["versions"] = [str(v) for v in models.available_versions(served.name)] or body["versions"]
        return message("inference.ModelMetadataResponse")(**body)

    def model_infer(self, request, context):
        """Predict one input tensor; answer the outputs asked for (all by default) in raw_output_contents."""
        with self.plane.model(request.model_name, _version(request.model_version)) as served:
            inputs = _inputs(request)
            requested = [RequestedOutput(item.name) for item in request.outputs] or None
            inference = v2_model.inference_request(self.plane, served, inputs, requested,
                                                   _parameter(request, THRESHOLD_PARAMETER))
            outputs = self.plane.infer(served, inference).outputs
            reply = message("inference.ModelInferResponse")(model_name=served.name, model_version=str(served.version),
                                                            id=request.id)
            for name, datatype, values, _ in v2_model.encode_outputs(served, outputs, requested, True):
                shape = [len(values)] if datatype == "BYTES" else list(np.shape(values))
                reply.outputs.add(name=name, datatype=datatype, shape=shape)
                reply.raw_output_contents.append(
                    bytes_blob(values) if datatype == "BYTES"
                    else np.ascontiguousarray(values, NUMPY_DTYPES[datatype]).tobytes())
            return reply


def _parameter(request, name: str):
    """Return the value of the request's ``parameters[name]`` (whichever of its oneof is set), or None."""
    if name not in request.parameters:
        return None
    given = request.parameters[name]
    choice = given.WhichOneof("parameter_choice")
    return getattr(given, choice) if choice else None


def _inputs(request) -> list[InputTensor]:
    """Return a request's input tensors with their flat values (typed contents, or raw_input_contents).

    Raises:
        BadRequest: raw contents beside typed ones or not one per input, a negative dimension, or values that do
            not fill the shape.
    """
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs; "
                         f"send one per input, in order")
    tensors = []
    for index, given in enumerate(request.inputs):
        shape = [int(size) for size in given.shape]
        where = f"input {given.name[:60]!r}"
        if any(size < 0 for size in shape):
            raise BadRequest(f"{where} has a shape with a negative dimension: {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        if raw:
            if given.HasField("contents"):
                raise BadRequest(f"{where} has contents beside raw_input_contents; send one or the other")
            values = from_binary(raw[index], given.datatype, count, where)
        else:
            field = CONTENTS.get(given.datatype)
            if field is None:
                raise BadRequest(f"{where}: datatype {given.datatype[:20]!r} has no contents field; send one of "
                                 f"{', '.join(sorted(CONTENTS))}")
            values = getattr(given.contents, field)
            if len(values) != count:
                raise BadRequest(f"{where}: the shape {shape} holds {count} elements; its contents hold {len(values)}")
            values = list(values) if given.datatype == "BYTES" else np.asarray(values, NUMPY_DTYPES[given.datatype])
        tensors.append(InputTensor(given.name, given.datatype, shape, values))
    return tensors
