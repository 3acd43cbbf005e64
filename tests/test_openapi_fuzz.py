"""Schemathesis against the API's own OpenAPI document (/api/openapi.json), in process, over faked
services: valid and invalid requests to every operation, authenticated with the dev key of a role
the operation accepts. No request may produce a 5xx, a status code the document does not declare,
or a body or content type that does not match it.

``FUZZ_EXAMPLES`` (default 25 per operation and mode) makes a longer run, e.g.
``FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_openapi_fuzz.py``.
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.entrypoints.api import create_api
from tests.conftest import fake_services

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

#: The dev key (tests/conftest.py SETTINGS) for a role each operation accepts.
KEYS = {"sender": "test-sender", "operator": "test-operator", "eventgrid": "test-eventgrid"}


def role_for(method: str, path: str) -> str:
    if path.startswith("/api/events"):
        return "eventgrid"
    if path.startswith("/api/notifications"):
        return "sender"
    return "operator"


# Built at import, as schemathesis loads the document eagerly (its fixture-based loader does not
# run under pytest 9). The services are the faked ones of the unit tests, kept for the module.
SERVICES = fake_services()
schema = schemathesis.openapi.from_asgi("/api/openapi.json", create_api(lambda: SERVICES))
# Invalid requests too: they must end in a declared 4xx problem, never a 5xx.
schema.config.generation.update(modes=["positive", "negative"], max_examples=EXAMPLES, deterministic=True)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_request_the_document_allows_gets_a_5xx_or_an_undocumented_response(case):
    key = KEYS[role_for(case.method, case.path)]
    case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
