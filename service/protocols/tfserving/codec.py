"""TF Serving's REST wire format: signature defs in its metadata shape, request instances, row and column answers.

A request is row format ``{"instances": [...]}`` or columnar format
``{"inputs": ...}``, either of them with the input's name or without; a picture
is ``{"b64": "..."}``. This module turns such a body into the data plane's
instances (a picture becomes its bytes) and the data plane's outputs back into
``predictions`` or ``outputs``.
"""

from __future__ import annotations

import numpy as np

from imgclf.core.errors import BadRequest, InvalidImage
from imgclf.core.values import describe
from imgclf.service.protocols.b64 import B64_FIELD, decode_b64
from imgclf.service.servables.base import Servable, Signature, TensorSpec

METHOD_NAME = "tensorflow/serving/predict"
# The servables' dtypes -> TF Serving's dtype names.
DTYPES = {"float32": "DT_FLOAT", "int64": "DT_INT64", "bool": "DT_BOOL", "string": "DT_STRING"}


def tensor_def(spec: TensorSpec) -> dict:
    """Describe one tensor as TF Serving's metadata does (dtype names, -1 for any size)."""
    return {"dtype": DTYPES.get(spec.dtype, "DT_FLOAT"),
            "tensor_shape": {"dim": [{"size": str(int(s)), "name": ""} for s in spec.shape], "unknown_rank": False}}


def signature_def(signature: Signature) -> dict:
    """Return one signature in TF Serving's metadata shape."""
    return {"inputs": {signature.input.name: tensor_def(signature.input)},
            "outputs": {spec.name: tensor_def(spec) for spec in signature.outputs},
            "method_name": METHOD_NAME}


def signature_defs(served: Servable) -> dict:
    """Return every signature of ``served`` in TF Serving's metadata shape, by name."""
    return {name: signature_def(signature) for name, signature in served.signatures().items()}


def instances(body: dict, signature: Signature) -> tuple[list, str]:
    """Return the instances of a predict body (pictures as bytes) and how messages name them.

    Raises:
        BadRequest: neither or both of "instances" and "inputs", a wrong input name, not a non-empty list,
            or a picture whose base64 is bad (naming the instance).
    """
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest('the request must hold exactly one of "instances" (row format) or "inputs" '
                         f"(columnar format); received keys {sorted(body)}")
    row_format = "instances" in body
    where = "instances" if row_format else "inputs"
    value, key = body[where], signature.input.name
    if not row_format and isinstance(value, dict):  # columnar, named: {"image_bytes": [...]}
        if set(value) != {key}:
            raise BadRequest(f'"inputs" must name the one input {key!r}; received {sorted(value)}')
        value = value[key]
    if not isinstance(value, list) or not value:
        raise BadRequest(f'"{where}" must be a non-empty list; received {describe(value)}')
    if row_format:  # row format, named: [{"image_bytes": {"b64": ...}}, ...]
        value = [item[key] if isinstance(item, dict) and set(item) == {key} else item for item in value]
    return value, f'"{where}"'


def pictures_decoded(items: list, served: Servable) -> list:
    """Return ``items`` with each ``{"b64": ...}`` replaced by its bytes, for a model that takes pictures."""
    if not served.takes_pictures:
        return items
    return [_picture(item, index) if _is_picture(item) else item for index, item in enumerate(items)]


def _is_picture(item) -> bool:
    return isinstance(item, dict) and set(item) == {B64_FIELD}


def _picture(item: dict, index: int) -> bytes:
    try:
        return decode_b64(item[B64_FIELD])
    except (BadRequest, InvalidImage) as exc:  # same error class (same status), naming the instance
        raise type(exc)(f"instance {index}: {exc}") from exc


def rows(outputs: dict[str, np.ndarray]) -> list:
    """Format outputs in TF Serving's row format (one output: its values without the name)."""
    lists = {key: values.tolist() for key, values in outputs.items()}
    if len(lists) == 1:
        return next(iter(lists.values()))
    return [dict(zip(lists, values)) for values in zip(*lists.values())]


def columns(outputs: dict[str, np.ndarray]):
    """Format outputs in TF Serving's columnar format (one output: its values without the name)."""
    lists = {key: values.tolist() for key, values in outputs.items()}
    return next(iter(lists.values())) if len(lists) == 1 else lists
