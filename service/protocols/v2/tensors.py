"""Tensors of the Open Inference Protocol (KServe v2) over REST: parse an infer request, encode its answer.

A request is a JSON object, optionally followed by raw tensor bytes (the
protocol's binary tensor data extension): the ``Inference-Header-Content-Length``
header says how long the JSON part is, and each input with
``parameters.binary_data_size`` takes that many bytes of the rest, in input
order. Numbers are little-endian in row-major order; a BYTES tensor is its
elements one after the other, each preceded by its length as a 4-byte
little-endian unsigned integer. In JSON, ``data`` is a flat or nested list.

Free of Flask and of any model: :mod:`imgclf.service.protocols.v2.routes` calls these on
a request's bytes and on a servable's outputs.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from imgclf.core.errors import BadRequest
from imgclf.core.values import json_type, short

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
# TF Serving's dtype names (the servables' signature defs) -> the protocol's datatypes.
FROM_TF_DTYPE = {"DT_STRING": "BYTES", "DT_FLOAT": "FP32", "DT_INT64": "INT64"}
# The protocol's numeric datatypes, little-endian (BF16 has no numpy type): every one can be read, so a model
# that takes FP32 refuses an FP64 input by its datatype, whatever the form.
NUMPY_DTYPES = {name: np.dtype(code) for name, code in (
    ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"), ("INT8", "i1"),
    ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"), ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"))}
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix
_DIGITS = re.compile(r"[0-9]{1,18}")


@dataclass
class InputTensor:
    """One input of a request, its values flat: a list (JSON numbers or strings; BYTES elements) or an array.

    Binary numbers stay an array until the model has checked datatype and shape, so a large tensor the
    model refuses never becomes a Python list.
    """

    name: str
    datatype: str
    shape: list[int]
    values: list | np.ndarray


@dataclass
class RequestedOutput:
    """One entry of a request's ``outputs``: which output, and whether it comes back binary (None: the default)."""

    name: str
    binary: bool | None = None


@dataclass
class InferRequest:
    """A parsed infer request."""

    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False  # the request's ``parameters.binary_data_output``
    id: str | None = None
    parameters: dict = field(default_factory=dict)


def parse_request(body: bytes, header_length: str | None, max_batch: int | None = None,
                  max_tensors: int | None = None) -> InferRequest:
    """Return the infer request of a body (JSON, or JSON then binary tensor data when ``header_length`` is given).

    ``max_batch``: an input whose first dimension is larger is refused before its data is read (split, flattened);
    ``max_tensors``: the most inputs, and requested outputs, a request may name (checked before any is read).

    Raises:
        BadRequest: a bad header length, JSON that is not an infer request, binary data that does not add up, or
            a count over a limit.
    """
    json_part, binary = _split(body, header_length)
    try:
        header = json.loads(json_part)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested arrays
        raise BadRequest(f"the inference request is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise BadRequest(f"the inference request must be a JSON object; received {json_type(header)}")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f'"id" must be a string; received {json_type(request_id)}')
    parameters = _parameters(header, "the request")
    binary_output = _flag(parameters, "binary_data_output", "the request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest(f'"inputs" must be a non-empty list of tensors; received {json_type(raw_inputs)}')
    _check_tensors(raw_inputs, "inputs", max_tensors)
    inputs, offset = [], 0
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _input(raw, index, binary, offset, max_batch)
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(f"the request carries {len(binary)} bytes of binary tensor data, but its inputs' "
                         f"binary_data_size add up to {offset}")
    return InferRequest(inputs, _outputs(header.get("outputs"), max_tensors), bool(binary_output), request_id,
                        parameters)


def encode_response(header: dict, tensors: list[tuple[str, str, np.ndarray | list, bool]]) -> tuple[bytes, int | None]:
    """Return an infer response body and, when some output is binary, the length of its JSON part.

    Args:
        header: the response's fields other than ``outputs`` (model_name, model_version, id).
        tensors: (name, datatype, values, binary) per output; BYTES values are a list of str, the others arrays.
    """
    outputs, blobs = [], []
    for name, datatype, values, binary in tensors:
        shape = [len(values)] if datatype == "BYTES" else list(np.shape(values))
        output = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = bytes_blob(values) if datatype == "BYTES" else np.asarray(values, NUMPY_DTYPES[datatype]).tobytes()
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = list(values) if datatype == "BYTES" else np.asarray(values).reshape(-1).tolist()
        outputs.append(output)
    body = json.dumps({**header, "outputs": outputs}, ensure_ascii=False).encode()
    if not blobs:
        return body, None
    return body + b"".join(blobs), len(body)


def nest(values: list, shape: list[int]) -> list:
    """Return a flat list cut into nested lists of ``shape`` (row-major), one item per first-dimension entry."""
    for size in reversed(shape[1:]):
        values = [values[i:i + size] for i in range(0, len(values), size)]
    return values


def elements(shape: list[int]) -> int:
    """Return the number of elements of a tensor of ``shape``."""
    count = 1
    for size in shape:
        count *= size
    return count


# --- parsing -------------------------------------------------------------------------------------------------------


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Split a body into its JSON part and its binary tensor data (none without a header length)."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not _DIGITS.fullmatch(text):
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer; received {header_length[:40]!r}")
    length = int(text)
    if length > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {length}, but the body holds only {len(body)} bytes")
    return body[:length], body[length:]


def _check_tensors(items: list, what: str, max_tensors: int | None) -> None:
    """Refuse a list of more inputs or outputs than a request may name, before any of them is read."""
    if max_tensors is not None and len(items) > max_tensors:
        raise BadRequest(f"the request names {len(items)} {what}; at most {max_tensors} are allowed "
                         "(IMGCLF_MAX_TENSORS)")


def _input(raw, index: int, binary: bytes, offset: int, max_batch: int | None = None) -> tuple[InputTensor, int]:
    """Return input ``index`` of a request and the offset of the next input's binary data."""
    if not isinstance(raw, dict):
        raise BadRequest(f"input {index} must be an object with name, shape, datatype and data; "
                         f"received {json_type(raw)}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise BadRequest(f'input {index}: "name" must be a string; received {json_type(name)}')
    where = f"input {name[:60]!r}"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise BadRequest(f'{where}: "datatype" must be a string such as "FP32" or "BYTES"; '
                         f"received {json_type(datatype)}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise BadRequest(f'{where}: "shape" must be a list of non-negative integers; received {short(shape)}')
    if max_batch is not None and shape and shape[0] > max_batch:  # before its data is split or flattened
        raise BadRequest(f"{where} holds {shape[0]} items; at most {max_batch} are allowed per request")
    count = elements(shape)
    size = _parameters(raw, where).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise BadRequest(f"{where}: binary_data_size must be a non-negative integer; received {short(size)}")
        if offset + size > len(binary):
            raise BadRequest(f"{where}: binary_data_size {size} runs past the end of the body's binary data "
                             f"({len(binary) - offset} bytes left)")
        values = from_binary(binary[offset:offset + size], datatype, count, where)
        return InputTensor(name, datatype, shape, values), offset + size
    if "data" not in raw:
        raise BadRequest(f'{where} has no "data" and no binary_data_size parameter')
    values = _flatten(raw["data"], where)
    if len(values) != count:
        raise BadRequest(f"{where}: shape {shape} holds {count} elements; data holds {len(values)}")
    return InputTensor(name, datatype, shape, values), offset


def from_binary(blob: bytes, datatype: str, count: int, where: str) -> list | np.ndarray:
    """Return the flat values of one input's binary data (REST's binary extension; gRPC's raw contents)."""
    if datatype == "BYTES":
        values, position = [], 0
        while position < len(blob):
            if position + _LENGTH.size > len(blob):
                raise BadRequest(f"{where}: BYTES element {len(values)} has a cut length prefix")
            (length,) = _LENGTH.unpack_from(blob, position)
            position += _LENGTH.size
            if position + length > len(blob):
                raise BadRequest(f"{where}: BYTES element {len(values)} claims {length} bytes; "
                                 f"{len(blob) - position} are left")
            values.append(blob[position:position + length])
            position += length
        if len(values) != count:
            raise BadRequest(f"{where}: the shape holds {count} elements; the binary data holds {len(values)}")
        return values
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"{where}: binary data of datatype {datatype[:20]!r} is not read here; "
                         f"send {', '.join(sorted(NUMPY_DTYPES))} or BYTES")
    if len(blob) != count * dtype.itemsize:
        raise BadRequest(f"{where}: the shape holds {count} {datatype} elements ({count * dtype.itemsize} bytes); "
                         f"binary_data_size is {len(blob)}")
    return np.frombuffer(blob, dtype)


def _flatten(data, where: str) -> list:
    """Return a JSON ``data`` value (flat or nested lists) as a flat list of its leaves."""
    if not isinstance(data, list):
        raise BadRequest(f'{where}: "data" must be a list; received {json_type(data)}')
    flat, stack = [], [iter(data)]
    while stack:  # iterative: a deep nesting cannot exhaust the stack
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _outputs(raw, max_tensors: int | None = None) -> list[RequestedOutput] | None:
    """Return the requested outputs (None: every output)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest(f'"outputs" must be a list of {{"name": ...}} objects; received {json_type(raw)}')
    _check_tensors(raw, "outputs", max_tensors)
    requested, seen = [], set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f'output {index} must be an object with a string "name"; received {short(item)}')
        where = f"output {item['name'][:60]!r}"
        parameters = _parameters(item, where)
        if "classification" in parameters:
            raise BadRequest(f"{where}: the classification extension is not supported; request the "
                             "probabilities, classes or labels output")
        if item["name"] in seen:  # a set: a request naming 60,000 outputs costs no quadratic time
            raise BadRequest(f"{where} is requested twice")
        seen.add(item["name"])
        requested.append(RequestedOutput(item["name"], _flag(parameters, "binary_data", where)))
    return requested


def _parameters(obj: dict, where: str) -> dict:
    """Return an object's ``parameters`` (an object, or {} when absent)."""
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f'{where}: "parameters" must be an object; received {json_type(parameters)}')
    return parameters


def _flag(parameters: dict, name: str, where: str) -> bool | None:
    """Return a boolean parameter, or None when absent."""
    value = parameters.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter {name} must be true or false; received {short(value)}")
    return value


def bytes_blob(values: list) -> bytes:
    """Return BYTES elements (str or bytes) length-prefixed, as the binary extension sends them."""
    parts = []
    for value in values:
        data = value.encode() if isinstance(value, str) else bytes(value)
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)
