"""A servable as the Open Inference Protocol (KServe v2) sees it: named input and output tensors.

Everything is derived from the servable's own signatures, so each kind of
model speaks v2 without a line of its own: an image classifier takes
``image_bytes`` (BYTES, one encoded image per batch entry) or ``bottleneck``
(FP32 [N, D]), a digit classifier ``images`` (FP32 [N, 28, 28]), the
regression ``x`` (FP32 [N, 1]). The input a request names picks the
signature; the data plane decodes and checks the values as it does for the
other protocols, so every protocol refuses the same inputs with the same
messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgclf.core.errors import BadRequest, InvalidImage
from imgclf.service.dataplane.plane import DataPlane, InferenceRequest
from imgclf.service.protocols.b64 import decode_b64
from imgclf.service.protocols.v2.tensors import NUMPY_DTYPES, InputTensor, RequestedOutput, elements, nest
from imgclf.service.servables.base import Servable, TensorSpec

PLATFORM = "tensorflow_savedmodel"  # what every export is; Triton's name for it
# The servables' dtypes -> v2 datatypes.
DATATYPES = {"float32": "FP32", "int64": "INT64", "bool": "BOOL", "string": "BYTES"}


@dataclass(frozen=True)
class V2Spec:
    """One input or output as v2 metadata describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    signature: str  # the servable's signature it belongs to

    def metadata(self) -> dict:
        """Return the tensor's entry of the model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(spec: TensorSpec, signature: str) -> V2Spec:
    return V2Spec(spec.name, DATATYPES.get(spec.dtype, "FP32"), spec.shape, signature)


def input_specs(served: Servable) -> dict[str, V2Spec]:
    """Return the inputs ``served`` takes over v2, by name (first signature wins); a request sends one of them."""
    specs: dict[str, V2Spec] = {}
    for name, signature in served.signatures().items():
        specs.setdefault(signature.input.name, _spec(signature.input, name))
    return specs


def output_specs(served: Servable) -> dict[str, V2Spec]:
    """Return the outputs ``served`` answers over v2, by name (first signature wins)."""
    specs: dict[str, V2Spec] = {}
    for name, signature in served.signatures().items():
        for output in signature.outputs:
            specs.setdefault(output.name, _spec(output, name))
    return specs


def model_metadata(served: Servable) -> dict:
    """Return the v2 model metadata of ``served``: name, versions, platform, inputs and outputs."""
    return {"name": served.name, "versions": [str(served.version)], "platform": PLATFORM,
            "inputs": [spec.metadata() for spec in input_specs(served).values()],
            "outputs": [spec.metadata() for spec in output_specs(served).values()]}


def inference_request(plane: DataPlane, served: Servable, inputs: list[InputTensor],
                      requested: list[RequestedOutput] | None, unfamiliar_threshold=None) -> InferenceRequest:
    """Return the data plane's request for a v2 request's one input, checked before any element is read.

    ``unfamiliar_threshold``: the request's ``parameters`` entry, as received (the data plane checks it).

    Raises:
        BadRequest: not exactly one input, an input the model does not take, a wrong datatype or shape,
            a batch over the instance limit, or a BYTES element that is not base64 (naming the instance).
    """
    specs = input_specs(served)
    expected = ", ".join(f"{s.name} ({s.datatype})" for s in specs.values())
    if len(inputs) != 1:
        raise BadRequest(f"model {served.name!r} takes one input tensor, one of {expected}; "
                         f"received {len(inputs)}")
    tensor = inputs[0]
    spec = specs.get(tensor.name)
    if spec is None:
        raise BadRequest(f"model {served.name!r} has no input {tensor.name[:60]!r}; its inputs: {expected}")
    if tensor.datatype != spec.datatype:
        raise BadRequest(f"input {spec.name!r} must be of datatype {spec.datatype}; received {tensor.datatype[:20]!r}")
    if not tensor.shape or tensor.shape[0] < 1:
        raise BadRequest(f"input {spec.name!r}: the shape's first dimension is the batch and must be at least 1; "
                         f"received shape {tensor.shape}")
    where = f"input {spec.name!r}"
    plane.check_count(tensor.shape[0], where)  # before a single element is looked at
    per_entry = elements(spec.shape[1:])  # negative when a dimension is free
    if per_entry >= 0 and elements(tensor.shape[1:]) != per_entry:
        raise BadRequest(f"input {spec.name!r} takes {per_entry} element(s) per batch entry "
                         f"(shape {list(spec.shape)}, -1: the batch); received shape {tensor.shape}")
    if spec.datatype == "BYTES":
        instances = [_picture(value, index) for index, value in enumerate(tensor.values)]
    else:
        values = tensor.values.tolist() if isinstance(tensor.values, np.ndarray) else tensor.values
        instances = nest(values, tensor.shape)
    outputs = [item.name for item in requested] if requested is not None else None
    return InferenceRequest(instances, spec.signature, outputs, where, unfamiliar_threshold=unfamiliar_threshold)


def _picture(value, index: int) -> bytes:
    """Return the bytes of one BYTES element: raw image bytes (binary data) or a base64 string (JSON)."""
    try:
        if isinstance(value, str):
            return decode_b64(value)
        if not isinstance(value, bytes):
            raise BadRequest(f"a BYTES element in JSON must be a string of base64; received {type(value).__name__}")
        return value
    except (BadRequest, InvalidImage) as exc:  # same error class (same status), naming the instance
        raise type(exc)(f"instance {index}: {exc}") from exc


def encode_outputs(served: Servable, outputs: dict[str, np.ndarray], requested: list[RequestedOutput] | None,
                   binary: bool) -> list[tuple[str, str, object, bool]]:
    """Return (name, datatype, values, binary) of each output the data plane answered, in its order."""
    specs = output_specs(served)
    flags = {item.name: item.binary for item in requested or ()}
    encoded = []
    for name, values in outputs.items():
        spec = specs.get(name)
        datatype = spec.datatype if spec is not None else "FP32"
        values = values.tolist() if datatype == "BYTES" else np.asarray(values, NUMPY_DTYPES[datatype])
        flag = flags.get(name)
        encoded.append((name, datatype, values, binary if flag is None else flag))
    return encoded
