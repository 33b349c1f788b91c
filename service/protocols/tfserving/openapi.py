"""TF Serving's REST API in the service's OpenAPI document: the model list, status, metadata and predict routes.

The schemas are data (``openapi_schemas.yaml`` beside this module); the paths are
built here, once for each way a route names its model (by name, version or label).
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

TAG = "tensorflow-serving"
SIGNATURES = [names.SERVING_SIGNATURE, names.BOTTLENECK_SIGNATURE]  # those a predict request may name


def part(context: Context) -> Part:
    """Return TF Serving's paths and schemas."""
    paths = {"/v1/models": {"get": {
        "operationId": "listModels", "tags": [TAG], "summary": "The served models, their versions and labels",
        "responses": {"200": json_response(ref("ModelList"), "The served models"), **errors("503")}}}}
    for route in model_routes(context, labels=True):
        base = "/v1/models/{name}" + route.suffix
        paths[base] = {"parameters": route.parameters, "get": _status(route)}
        paths[base + "/metadata"] = {"parameters": route.parameters, "get": _metadata(route)}
        paths[base + "/reliability.png"] = {"parameters": route.parameters, "get": _reliability(route)}
        paths[base + ":predict"] = {"parameters": route.parameters, "post": _predict(route)}
    schemas = schemas_file(__package__, "openapi_schemas.yaml", max_instances=context.max_instances,
                           signatures=SIGNATURES)
    return Part(paths=paths, schemas=schemas,
                tags=({"name": TAG, "description": "TensorFlow Serving's REST API, compatible"},))


def _status(route: ModelRoute) -> dict:
    return {"operationId": "modelStatus" + route.operation_suffix, "tags": [TAG],
            "summary": f"Model status of the {route.target} (TF Serving's shape): without a version or label, "
                       "every version the worker knows with its state (START, LOADING, AVAILABLE, UNLOADING, END)",
            "responses": {"200": json_response(ref("ModelStatus"), "The version states"),
                          **errors(*route.lookup_errors)}}


def _metadata(route: ModelRoute) -> dict:
    return {"operationId": "modelMetadata" + route.operation_suffix, "tags": [TAG],
            "summary": f"Signature definitions of the {route.target} (TF Serving's shape), its labels and model card",
            "responses": {"200": json_response(ref("ModelMetadata"), "Metadata"), **errors(*route.lookup_errors)}}


def _reliability(route: ModelRoute) -> dict:
    lookup = [status for status in route.lookup_errors if status != "404"]
    return {"operationId": "reliabilityDiagram" + route.operation_suffix, "tags": [TAG],
            "summary": f"The calibration reliability diagram of the {route.target} (imgclf's own route, not TF "
                       "Serving's): accuracy against confidence, before and after calibration",
            "responses": {"200": {"description": "The diagram", "content": {"image/png": binary_media()}},
                          "404": json_response(ref("Error"), "Unknown model or version, or an export without a "
                                                             "reliability diagram (models other than image "
                                                             "classifiers, heads exported without calibration)"),
                          **errors(*lookup)}}


def _predict(route: ModelRoute) -> dict:
    image = {"b64": EXAMPLE_PNG_B64}
    examples = {
        "row": {"summary": "row format", "value": {"instances": [image]}},
        "row_named": {"summary": "row format, named input", "value": {
            "signature_name": names.SERVING_SIGNATURE, "instances": [{names.IMAGE_BYTES_KEY: image}]}},
        "columnar": {"summary": "columnar format", "value": {"inputs": {names.IMAGE_BYTES_KEY: [image]}}},
    }
    answers = {"oneOf": [ref("TFServingPredictions"), ref("TFServingOutputs")]}
    return {
        "operationId": "tfservingPredict" + route.operation_suffix, "tags": [TAG],
        "summary": f"Predict with the {route.target}: TF Serving's REST predict API",
        "description": "Images are decoded in Python as in training (EXIF orientation applied) and predicted in "
                       "one batched model call. Content-Type is not checked (TF Serving's clients often send "
                       "none); the body must be JSON.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": ref("TFServingPredictRequest"), "examples": examples}}},
        "responses": {"200": json_response(answers, "Row format answers predictions, columnar format outputs"),
                      **errors("400", "404", "413", "415", "503")},
    }
