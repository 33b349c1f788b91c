"""A servable as the Open Inference Protocol (KServe v2) sees it: named input and output tensors.

Everything is derived from the servable's own signature defs (TF Serving's
shape), so each kind of model speaks v2 without a line of its own: an image
classifier takes ``image_bytes`` (BYTES, one encoded image per batch entry) or
``bottleneck`` (FP32 [N, D]), a digit classifier ``images`` (FP32 [N, 28, 28]),
the regression ``x`` (FP32 [N, 1]). The input a request names picks the
signature; the servable decodes and checks the values as it does for the TF
Serving route, so both routes refuse the same inputs with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgclf.core.errors import InvalidImage
from imgclf.service.dataplane.errors import BadRequest
from imgclf.service.protocols.predict.request import decode_b64
from imgclf.service.protocols.v2.tensors import (
    FROM_TF_DTYPE,
    NUMPY_DTYPES,
    InputTensor,
    RequestedOutput,
    elements,
    nest,
)
from imgclf.service.servables.base import Servable

PLATFORM = "tensorflow_savedmodel"  # what every export is; Triton's name for it


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as v2 metadata describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    signature: str  # the servable's signature it belongs to

    def metadata(self) -> dict:
        """Return the tensor's entry of the model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _specs(served: Servable, side: str) -> dict[str, TensorSpec]:
    """Return the inputs or outputs (``side``) of every signature of ``served``, by name (first signature wins)."""
    specs: dict[str, TensorSpec] = {}
    for signature, definition in served.signature_defs().items():
        for name, info in definition[side].items():
            shape = tuple(int(d["size"]) for d in info["tensor_shape"]["dim"])
            specs.setdefault(name, TensorSpec(name, FROM_TF_DTYPE.get(info["dtype"], "FP32"), shape, signature))
    return specs


def input_specs(served: Servable) -> dict[str, TensorSpec]:
    """Return the inputs ``served`` takes over v2, by name; a request sends exactly one of them."""
    return _specs(served, "inputs")


def output_specs(served: Servable) -> dict[str, TensorSpec]:
    """Return the outputs ``served`` answers over v2, by name."""
    return _specs(served, "outputs")


def model_metadata(served: Servable) -> dict:
    """Return the v2 model metadata of ``served``: name, versions, platform, inputs and outputs."""
    return {"name": served.name, "versions": [str(served.version)], "platform": PLATFORM,
            "inputs": [spec.metadata() for spec in input_specs(served).values()],
            "outputs": [spec.metadata() for spec in output_specs(served).values()]}


def decode_inputs(served: Servable, inputs: list[InputTensor], max_instances: int) -> tuple[str, np.ndarray]:
    """Return the signature a request's one input names and its decoded batch.

    Raises:
        BadRequest: not exactly one input, an input the model does not take, a wrong datatype or shape,
            a batch over ``max_instances``, or values the servable refuses (the message names the instance).
        InvalidImage and its kinds (400, 413, 415): an image that cannot be served.
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
    count = tensor.shape[0]
    if count > max_instances:
        raise BadRequest(f"input {spec.name!r} holds a batch of {count}; at most {max_instances} are allowed "
                         "per request")
    per_entry = elements(spec.shape[1:])  # negative when a dimension is free
    if per_entry >= 0 and elements(tensor.shape[1:]) != per_entry:
        raise BadRequest(f"input {spec.name!r} takes {per_entry} element(s) per batch entry "
                         f"(shape {list(spec.shape)}, -1: the batch); received shape {tensor.shape}")
    if spec.datatype == "BYTES":
        return spec.signature, np.stack([_image(served, value, index) for index, value in enumerate(tensor.values)])
    values = tensor.values.tolist() if isinstance(tensor.values, np.ndarray) else tensor.values
    return spec.signature, served.decode_batch(nest(values, tensor.shape), spec.signature)


def _image(served: Servable, value, index: int) -> np.ndarray:
    """Return the model input of one BYTES element: raw image bytes (binary data) or a base64 string (JSON)."""
    try:
        if isinstance(value, str):
            value = decode_b64(value)
        elif not isinstance(value, bytes):
            raise BadRequest(f"a BYTES element in JSON must be a string of base64; received {type(value).__name__}")
        return served.decode_image(value)[1]
    except (BadRequest, InvalidImage) as exc:  # same error class (same status), naming the instance
        raise type(exc)(f"instance {index}: {exc}") from exc


def encode_outputs(served: Servable, signature: str, outputs: dict[str, list],
                   requested: list[RequestedOutput] | None, binary: bool) -> list[tuple[str, str, object, bool]]:
    """Return (name, datatype, values, binary) of the outputs a request asked for (all when ``requested`` is None).

    Raises:
        BadRequest: a requested output the model does not answer.
    """
    specs = output_specs(served)
    wanted = requested if requested is not None else [RequestedOutput(name) for name in outputs]
    for item in wanted:
        if item.name not in outputs:
            raise BadRequest(f"model {served.name!r} has no output {item.name[:60]!r}; its outputs: "
                             f"{', '.join(outputs)}")
    encoded = []
    for item in wanted:
        spec = specs.get(item.name)
        datatype = spec.datatype if spec is not None else "FP32"
        values = outputs[item.name]
        if datatype != "BYTES":
            values = np.asarray(values, NUMPY_DTYPES[datatype])
        encoded.append((item.name, datatype, values, binary if item.binary is None else item.binary))
    return encoded
