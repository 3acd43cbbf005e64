"""Schemathesis against the API's own OpenAPI document (/api/openapi.json), in process, over faked
services: valid and invalid requests to every operation, authenticated with the dev key of a role
the operation accepts. No request may produce a 5xx, a status code the document does not declare,
or a body or content type that does not match it. A stateful run follows the document's links
(a notification accepted, then read back), which random ids alone never reach.

``FUZZ_EXAMPLES`` (default 25 per operation and mode) makes a longer run, e.g.
``FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_openapi_fuzz.py``.
"""

from __future__ import annotations

import collections
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
    case.call_and_validate(headers=auth(case), checks=CHECKS)


def auth(case) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role_for(case.method, case.path)]}"}


# Valid requests only: a workflow needs its first step accepted to have a second. Only the
# notification routes, so its steps are not spent on the operators' links.
workflow_schema = schemathesis.openapi.from_asgi("/api/openapi.json", create_api(lambda: SERVICES)).include(
    path_regex="^/api/notifications"
)
workflow_schema.config.generation.update(modes=["positive"], max_examples=EXAMPLES, deterministic=True)


class NotificationWorkflow(workflow_schema.as_state_machine()):  # type: ignore[misc]
    answered: collections.Counter = collections.Counter()

    def get_call_kwargs(self, case):
        return {"headers": auth(case)}

    def after_call(self, response, case):
        self.answered[(case.method, case.path, response.status_code)] += 1

    def validate_response(self, response, case, additional_checks=None, **kwargs):
        case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)


def test_accepted_notifications_read_back_as_the_document_describes():
    NotificationWorkflow.run(
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=4,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )
    # The workflow must have reached the happy path, or it proved nothing about it.
    assert NotificationWorkflow.answered[("GET", "/api/notifications/{notification_id}", 200)] > 0, NotificationWorkflow.answered
