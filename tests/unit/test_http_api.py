"""The HTTP API at its edge, over a fully faked service."""

import json
import re

import pytest
from fastapi.testclient import TestClient

from shared.entrypoints.api import create_api
from shared.entrypoints.dashboard import ASSETS as DASHBOARD_ASSETS
from tests.conftest import SETTINGS

SENDER = {"Authorization": "Bearer test-sender"}
OPERATOR = {"Authorization": "Bearer test-operator"}
EVENTGRID = {"Authorization": "Bearer test-eventgrid"}
EMAIL = {"channel": "email", "to": ["a@example.com"], "subject": "Receipt", "text": "Thanks"}
SMS = {"channel": "sms", "to": ["+14255551234"], "message": "Code 123456"}


@pytest.fixture
def client(faked_services):
    return TestClient(create_api(), raise_server_exceptions=False)


def post(client, body, headers=SENDER, **kwargs):
    return client.post("/api/notifications", json=body, headers=headers, **kwargs)


def test_an_email_is_accepted_with_its_id_and_location(client, faked_services):
    response = post(client, EMAIL)

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"
    assert response.headers["location"] == f"/api/notifications/{body['id']}"
    assert len(faked_services.queue.sent) == 1


def test_a_notification_can_be_read_back_with_its_recipients_and_history(client):
    created = post(client, EMAIL | {"cc": [{"address": "c@example.com", "displayName": "C"}]}).json()

    response = client.get(created["location"], headers=OPERATOR)

    assert response.status_code == 200
    body = response.json()
    assert [(r["address"], r["kind"], r["status"]) for r in body["recipients"]] == [
        ("a@example.com", "to", "pending"),
        ("c@example.com", "cc", "pending"),
    ]
    assert [h["event"] for h in body["history"]] == ["accepted", "queued"]
    assert body["subject"] == "Receipt"


def test_an_unknown_notification_is_404_as_problem_details(client):
    response = client.get("/api/notifications/nope", headers=SENDER)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({**EMAIL, "channel": "pigeon"}, "/channel"),
        ({**EMAIL, "to": []}, "/to"),
        ({k: v for k, v in EMAIL.items() if k != "to"}, "/to"),
        ({**EMAIL, "to": ["not-an-address"]}, "/to/0/address"),
        ({**EMAIL, "cc": [{"address": "x@@example.com"}]}, "/cc/0/address"),
        ({**EMAIL, "text": None}, "/"),
        ({**EMAIL, "subject": "  "}, "/subject"),
        ({**EMAIL, "subject": "Hi\r\nBcc: victim@example.com"}, "/subject"),
        ({**EMAIL, "sender": "someone@evil.example"}, "/sender"),
        ({**EMAIL, "priority": "high"}, "/priority"),
        ({**EMAIL, "to": ["a@example.com", "A@example.com"]}, "/to"),
        ({**SMS, "to": ["4255551234"]}, "/to"),
        ({**SMS, "to": ["+1425555"]}, "/to"),
        ({**SMS, "message": ""}, "/message"),
        ({**SMS, "sender": "+18005550199"}, "/sender"),
    ],
)
def test_invalid_requests_are_422_naming_the_field_and_queue_nothing(client, faked_services, body, field):
    response = post(client, body)

    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in problem["errors"]], problem
    assert faked_services.queue.sent == [] and faked_services.ledger.rows == {}


def test_malformed_json_is_400(client, faked_services):
    response = client.post("/api/notifications", content=b"{not json", headers=SENDER | {"Content-Type": "application/json"})
    assert response.status_code == 400
    assert faked_services.queue.sent == []


def test_a_body_that_is_not_json_is_415(client, faked_services):
    response = client.post("/api/notifications", content=b"to=a", headers=SENDER | {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert faked_services.queue.sent == []


def test_a_body_over_the_limit_is_413(client, faked_services):
    response = post(client, EMAIL | {"text": "x" * 5000})
    assert response.status_code == 413
    assert faked_services.queue.sent == []


def test_a_missing_token_is_401_and_an_unknown_one_too(client):
    assert post(client, EMAIL, headers={}).status_code == 401
    assert post(client, EMAIL, headers={"Authorization": "Bearer guess"}).status_code == 401


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("post", "/api/notifications", OPERATOR),
        ("post", "/api/notifications", EVENTGRID),
        ("post", "/api/events", SENDER),
        ("post", "/api/events", OPERATOR),
        ("get", "/api/reconciliation", SENDER),
        ("get", "/api/notifications/x", EVENTGRID),
    ],
)
def test_a_caller_without_the_role_is_403(client, method, path, headers):
    response = getattr(client, method)(path, headers=headers, **({"json": EMAIL} if method == "post" else {}))
    assert response.status_code == 403


def test_only_health_and_the_dashboard_shell_are_anonymous(client):
    assert client.get("/api/health").status_code == 200
    # The dashboard's page, script and style hold no data (tests/unit/test_dashboard.py).
    anonymous = {"/api/health", "/api/openapi.json", "/api/docs", *DASHBOARD_ASSETS}
    for route in client.app.routes:
        path = getattr(route, "path", "")
        if path.startswith("/api/") and path not in anonymous:
            for method in route.methods - {"HEAD"}:
                assert client.request(method, path.replace("{notification_id}", "x")).status_code == 401, (method, path)


def test_the_same_idempotency_key_returns_the_same_notification(client, faked_services):
    first = post(client, EMAIL, headers=SENDER | {"Idempotency-Key": "order-42"})
    second = post(client, EMAIL, headers=SENDER | {"Idempotency-Key": "order-42"})

    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len(faked_services.queue.sent) == 1


def test_the_same_idempotency_key_with_another_body_is_409(client, faked_services):
    post(client, EMAIL, headers=SENDER | {"Idempotency-Key": "order-42"})
    response = post(client, EMAIL | {"subject": "Other"}, headers=SENDER | {"Idempotency-Key": "order-42"})

    assert response.status_code == 409
    assert len(faked_services.queue.sent) == 1


def test_event_grid_subscription_validation_is_answered(client):
    event = {
        "id": "1", "topic": "t", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "data": {"validationCode": "abc-123"}, "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1",
    }
    response = client.post("/api/events", json=[event], headers=EVENTGRID | {"aeg-event-type": "SubscriptionValidation"})
    assert response.status_code == 200
    assert response.json() == {"validationResponse": "abc-123"}


def test_the_cloudevents_abuse_protection_handshake_is_answered(client):
    response = client.options("/api/events", headers=EVENTGRID | {"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert response.status_code == 200
    assert response.headers["webhook-allowed-origin"] == "eventgrid.azure.net"


def test_a_cloudevents_batch_is_applied(client, faked_services):
    created = post(client, EMAIL).json()
    from shared.entrypoints.triggers import dispatch_queue_message

    dispatch_queue_message(json.dumps(faked_services.queue.sent[0].body))
    event = {
        "specversion": "1.0", "id": "ce-1", "type": "Microsoft.Communication.EmailDeliveryReportReceived",
        "source": SETTINGS["ACS_RESOURCE_ID"], "subject": "x", "time": "2026-01-01T00:00:00Z",
        "data": {"recipient": "a@example.com", "messageId": created["id"], "status": "Delivered"},
    }
    response = client.post("/api/events", json=[event], headers=EVENTGRID | {"Content-Type": "application/cloudevents-batch+json"})

    assert response.json()["applied"] == 1
    assert client.get(created["location"], headers=SENDER).json()["status"] == "delivered"


def test_reconciliation_counts_by_status_and_reports_the_failure_rate(client, faked_services):
    for _ in range(3):
        post(client, EMAIL)
    faked_services.clock.advance(1)
    response = client.get("/api/reconciliation", headers=OPERATOR, params={"channel": "email"})

    assert response.status_code == 200
    email = response.json()["channels"]["email"]
    assert (email["accepted"], email["pending"], email["sent"], email["failureRate"]) == (3, 3, 0, 0.0)


def test_the_openapi_document_describes_the_request_body(client):
    spec = client.get("/api/openapi.json").json()
    schema = spec["paths"]["/api/notifications"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    models = [spec["components"]["schemas"][s["$ref"].removeprefix("#/components/schemas/")] for s in schema["oneOf"]]
    assert {m["title"] for m in models} == {"EmailRequest", "SmsRequest"}


def test_every_reference_in_the_openapi_document_resolves(client):
    spec = client.get("/api/openapi.json").json()
    refs = set(re.findall(r'"\$ref":\s*"([^"]+)"', json.dumps(spec)))

    assert refs, "the document should refer to its component schemas"
    for ref in refs:
        target = spec
        for part in ref.removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        assert isinstance(target, dict), ref


OTHER_APP = {"Authorization": "Bearer other-app"}


def test_two_apps_using_the_same_idempotency_key_each_get_their_own_notification(client, faked_services):
    mine = post(client, EMAIL, headers=SENDER | {"Idempotency-Key": "order-42"})
    theirs = post(client, EMAIL | {"subject": "Theirs"}, headers=OTHER_APP | {"Idempotency-Key": "order-42"})

    assert theirs.status_code == 202 and theirs.headers["idempotent-replayed"] == "false"
    assert mine.json()["id"] != theirs.json()["id"]
    assert len(faked_services.queue.sent) == 2


def test_a_sender_cannot_read_another_apps_notification_but_an_operator_can(client):
    created = post(client, EMAIL).json()

    assert client.get(created["location"], headers=OTHER_APP).status_code == 404
    assert client.get(created["location"], headers=SENDER).status_code == 200
    assert client.get(created["location"], headers=OPERATOR).status_code == 200
