"""The service's OpenAPI 3.0 description, served at ``GET /openapi.json`` and tested against the app.

Every route is described with its request bodies and with a schema for each
response status it can answer, errors included (``{"error": "..."}``), so a
client generator or a fuzzer (schemathesis) can hold the app to it.
"""

from __future__ import annotations

from imgclf.core import export_names as names
from imgclf.core.version import package_version
from imgclf.service.protocols.v2 import openapi as v2_openapi

OPENAPI_VERSION = "3.0.3"
# An 8x8 red PNG: a real image, so the examples are requests the service answers with 200.
EXAMPLE_PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8ISfHgA0wMeAAg1MCANDKARQfGKMR"
                   "AAAAAElFTkSuQmCC")
MODEL_NAME_PATTERN = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"  # imgclf.core.repository.validate_name
MAX_VERSION = 10**18 - 1  # 18 digits: fits int64, as TF Serving parses it

_ERROR_MEANINGS = {
    "400": "Malformed request: bad JSON, missing field, wrong shape, bad parameter, undecodable image",
    "404": "Unknown model, or a version that is not served",
    "413": "Too large: request body, image pixels, or too many instances",
    "415": "Unsupported content type or image type",
    "503": "Models are still loading (or failed to load); retry after the Retry-After header's seconds",
    # Access control (imgclf.service.access.auth, cross_site): off by default, so these appear only when configured.
    "401": "An API key is required (IMGCLF_API_KEYS_FILE is set) and was missing or wrong (WWW-Authenticate)",
    "403": "A browser request from another origin that IMGCLF_CORS_ORIGINS does not allow",
    "429": "This API key is over its rate limit (IMGCLF_RATE_LIMIT); retry after the Retry-After header's seconds",
}
# Routes that answer without a key; every other operation may answer 401, 403 and 429.
OPEN_PATHS = ("/", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
SECURITY_SCHEMES = {"bearerKey": {"type": "http", "scheme": "bearer", "description": "an imgclf API key"},
                    "headerKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str, example=None) -> dict:
    media = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}}


def _errors(*statuses: str) -> dict:
    return {status: _json(_ref("Error"), _ERROR_MEANINGS[status]) for status in statuses}


def _access_control(paths: dict) -> dict:
    """Add the access-control answers and the optional key requirement to every operation but the open ones."""
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":  # the path's own parameters, not an operation
                continue
            operation["responses"].update(_errors("403"))
            if path in OPEN_PATHS:
                operation["security"] = []
                continue
            operation["responses"].update(_errors("401", "429"))
            operation["security"] = [{"bearerKey": []}, {"headerKey": []}, {}]  # {}: keys are off by default
    return paths


def _text(media_type: str, description: str) -> dict:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _schemas(max_instances: int) -> dict:
    number_row = {"type": "array", "items": {"type": "number"},
                  "description": "one bottleneck vector [D], or [x] for the quadratic model"}
    digit = {"type": "array", "minItems": 28, "maxItems": 28, "description": "a 28x28 digit, 0-1 or 0-255",
             "items": {"type": "array", "minItems": 28, "maxItems": 28,
                       "items": {"anyOf": [{"type": "number"},
                                           {"type": "array", "minItems": 1, "maxItems": 1,
                                            "items": {"type": "number"}}]}}}
    b64 = _ref("B64")
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "B64": {"type": "object", "required": ["b64"], "additionalProperties": False,
                "properties": {"b64": {"type": "string", "description": "base64 of an encoded image "
                                                                       "(JPEG, PNG, GIF, BMP or WebP)"}}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string",
                                                                                        "enum": ["ok"]}}},
        "Readiness": {"type": "object", "required": ["status", "models"], "properties": {
            "status": {"type": "string", "enum": ["loading", "ready", "failed"]},
            "models": {"type": "object", "additionalProperties": {"type": "integer"},
                       "description": "served version by model name"},
            "precision": {"type": "string", "enum": ["", "fp32", "bf16", "fp16"],
                          "description": "serving precision (empty until loading starts)"},
            "error": {"type": "string", "description": "why loading failed"}}},
        "Prediction": {"type": "object", "required": ["label", "score"], "properties": {
            "label": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1}}},
        "PredictJSON": {"type": "object", "required": ["b64"], "properties": {
            "b64": {"type": "string", "description": "base64 of an encoded image"},
            "model": {"type": "string", "description": "model name (the query's model wins)"},
            "top_k": {"type": "integer", "minimum": 1, "description": "labels to return, 1..number of labels"},
            "annotate": {"type": "boolean", "description": "also return the annotated image as base64 JPEG"}}},
        "PredictResponse": {"type": "object", "required": ["model", "version", "predictions", "timing_ms"],
                            "properties": {
                                "model": {"type": "string"}, "version": {"type": "integer"},
                                "predictions": {"type": "array", "items": _ref("Prediction"),
                                                "description": "best first, cut to top_k"},
                                "timing_ms": {"type": "object", "required": ["decode", "predict", "total"],
                                              "properties": {k: {"type": "number", "minimum": 0}
                                                             for k in ("decode", "predict", "total")}},
                                "annotated_image": {"type": "string", "format": "byte",
                                                    "description": "base64 JPEG, with annotate=true"}}},
        "TFServingPredictRequest": {
            "type": "object",
            "description": "TF Serving's REST predict request: row format (instances) or columnar format "
                           "(inputs), exactly one of them. Image classifiers: signature serving_default takes "
                           'images as {"b64": ...}; signature bottleneck takes float vectors [N, D]. Digit '
                           'models (mnist-mlp, lenet5): 28x28 arrays (0-1 or 0-255) or {"b64": ...} pictures '
                           "of a digit, input key images. The quadratic model: x values (x or [x]), input key x.",
            "properties": {
                "signature_name": {"type": "string", "enum": list(_signatures()), "default": names.SERVING_SIGNATURE},
                "instances": {"type": "array", "minItems": 1, "maxItems": max_instances, "items": {"anyOf": [
                    b64,
                    {"type": "object", "required": [names.IMAGE_BYTES_KEY], "additionalProperties": False,
                     "properties": {names.IMAGE_BYTES_KEY: b64}},
                    number_row,
                    {"type": "object", "required": [names.BOTTLENECK_KEY], "additionalProperties": False,
                     "properties": {names.BOTTLENECK_KEY: number_row}},
                    digit, {"type": "number", "description": "x of the quadratic model"},
                    {"type": "object", "required": ["images"], "additionalProperties": False,
                     "properties": {"images": {"anyOf": [digit, b64]}}},
                    {"type": "object", "required": ["x"], "additionalProperties": False,
                     "properties": {"x": {"anyOf": [{"type": "number"}, number_row]}}}]}},
                "inputs": {"anyOf": [
                    {"type": "array", "minItems": 1, "maxItems": max_instances,
                     "items": {"anyOf": [b64, number_row, digit, {"type": "number"}]}},
                    {"type": "object", "required": ["images"], "additionalProperties": False,
                     "properties": {"images": {"type": "array", "minItems": 1, "maxItems": max_instances,
                                               "items": {"anyOf": [digit, b64]}}}},
                    {"type": "object", "required": ["x"], "additionalProperties": False,
                     "properties": {"x": {"type": "array", "minItems": 1, "maxItems": max_instances,
                                          "items": {"anyOf": [{"type": "number"}, number_row]}}}},
                    {"type": "object", "required": [names.IMAGE_BYTES_KEY], "additionalProperties": False,
                     "properties": {names.IMAGE_BYTES_KEY: {"type": "array", "minItems": 1,
                                                            "maxItems": max_instances, "items": b64}}},
                    {"type": "object", "required": [names.BOTTLENECK_KEY], "additionalProperties": False,
                     "properties": {names.BOTTLENECK_KEY: {"type": "array", "minItems": 1,
                                                           "maxItems": max_instances, "items": number_row}}}]},
            },
            "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}]},
        "TFServingPredictions": {
            "type": "object", "required": ["predictions"], "description": "answer to the row format",
            "properties": {"predictions": {"type": "array", "items": {"anyOf": [{
                "type": "object", "required": [names.PROBABILITIES_KEY, names.CLASSES_KEY],
                "description": "classifiers (digit models answer no labels)", "properties": {
                    names.PROBABILITIES_KEY: {"type": "array", "items": {"type": "number"}},
                    names.CLASSES_KEY: {"type": "integer", "minimum": 0, "description": "top-1 class id"},
                    names.LABELS_KEY: {"type": "string", "description": "top-1 label"}}},
                {"type": "array", "items": {"type": "number"}, "description": "the quadratic model: [y]"}]}}}},
        "TFServingOutputs": {
            "type": "object", "required": ["outputs"], "description": "answer to the columnar format",
            "properties": {"outputs": {"anyOf": [{
                "type": "object", "required": [names.PROBABILITIES_KEY, names.CLASSES_KEY], "properties": {
                    names.PROBABILITIES_KEY: {"type": "array", "items": {"type": "array",
                                                                         "items": {"type": "number"}}},
                    names.CLASSES_KEY: {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    names.LABELS_KEY: {"type": "array", "items": {"type": "string"}}}},
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                 "description": "the quadratic model: [[y], ...]"}]}}},
        "ModelStatus": {"type": "object", "required": ["model_version_status"], "properties": {
            "name": {"type": "string", "description": "KServe v1's model readiness: the model's name"},
            "ready": {"type": "boolean", "description": "KServe v1's model readiness: a version is serving"},
            "model_version_status": {"type": "array", "items": {
                "type": "object", "required": ["version", "state", "status"], "properties": {
                    "version": {"type": "string", "pattern": "^[0-9]+$"},
                    "state": {"type": "string", "enum": ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
                    "status": {"type": "object", "required": ["error_code", "error_message"], "properties": {
                        "error_code": {"type": "string"}, "error_message": {"type": "string"}}}}}}}},
        "TensorInfo": {"type": "object", "required": ["dtype", "tensor_shape"], "properties": {
            "dtype": {"type": "string", "enum": ["DT_STRING", "DT_FLOAT", "DT_INT64"]},
            "tensor_shape": {"type": "object", "required": ["dim"], "properties": {
                "dim": {"type": "array", "items": {"type": "object", "required": ["size"], "properties": {
                    "size": {"type": "string", "pattern": "^-?[0-9]+$", "description": "-1: any size"},
                    "name": {"type": "string"}}}},
                "unknown_rank": {"type": "boolean"}}}}},
        "SignatureDef": {"type": "object", "required": ["inputs", "outputs", "method_name"], "properties": {
            "inputs": {"type": "object", "additionalProperties": _ref("TensorInfo")},
            "outputs": {"type": "object", "additionalProperties": _ref("TensorInfo")},
            "method_name": {"type": "string"}}},
        "ModelMetadata": {"type": "object", "required": ["model_spec", "metadata", "labels", "model_card"],
                          "properties": {
                              "model_spec": {"type": "object", "required": ["name", "signature_name", "version"],
                                             "properties": {"name": {"type": "string"},
                                                            "signature_name": {"type": "string"},
                                                            "version": {"type": "string", "pattern": "^[0-9]+$"}}},
                              "metadata": {"type": "object", "required": ["signature_def"], "properties": {
                                  "signature_def": {"type": "object", "required": ["signature_def"], "properties": {
                                      "signature_def": {"type": "object",
                                                        "additionalProperties": _ref("SignatureDef")}}}}},
                              "modelSpec": {"type": "object", "description": "model_spec with protobuf's JSON "
                                            "names, as OpenVINO Model Server answers (ovmsclient reads it); "
                                            "metadata.signature_def.signatureDef likewise"},
                              "labels": {"type": "array", "items": {"type": "string"},
                                         "description": "label names in class-id order"},
                              "model_card": {"type": "object", "description": "the export's model_card.json"},
                              "input": {"type": "object", "description": "secondary models: the input forms "
                                                                         "accepted beyond the signature"}}},
        "ModelList": {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {
            "type": "object", "required": ["name", "version", "labels", "kind"], "properties": {
                "name": {"type": "string"}, "version": {"type": "integer"},
                "versions": {"type": "array", "items": {"type": "integer"},
                             "description": "every version this worker has AVAILABLE"},
                "labels": {"type": "array", "items": {"type": "string"}},
                "kind": {"type": "string", "enum": ["image-classifier", "digit-classifier", "regression"]}}}}}},
    }


def _signatures() -> tuple[str, ...]:
    return names.SERVING_SIGNATURE, names.BOTTLENECK_SIGNATURE


def _tfserving_paths(name_param: dict, version_param: dict) -> dict:
    """Describe the TF Serving routes, with and without /versions/{version}."""
    paths = {}
    label_param = {"name": "label", "in": "path", "required": True, "example": "stable",
                   "description": "version label (a model config file's version_labels)",
                   "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}}
    for suffix, params, label in (("", [name_param], "served version"),
                                  ("/versions/{version}", [name_param, version_param], "given version"),
                                  ("/labels/{label}", [name_param, label_param], "labelled version")):
        lookup_errors = ("400", "404", "503") if suffix else ("404", "503")
        tag = ["tensorflow-serving"]
        op = {"": "", "/versions/{version}": "Version", "/labels/{label}": "Label"}[suffix]
        paths["/v1/models/{name}" + suffix] = {"parameters": params, "get": {
            "operationId": "modelStatus" + op, "tags": tag,
            "summary": f"Model status of the {label} (TF Serving's shape): without a version or label, "
                       "every version the worker knows with its state (START, LOADING, AVAILABLE, UNLOADING, END)",
            "responses": {"200": _json(_ref("ModelStatus"), "The version states"),
                          **_errors(*lookup_errors)}}}
        paths["/v1/models/{name}" + suffix + "/metadata"] = {"parameters": params, "get": {
            "operationId": "modelMetadata" + op, "tags": tag,
            "summary": f"Signature definitions of the {label} (TF Serving's shape), its labels and model card",
            "responses": {"200": _json(_ref("ModelMetadata"), "Metadata"), **_errors(*lookup_errors)}}}
        paths["/v1/models/{name}" + suffix + ":predict"] = {"parameters": params, "post": {
            "operationId": "tfservingPredict" + op, "tags": tag,
            "summary": f"Predict with the {label}: TF Serving's REST predict API",
            "description": "Images are decoded in Python as in training (EXIF orientation applied) and "
                           "predicted in one batched model call. Content-Type is not checked (TF Serving's "
                           "clients often send none); the body must be JSON.",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("TFServingPredictRequest"),
                "examples": {
                    "row": {"summary": "row format", "value": {"instances": [{"b64": EXAMPLE_PNG_B64}]}},
                    "row_named": {"summary": "row format, named input", "value": {
                        "signature_name": names.SERVING_SIGNATURE,
                        "instances": [{names.IMAGE_BYTES_KEY: {"b64": EXAMPLE_PNG_B64}}]}},
                    "columnar": {"summary": "columnar format", "value": {
                        "inputs": {names.IMAGE_BYTES_KEY: [{"b64": EXAMPLE_PNG_B64}]}}}}}}},
            "responses": {"200": {"description": "Row format answers predictions, columnar format outputs",
                                  "content": {"application/json": {"schema": {"oneOf": [
                                      _ref("TFServingPredictions"), _ref("TFServingOutputs")]}}}},
                          **_errors("400", "404", "413", "415", "503")}}}
    return paths


def document(model_names: list[str] | None = None, max_instances: int = 256) -> dict:
    """Return the OpenAPI document; ``model_names`` (the served ones) become the examples of model names."""
    example_name = (model_names or ["flowers"])[0]
    name_param = {"name": "name", "in": "path", "required": True, "description": "model name",
                  "schema": {"type": "string", "pattern": MODEL_NAME_PATTERN}, "example": example_name}
    version_param = {"name": "version", "in": "path", "required": True,
                     "description": "model version (an integer; only a served version is found; 0: the default "
                                    "version, as OpenVINO Model Server's clients send it)",
                     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_VERSION}, "example": 1}
    image_query = [
        {"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "model name (default: the body's model field, else the configured default model)"},
        {"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
         "description": "labels to return, 1..number of labels (default: the configured top_k)"},
        {"name": "annotate", "in": "query", "required": False, "schema": {"type": "boolean"},
         "description": "also return the annotated image (base64 JPEG in annotated_image)"},
    ]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "imgclf", "version": package_version(),
                 "description": "Image classification with Inception-v3 bottlenecks and a trained head. "
                                "Every error answers {\"error\": \"<message>\"}."},
        "tags": [{"name": "imgclf"}, {"name": "tensorflow-serving",
                                      "description": "TensorFlow Serving's REST API, compatible"},
                 {"name": v2_openapi.TAG, "description": "the Open Inference Protocol (KServe v2), REST"},
                 {"name": "operations"}],
        "paths": _access_control({
            "/": {"get": {"operationId": "uploadPage", "tags": ["imgclf"],
                          "summary": "The page: classify a photo, draw a digit for the MNIST models, try the quadratic",
                          "responses": {"200": _text("text/html", "The page")}}},
            "/predict": {"post": {
                "operationId": "predict", "tags": ["imgclf"],
                "summary": "Top-k labels of one image",
                "description": "The image comes as multipart field `image`, as a raw body with an image "
                               "content type, or as JSON {\"b64\": ...}. With `Accept: image/jpeg` the answer "
                               "is the annotated image itself.",
                "parameters": image_query,
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "model": {"type": "string", "description": "model name (the query's model wins)"}}}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": _ref("PredictJSON"),
                                         "example": {"b64": EXAMPLE_PNG_B64, "top_k": 3}}}},
                "responses": {"200": {"description": "Predictions (or, with Accept: image/jpeg, the annotated "
                                                     "JPEG)",
                                      "content": {"application/json": {"schema": _ref("PredictResponse")},
                                                  "image/jpeg": {"schema": {"type": "string",
                                                                            "format": "binary"}}}},
                              **_errors("400", "404", "413", "415", "503")}}},
            "/v1/models": {"get": {"operationId": "listModels", "tags": ["tensorflow-serving"],
                                   "summary": "The served models, their versions and labels",
                                   "responses": {"200": _json(_ref("ModelList"), "The served models"),
                                                 **_errors("503")}}},
            **_tfserving_paths(name_param, version_param),
            **v2_openapi.paths(name_param, version_param, _errors, EXAMPLE_PNG_B64),
            "/healthz": {"get": {"operationId": "healthz", "tags": ["operations"],
                                 "summary": "Liveness: 200 while the process answers",
                                 "responses": {"200": _json(_ref("Health"), "Alive")}}},
            "/readyz": {"get": {"operationId": "readyz", "tags": ["operations"],
                                "summary": "Readiness: 200 once every model is loaded and warmed up",
                                "responses": {"200": _json(_ref("Readiness"), "Ready"),
                                              "503": _json(_ref("Readiness"), "Loading, or loading failed")}}},
            "/metrics": {"get": {"operationId": "metrics", "tags": ["operations"],
                                 "summary": "Prometheus metrics (text exposition format)",
                                 "responses": {"200": _text("text/plain", "Metrics")}}},
            "/openapi.json": {"get": {"operationId": "openapi", "tags": ["operations"],
                                      "summary": "This document",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")}}},
        }),
        "components": {"schemas": {**_schemas(max_instances), **v2_openapi.schemas(max_instances)},
                       "securitySchemes": SECURITY_SCHEMES},
    }
