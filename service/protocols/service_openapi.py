"""The service's own routes in its OpenAPI document: the page, liveness, readiness, metrics and the document itself.

The schemas are data (``service_openapi_schemas.yaml`` beside this module); the paths are built here.
"""

from __future__ import annotations

from imgclf.service.protocols.openapi_parts import Context, Part, json_response, ref, schemas_file, text_response

TAG = "operations"
PAGE_TAG = "imgclf"  # the page sits with /predict, which it calls


def part(context: Context) -> Part:
    """Return the paths and schemas of the page, health, readiness, metrics and /openapi.json."""
    def get(operation_id: str, tag: str, summary: str, responses: dict) -> dict:
        return {"get": {"operationId": operation_id, "tags": [tag], "summary": summary, "responses": responses}}

    paths = {
        "/": get("uploadPage", PAGE_TAG, "The page: classify a photo, draw a digit for the MNIST models, try the "
                 "quadratic", {"200": text_response("text/html", "The page")}),
        "/healthz": get("healthz", TAG, "Liveness: 200 while the process answers",
                        {"200": json_response(ref("Health"), "Alive")}),
        "/readyz": get("readyz", TAG, "Readiness: 200 once every model is loaded and warmed up",
                       {"200": json_response(ref("Readiness"), "Ready"),
                        "503": json_response(ref("Readiness"), "Loading, or loading failed")}),
        "/metrics": get("metrics", TAG, "Prometheus metrics (text exposition format)",
                        {"200": text_response("text/plain", "Metrics")}),
        "/openapi.json": get("openapi", TAG, "This document",
                             {"200": json_response({"type": "object"}, "OpenAPI 3 document")}),
    }
    return Part(paths=paths, schemas=schemas_file(__package__, "service_openapi_schemas.yaml"),
                tags=({"name": PAGE_TAG}, {"name": TAG}), open_paths=("/", "/healthz", "/readyz"))
