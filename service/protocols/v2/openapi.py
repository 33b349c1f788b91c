"""The Open Inference Protocol (KServe v2) in the service's OpenAPI document: health, metadata, readiness, infer.

The schemas are data (``openapi_schemas.yaml`` beside this module); the paths are
built here, once for each way a route names its model (by name or version).
"""

from __future__ import annotations

from imgclf.core import export_names as names
from imgclf.service.protocols.openapi_parts import (
    EXAMPLE_PNG_B64,
    Context,
    ModelRoute,
    Part,
    binary_media,
    errors,
    json_response,
    model_routes,
    ref,
    schemas_file,
)
from imgclf.service.protocols.v2.tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH

TAG = "open-inference-protocol"


def part(context: Context) -> Part:
    """Return the v2 paths and schemas."""
    paths = {
        "/v2": {"get": {"operationId": "v2ServerMetadata", "tags": [TAG], "summary": "Server metadata",
                        "responses": {"200": json_response(ref("V2ServerMetadata"), "Name, version, extensions")}}},
        "/v2/health/live": {"get": {"operationId": "v2Live", "tags": [TAG],
                                    "summary": "Liveness: 200 while the process answers, loading included",
                                    "responses": {"200": json_response(ref("V2Live"), "Alive")}}},
        "/v2/health/ready": {"get": {"operationId": "v2Ready", "tags": [TAG],
                                     "summary": "Readiness, as /readyz: every model loaded and warmed up",
                                     "responses": {"200": json_response(ref("V2Ready"), "Ready"), **errors("503")}}},
    }
    for route in model_routes(context):
        base = "/v2/models/{name}" + route.suffix
        paths[base] = {"parameters": route.parameters, "get": _metadata(route)}
        paths[base + "/ready"] = {"parameters": route.parameters, "get": _ready(route)}
        paths[base + "/infer"] = {"parameters": route.parameters, "post": _infer(route)}
    return Part(paths=paths, schemas=schemas_file(__package__, "openapi_schemas.yaml",
                                                  max_instances=context.max_instances),
                tags=({"name": TAG, "description": "the Open Inference Protocol (KServe v2), REST"},),
                open_paths=("/v2/health/live", "/v2/health/ready"))


def _metadata(route: ModelRoute) -> dict:
    return {"operationId": "v2ModelMetadata" + route.operation_suffix, "tags": [TAG],
            "summary": f"Metadata of the {route.target}: inputs and outputs with datatype and shape",
            "responses": {"200": json_response(ref("V2ModelMetadata"), "Metadata"), **errors(*route.lookup_errors)}}


def _ready(route: ModelRoute) -> dict:
    return {"operationId": "v2ModelReady" + route.operation_suffix, "tags": [TAG],
            "summary": f"Readiness of the {route.target}",
            "responses": {"200": json_response(ref("V2ModelReady"), "Ready"), **errors(*route.lookup_errors)}}


def _infer(route: ModelRoute) -> dict:
    header = {"name": HEADER_LENGTH, "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
              "description": "binary tensor data extension: the length of the JSON part; the rest of the body "
                             "is the inputs' binary data"}
    example = {"id": "42", "inputs": [{"name": names.IMAGE_BYTES_KEY, "shape": [1], "datatype": "BYTES",
                                       "data": [EXAMPLE_PNG_B64]}],
               "outputs": [{"name": names.LABELS_KEY}, {"name": names.PROBABILITIES_KEY}]}
    return {
        "operationId": "v2Infer" + route.operation_suffix, "tags": [TAG], "summary": f"Infer with the {route.target}",
        "description": "JSON tensors, or (binary tensor data extension) the JSON part followed by raw bytes: "
                       f"{HEADER_LENGTH} gives the JSON part's length, each input's parameters.binary_data_size "
                       "its share of the rest; BYTES elements are each preceded by a 4-byte little-endian length. "
                       "Outputs come back binary with parameters.binary_data (per output) or binary_data_output "
                       "(all).",
        "parameters": [header],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": ref("V2InferRequest"),
                                 "examples": {"image": {"summary": "one image, two outputs", "value": example}}},
            BINARY_CONTENT_TYPE: binary_media()}},
        "responses": {"200": {"description": "The outputs (binary ones after the JSON part, whose length the "
                                             f"{HEADER_LENGTH} response header gives)",
                              "content": {"application/json": {"schema": ref("V2InferResponse")},
                                          BINARY_CONTENT_TYPE: binary_media()}},
                      **errors("400", "404", "413", "415", "503")},
    }
