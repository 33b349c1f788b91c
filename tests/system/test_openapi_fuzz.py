"""Property-based: requests generated from the OpenAPI document never get a 5xx, and every answer fits it.

schemathesis generates requests for every operation of the document the app
serves — schema-valid and invalid ones, the document's examples, boundary
values — sends them to the Flask app in process (WSGI, no socket) and checks
each response's status, media type and body against the document. Bounded
and derandomized, so a run is reproducible and takes seconds.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from imgclf.service import create_app
from imgclf.service.protocols.openapi import document

MAX_INSTANCES = 3  # small: generated arrays cross the 413 limit, and each request stays cheap
# The document as the test app serves it (checked below); loaded at import because schemathesis's
# fixture-based loader (from_fixture) fails under pytest 9 (it sets Function._nodeid).
DOCUMENT = document(["shapes"], max_instances=MAX_INSTANCES)
# An explicit config: a schemathesis.toml lying around must not change what this test does.
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig())
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]


@pytest.fixture(scope="module")
def app(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False,
                      "max_instances": MAX_INSTANCES})
    yield app
    app.extensions["imgclf.models"].close()


def test_the_fuzzed_document_is_the_served_one(app):
    assert app.test_client().get("/openapi.json").get_json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers_and_no_5xx(case, app):
    case.call_and_validate(app=app, checks=CHECKS)
