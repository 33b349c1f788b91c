"""TensorFlow's TensorProto as TF Serving's gRPC API carries it, to and from numpy.

A request tensor's values come from ``tensor_content`` (little-endian bytes)
or from the typed field of its dtype (``float_val``, ``int64_val``, ...; one
value fills the whole shape, as ``tf.make_ndarray`` reads it); a DT_STRING
tensor's from ``string_val``. Answers use the typed fields, as TF Serving's
own do, so clients that read ``outputs["probabilities"].float_val`` work.
"""

from __future__ import annotations

import math

import numpy as np

from imgclf.core.errors import BadRequest
from imgclf.service.protocols.grpc.messages import message

DT_STRING = 7
# numpy dtype name -> DataType number (tensorflow/core/framework/types.proto)
DATA_TYPES = {"float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6, "int64": 9, "bool": 10,
              "uint16": 17, "float16": 19, "uint32": 22, "uint64": 23}
NUMPY = {code: np.dtype(name) for name, code in DATA_TYPES.items()}
_FIELD = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val", 9: "int64_val",
          10: "bool_val", 17: "int_val", 19: "half_val", 22: "uint32_val", 23: "uint64_val"}


def data_type(dtype: str) -> int:
    """Return the DataType number of a servable's dtype name ("string" is DT_STRING)."""
    return DT_STRING if dtype == "string" else DATA_TYPES.get(dtype, DATA_TYPES["float32"])


def type_name(code: int) -> str:
    """Return the DataType name of ``code`` (DT_FLOAT), or say that it is unknown."""
    value = message("tensorflow.TensorProto").DESCRIPTOR.fields_by_name["dtype"].enum_type.values_by_number.get(code)
    return value.name if value is not None else f"DataType {code}"


def shape_of(tensor) -> list[int]:
    """Return a TensorProto's shape as a list of sizes."""
    return [int(dim.size) for dim in tensor.tensor_shape.dim]


def values_of(tensor, where: str) -> list[bytes] | np.ndarray:
    """Return a request tensor's values: a list of bytes (DT_STRING, flat) or an array of its shape.

    Raises:
        BadRequest: a negative dimension, an unsupported dtype, or values that do not fill the shape.
    """
    shape = shape_of(tensor)
    if any(size < 0 for size in shape):
        raise BadRequest(f"{where} has a shape with an unknown dimension: {shape}")
    count = math.prod(shape)
    if tensor.dtype == DT_STRING:
        values = list(tensor.string_val)
        if len(values) != count:
            raise BadRequest(f"{where} has shape {shape} ({count} element(s)) but holds {len(values)} string(s)")
        return values
    dtype = NUMPY.get(tensor.dtype)
    if dtype is None:
        raise BadRequest(f"{where}: dtype {type_name(tensor.dtype)} is not supported")
    if tensor.tensor_content:
        content = tensor.tensor_content
        if len(content) != count * dtype.itemsize:
            raise BadRequest(f"{where} has shape {shape} ({count} element(s) of {dtype.itemsize} bytes) but its "
                             f"tensor_content holds {len(content)} bytes")
        return np.frombuffer(content, dtype.newbyteorder("<")).reshape(shape)
    field = getattr(tensor, _FIELD[tensor.dtype])
    values = np.asarray(field, np.uint16).view(np.float16) if tensor.dtype == 19 else np.asarray(field, dtype)
    if values.size == count:
        return values.reshape(shape)
    if values.size == 1:  # one value fills the shape (tf.make_ndarray does the same)
        return np.full(shape, values[0], dtype)
    raise BadRequest(f"{where} has shape {shape} ({count} element(s)) but holds {values.size} value(s)")


def make_tensor(values):
    """Return a TensorProto of ``values`` (an array; str or bytes elements make a DT_STRING tensor)."""
    array = np.asarray(values)
    tensor = message("tensorflow.TensorProto")()
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    if array.dtype.kind in "OUS":
        tensor.dtype = DT_STRING
        tensor.string_val.extend(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.reshape(-1))
        return tensor
    if array.dtype.name not in DATA_TYPES:
        array = array.astype(np.float32)
    tensor.dtype = DATA_TYPES[array.dtype.name]
    flat = array.reshape(-1)
    if tensor.dtype == 19:
        flat = flat.view(np.uint16)
    getattr(tensor, _FIELD[tensor.dtype]).extend(flat.tolist())
    return tensor
