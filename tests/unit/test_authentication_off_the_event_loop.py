"""Checking a token may fetch the tenant's signing keys over the network; an async route that did
it on the event loop would stall every other request of that worker meanwhile. With dev keys only
(no tenant configured) there is nothing to fetch, and the check may run on the loop."""

import asyncio

import pytest
from fastapi.testclient import TestClient

from shared.entrypoints import api as api_module
from shared.entrypoints.api import create_api
from shared.entrypoints.auth import EntraTokenValidator

OPERATOR = {"Authorization": "Bearer test-operator"}
SENDER = {"Authorization": "Bearer test-sender"}
EMAIL = {"channel": "email", "to": ["ann@example.com"], "subject": "Hi", "text": "Hello"}


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize(
    "method, path, headers, body",
    [
        ("POST", "/api/notifications", SENDER, EMAIL),
        ("POST", "/api/notifications/batch", SENDER, {"notifications": [EMAIL]}),
        ("GET", "/api/admin/dashboard/data", OPERATOR, None),
        ("GET", "/api/admin/dead-letters", OPERATOR, None),
        ("GET", "/api/reconciliation", OPERATOR, None),
    ],
)
def test_routes_check_the_caller_off_the_event_loop(faked_services, monkeypatch, method, path, headers, body):
    where: list[bool] = []
    real = api_module.authenticate

    def recording(*args, **kwargs):
        where.append(on_event_loop())
        return real(*args, **kwargs)

    monkeypatch.setattr(api_module, "authenticate", recording)
    # A tenant is configured (its keys are never needed: the dev keys answer first).
    faked_services.entra_tokens = EntraTokenValidator(
        keys_url="http://127.0.0.1:9/keys", issuers=["https://issuer.example"], audiences=["api://notify"],
        role_map={}, cache_seconds=60, refresh_cooldown_seconds=60,
    )
    with TestClient(create_api(lambda: faked_services)) as client:
        response = client.request(method, path, headers=headers, json=body)

    assert response.status_code < 300, response.text
    assert where == [False]
