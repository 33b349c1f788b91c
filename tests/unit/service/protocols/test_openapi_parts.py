"""The pieces of the OpenAPI parts: schema files with their placeholders filled, the model routes."""

import pytest

from imgclf.core import export_names as names
from imgclf.service.protocols.openapi_parts import Context, model_routes, schemas_file

TFSERVING = "imgclf.service.protocols.tfserving"


def test_a_schema_file_gets_its_values():
    schemas = schemas_file(TFSERVING, "openapi_schemas.yaml", max_instances=7, signatures=["a", "b"])
    request = schemas["TFServingPredictRequest"]["properties"]
    assert request["instances"]["maxItems"] == 7  # a number stays a number
    assert request["signature_name"] == {"type": "string", "enum": ["a", "b"], "default": names.SERVING_SIGNATURE}
    named = request["instances"]["items"]["anyOf"][1]
    assert named["required"] == [names.IMAGE_BYTES_KEY] and list(named["properties"]) == [names.IMAGE_BYTES_KEY]
    v2 = schemas_file("imgclf.service.protocols.v2", "openapi_schemas.yaml", max_instances=7)
    assert v2["V2InferRequest"]["description"].endswith("N is at most 7.")  # within text, as text


def test_a_placeholder_without_a_value_is_an_error():
    with pytest.raises(KeyError, match="signatures"):
        schemas_file(TFSERVING, "openapi_schemas.yaml", max_instances=7)


def test_a_filled_schema_shares_nothing_with_the_next():
    first = schemas_file(TFSERVING, "openapi_schemas.yaml", max_instances=7, signatures=["a"])
    first["B64"]["required"].append("changed")
    first["TFServingPredictRequest"]["properties"]["signature_name"]["enum"].append("changed")
    again = schemas_file(TFSERVING, "openapi_schemas.yaml", max_instances=7, signatures=["a"])
    assert again["B64"]["required"] == ["b64"]
    assert again["TFServingPredictRequest"]["properties"]["signature_name"]["enum"] == ["a"]


def test_model_routes_name_the_model_by_version_and_label():
    routes = model_routes(Context(example_name="shapes", max_instances=4), labels=True)
    assert [r.suffix for r in routes] == ["", "/versions/{version}", "/labels/{label}"]
    assert routes[0].parameters[0]["example"] == "shapes"
    assert [r.lookup_errors for r in routes] == [("404", "503")] + [("400", "404", "503")] * 2
    assert len(model_routes(Context(example_name="shapes", max_instances=4))) == 2
