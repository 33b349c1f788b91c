"""The Open Inference Protocol (KServe v2) routes in the service's OpenAPI document.

:func:`imgclf.service.protocols.openapi.document` merges these paths and schemas into the
one document served at ``GET /openapi.json``; its error responses come from
there (``errors``), so every route answers the same ``{"error": ...}`` schema.
"""

from __future__ import annotations

from collections.abc import Callable

from imgclf.core import export_names as names
from imgclf.service.protocols.v2.tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH

TAG = "open-inference-protocol"
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "BF16"]  # the protocol's; imgclf's models take BYTES and FP32


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def schemas(max_instances: int) -> dict:
    """Return the v2 request and response schemas (components)."""
    shape = {"type": "array", "items": {"type": "integer", "minimum": 0}, "description": "batch first"}
    parameters = {"type": "object", "additionalProperties": True}
    return {
        "V2ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "V2Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "V2Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "V2ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "ready": {"type": "boolean"}}},
        "V2TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string", "enum": DATATYPES},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}, "description": "-1: any size"}}},
        "V2ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                            "properties": {
                                "name": {"type": "string"},
                                "versions": {"type": "array", "items": {"type": "string", "pattern": "^[0-9]+$"}},
                                "platform": {"type": "string"},
                                "inputs": {"type": "array", "items": _ref("V2TensorMetadata"),
                                           "description": "a request sends exactly one of them"},
                                "outputs": {"type": "array", "items": _ref("V2TensorMetadata")}}},
        "V2RequestInput": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "description": "data: a flat or nested list in row-major order (BYTES: base64 strings of encoded "
                           "images); or parameters.binary_data_size bytes of the binary part",
            "properties": {"name": {"type": "string"}, "shape": {**shape, "minItems": 1},
                           "datatype": {"type": "string", "enum": DATATYPES}, "parameters": parameters,
                           "data": {"type": "array"}}},
        "V2RequestOutput": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}},
        "V2InferRequest": {
            "type": "object", "required": ["inputs"],
            "description": "Image classifiers take image_bytes (BYTES [N]) or bottleneck (FP32 [N, D]); digit "
                           "models images (FP32 [N, 28, 28]); the quadratic x (FP32 [N, 1]). N is at most "
                           f"{max_instances}.",
            "properties": {"id": {"type": "string"}, "parameters": {"type": "object", "properties": {
                               "binary_data_output": {"type": "boolean"}}},
                           "inputs": {"type": "array", "minItems": 1, "maxItems": 1,
                                      "items": _ref("V2RequestInput")},
                           "outputs": {"type": "array", "items": _ref("V2RequestOutput")}}},
        "V2ResponseOutput": {
            "type": "object", "required": ["name", "datatype", "shape"],
            "description": "data, or parameters.binary_data_size bytes of the binary part",
            "properties": {"name": {"type": "string"}, "datatype": {"type": "string", "enum": DATATYPES},
                           "shape": shape, "data": {"type": "array"}, "parameters": {
                               "type": "object", "properties": {"binary_data_size": {"type": "integer",
                                                                                     "minimum": 0}}}}},
        "V2InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": _ref("V2ResponseOutput")}}},
    }


def paths(name_param: dict, version_param: dict, errors: Callable[..., dict], example_b64: str) -> dict:
    """Return the v2 paths; ``errors(*statuses)`` gives the service's error responses."""
    found = {
        "/v2": {"get": {"operationId": "v2ServerMetadata", "tags": [TAG], "summary": "Server metadata",
                        "responses": {"200": _json(_ref("V2ServerMetadata"), "Name, version, extensions")}}},
        "/v2/health/live": {"get": {"operationId": "v2Live", "tags": [TAG],
                                    "summary": "Liveness: 200 while the process answers, loading included",
                                    "responses": {"200": _json(_ref("V2Live"), "Alive")}}},
        "/v2/health/ready": {"get": {"operationId": "v2Ready", "tags": [TAG],
                                     "summary": "Readiness, as /readyz: every model loaded and warmed up",
                                     "responses": {"200": _json(_ref("V2Ready"), "Ready"), **errors("503")}}},
    }
    header = {"name": HEADER_LENGTH, "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
              "description": "binary tensor data extension: the length of the JSON part; the rest of the body "
                             "is the inputs' binary data"}
    example = {"id": "42", "inputs": [{"name": names.IMAGE_BYTES_KEY, "shape": [1], "datatype": "BYTES",
                                       "data": [example_b64]}],
               "outputs": [{"name": names.LABELS_KEY}, {"name": names.PROBABILITIES_KEY}]}
    for suffix, params, label in (("", [name_param], "served version"),
                                  ("/versions/{version}", [name_param, version_param], "given version")):
        lookup_errors = ("400", "404", "503") if suffix else ("404", "503")
        op = "Version" if suffix else ""
        base = "/v2/models/{name}" + suffix
        found[base] = {"parameters": params, "get": {
            "operationId": "v2ModelMetadata" + op, "tags": [TAG],
            "summary": f"Metadata of the {label}: inputs and outputs with datatype and shape",
            "responses": {"200": _json(_ref("V2ModelMetadata"), "Metadata"), **errors(*lookup_errors)}}}
        found[base + "/ready"] = {"parameters": params, "get": {
            "operationId": "v2ModelReady" + op, "tags": [TAG], "summary": f"Readiness of the {label}",
            "responses": {"200": _json(_ref("V2ModelReady"), "Ready"), **errors(*lookup_errors)}}}
        found[base + "/infer"] = {"parameters": params, "post": {
            "operationId": "v2Infer" + op, "tags": [TAG], "summary": f"Infer with the {label}",
            "description": "JSON tensors, or (binary tensor data extension) the JSON part followed by raw bytes: "
                           f"{HEADER_LENGTH} gives the JSON part's length, each input's "
                           "parameters.binary_data_size its share of the rest; BYTES elements are each preceded "
                           "by a 4-byte little-endian length. Outputs come back binary with "
                           "parameters.binary_data (per output) or binary_data_output (all).",
            "parameters": [header],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("V2InferRequest"),
                                     "examples": {"image": {"summary": "one image, two outputs", "value": example}}},
                BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "The outputs (binary ones after the JSON part, whose length the "
                                                 f"{HEADER_LENGTH} response header gives)",
                                  "content": {"application/json": {"schema": _ref("V2InferResponse")},
                                              BINARY_CONTENT_TYPE: {"schema": {"type": "string",
                                                                               "format": "binary"}}}},
                          **errors("400", "404", "413", "415", "503")}}}
    return found
