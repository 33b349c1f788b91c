"""``POST /predict`` in the service's OpenAPI document: one image in, its top-k labels out.

The schemas are data (``openapi_schemas.yaml`` beside this module); the path is built here.
"""

from __future__ import annotations

from imgclf.service.protocols.openapi_parts import (
    EXAMPLE_PNG_B64,
    Context,
    Part,
    binary_media,
    errors,
    ref,
    schemas_file,
)

TAG = "imgclf"


def part(context: Context) -> Part:
    """Return /predict's path and schemas."""
    body = {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"},
            "model": {"type": "string", "description": "model name (the query's model wins)"},
            "unfamiliar_threshold": {"type": "number", "description": "as the query parameter"}}}},
        "image/jpeg": binary_media(),
        "image/png": binary_media(),
        "application/json": {"schema": ref("PredictJSON"), "example": {"b64": EXAMPLE_PNG_B64, "top_k": 3}},
    }
    predict = {
        "operationId": "predict", "tags": [TAG],
        "summary": "Top-k labels of one image",
        "description": "The image comes as multipart field `image`, as a raw body with an image content type, or as "
                       "JSON {\"b64\": ...}. With `Accept: image/jpeg` the answer is the annotated image itself.",
        "parameters": _query(),
        "requestBody": {"required": True, "content": body},
        "responses": {"200": {"description": "Predictions (or, with Accept: image/jpeg, the annotated JPEG)",
                              "content": {"application/json": {"schema": ref("PredictResponse")},
                                          "image/jpeg": binary_media()}},
                      **errors("400", "404", "413", "415", "503")},
    }
    return Part(paths={"/predict": {"post": predict}},
                schemas=schemas_file(__package__, "openapi_schemas.yaml"), tags=({"name": TAG},))


def _query() -> list[dict]:
    return [
        {"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "model name (default: the body's model field, else the configured default model)"},
        {"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
         "description": "labels to return, 1..number of labels (default: the configured top_k)"},
        {"name": "annotate", "in": "query", "required": False, "schema": {"type": "boolean"},
         "description": "also return the annotated image (base64 JPEG in annotated_image)"},
        {"name": "unfamiliar_threshold", "in": "query", "required": False, "schema": {"type": "number"},
         "description": "flag the image unfamiliar when its unfamiliar_score is above this, for this request "
                        "(default: the model's threshold, set at a 95% true-positive rate on its validation images)"},
    ]
