"""Notification requests put on the Service Bus requests queue: the same intake as the HTTP API."""

import json

import pytest
from fastapi.testclient import TestClient

from shared.domain.errors import AttachmentStoreUnavailable
from shared.domain.model import NotificationStatus
from shared.entrypoints import triggers
from shared.entrypoints.api import create_api
from tests.fakes import FakeLedger

SENDER = {"Authorization": "Bearer test-sender"}
OPERATOR = {"Authorization": "Bearer test-operator"}
EMAIL = {"channel": "email", "to": ["a@example.com"], "subject": "Receipt", "text": "Thanks"}
INVALID = {"channel": "email", "to": ["not-an-address"], "subject": "Hi\nthere", "text": "Thanks", "colour": "red"}


def message(body, message_id="m-1", correlation_id=None, **properties) -> triggers.RequestMessage:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return triggers.RequestMessage(body=raw, message_id=message_id, correlation_id=correlation_id, application_properties=properties)


def accept(services, msg):
    return triggers.accept_request_message(msg, services)


@pytest.fixture
def client(faked_services):
    return TestClient(create_api(), raise_server_exceptions=False)


class UnreachableLedger(FakeLedger):
    def add(self, notification):
        raise ConnectionError("the ledger cannot be reached")


# ------------------------------------------------------------------------------ accepted


def test_a_queued_request_is_recorded_and_queued_for_sending_like_a_posted_one(faked_services):
    outcome = accept(faked_services, message(EMAIL))

    assert isinstance(outcome, triggers.RequestAccepted) and outcome.created
    notification = faked_services.ledger.get(outcome.notification_id)
    assert notification.status is NotificationStatus.ACCEPTED
    assert [r.address for r in notification.recipients] == ["a@example.com"]
    [queued] = faked_services.queue.sent
    assert queued.body == {"notificationId": outcome.notification_id, "attempt": 1}


def test_a_queued_request_is_owned_by_the_queue_so_only_operators_read_it_over_http(faked_services, client):
    outcome = accept(faked_services, message(EMAIL))

    assert faked_services.ledger.get(outcome.notification_id).owner == "servicebus:notification-requests"
    assert client.get(f"/api/notifications/{outcome.notification_id}", headers=SENDER).status_code == 404
    assert client.get(f"/api/notifications/{outcome.notification_id}", headers=OPERATOR).status_code == 200


# ------------------------------------------------------------------------------ idempotency


def test_a_redelivered_request_creates_one_notification_and_queues_it_once(faked_services):
    first = accept(faked_services, message(EMAIL, message_id="m-1"))
    again = accept(faked_services, message(EMAIL, message_id="m-1"))

    assert again == triggers.RequestAccepted(first.notification_id, created=False)
    assert len(faked_services.ledger.rows) == 1
    assert len(faked_services.queue.sent) == 1


def test_the_idempotency_key_property_makes_two_messages_one_notification(faked_services):
    first = accept(faked_services, message(EMAIL, message_id="m-1", **{"Idempotency-Key": "order-42"}))
    second = accept(faked_services, message(EMAIL, message_id="m-2", **{"Idempotency-Key": "order-42"}))

    assert second.notification_id == first.notification_id and not second.created
    assert len(faked_services.ledger.rows) == 1


def test_without_an_idempotency_key_two_messages_with_different_ids_are_two_notifications(faked_services):
    first = accept(faked_services, message(EMAIL, message_id="m-1"))
    second = accept(faked_services, message(EMAIL, message_id="m-2"))

    assert first.notification_id != second.notification_id


def test_messages_without_an_id_or_a_key_are_not_taken_for_one_another(faked_services):
    first = accept(faked_services, message(EMAIL, message_id=""))
    second = accept(faked_services, message(EMAIL, message_id=""))

    assert first.notification_id != second.notification_id


def test_a_key_reused_with_another_body_is_refused_as_a_conflict_and_queues_nothing_more(faked_services):
    first = accept(faked_services, message(EMAIL, message_id="m-1", **{"Idempotency-Key": "k"}))
    outcome = accept(faked_services, message(EMAIL | {"text": "Other"}, message_id="m-2", **{"Idempotency-Key": "k"}))

    assert isinstance(outcome, triggers.RequestRefused) and outcome.reason == "IdempotencyConflict"
    assert json.loads(outcome.description)["existingId"] == first.notification_id
    assert len(faked_services.queue.sent) == 1


def test_a_queued_key_and_a_posted_key_never_collide(faked_services, client):
    posted = client.post("/api/notifications", json=EMAIL, headers=SENDER | {"Idempotency-Key": "k"}).json()
    queued = accept(faked_services, message(EMAIL, **{"Idempotency-Key": "k"}))

    assert queued.created and queued.notification_id != posted["id"]


# ------------------------------------------------------------------------------ refused


def test_an_invalid_request_is_refused_with_the_same_field_errors_as_the_http_422(faked_services, client):
    http = client.post("/api/notifications", json=INVALID, headers=SENDER)
    outcome = accept(faked_services, message(INVALID))

    assert http.status_code == 422
    assert isinstance(outcome, triggers.RequestRefused) and outcome.reason == "ValidationFailed"
    problem = json.loads(outcome.description)
    assert problem["errors"] == http.json()["errors"]
    assert {e["field"] for e in problem["errors"]} >= {"/to/0/address", "/subject", "/colour"}
    assert (problem["status"], problem["type"]) == (422, http.json()["type"])


@pytest.mark.parametrize(
    "body",
    [
        {"channel": "fax", "to": ["+14255551234"]},
        ["not", "an", "object"],
        {"channel": "sms", "to": ["4255551234", "+14255551234", "+14255551234"], "message": ""},
        {"channel": "sms", "to": ["+14255551234"], "message": "Hi", "attachments": [], "sender": "+18005550199"},
        {"channel": "email", "to": [], "subject": "", "cc": ["x@"]},
        {"channel": "email", "to": ["a@example.com"], "template": {"name": "no-such-template"}},
        {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "x", "properties": {"n": None}, "correlationId": 7},
    ],
    ids=["unknown-channel", "not-an-object", "bad-sms", "sms-extras", "empty-email", "unknown-template", "bad-envelope"],
)
def test_every_kind_of_invalid_body_gets_the_same_errors_from_the_queue_as_from_http(faked_services, client, body):
    http = client.post("/api/notifications", json=body, headers=SENDER)
    outcome = accept(faked_services, message(body))

    assert http.status_code == 422
    assert json.loads(outcome.description)["errors"] == http.json()["errors"]


def test_a_refused_request_stores_and_queues_nothing(faked_services):
    accept(faked_services, message(INVALID))

    assert faked_services.ledger.rows == {}
    assert faked_services.queue.sent == []


def test_a_body_that_is_not_json_is_refused_naming_the_body(faked_services):
    outcome = accept(faked_services, message(b"{not json"))

    assert outcome.reason == "ValidationFailed"
    [error] = json.loads(outcome.description)["errors"]
    assert error["field"] == "/" and "not valid JSON" in error["message"]


def test_a_body_over_the_request_size_limit_is_refused(faked_services):
    big = EMAIL | {"text": "x" * faked_services.settings.max_request_bytes}

    outcome = accept(faked_services, message(big))

    assert outcome.reason == "ValidationFailed"
    assert "larger than" in json.loads(outcome.description)["errors"][0]["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"channel":"email","to":["a@example.com"],"subject":"Hi","text":"x","properties":{"k":"\\ud800"}}',
        b'{"channel":"email","to":["a@example.com"],"subject":"Hi","text":"x","correlationId":"ab\\udc00"}',
        b'{"channel":"email","to":["a@example.com"],"subject":"Hi","text":"\\ud800"}',
    ],
)
def test_a_body_with_a_lone_surrogate_is_refused_once_not_redelivered_until_dead_lettered(faked_services, raw):
    outcome = accept(faked_services, message(raw))

    assert isinstance(outcome, triggers.RequestRefused) and outcome.reason == "ValidationFailed"
    [error] = json.loads(outcome.description)["errors"]
    assert error["field"] == "/" and "lone surrogate" in error["message"]
    assert faked_services.ledger.rows == {}
    assert faked_services.queue.sent == []


def test_an_embedded_queue_document_is_checked_like_a_body(faked_services):
    surrogate = triggers.RequestMessage(body=EMAIL | {"properties": {"k": "\ud800"}}, message_id="m-d1")
    too_big = triggers.RequestMessage(body=EMAIL | {"text": "x" * faked_services.settings.max_request_bytes}, message_id="m-d2")

    refused = accept(faked_services, surrogate)
    assert refused.reason == "ValidationFailed" and "lone surrogate" in refused.description
    refused = accept(faked_services, too_big)
    assert refused.reason == "ValidationFailed" and "larger than" in refused.description
    assert faked_services.ledger.rows == {}


def test_an_application_property_with_a_lone_surrogate_is_a_field_error(faked_services):
    outcome = accept(faked_services, message(EMAIL, tenant="a\ud800"))

    assert outcome.reason == "ValidationFailed"
    assert [e["field"] for e in json.loads(outcome.description)["errors"]] == ["/properties/tenant"]


def test_an_idempotency_key_property_that_is_too_long_is_a_field_error(faked_services):
    outcome = accept(faked_services, message(EMAIL, **{"Idempotency-Key": "k" * 201}))

    assert [e["field"] for e in json.loads(outcome.description)["errors"]] == ["Idempotency-Key"]


def test_a_description_with_too_many_errors_is_cut_to_fit_and_says_how_many_were_left_out(faked_services):
    body = {"channel": "sms", "to": ["+14255551234"], "message": "Hi"} | {f"unknown_field_{i:03}": 1 for i in range(100)}

    outcome = accept(faked_services, message(body))

    problem = json.loads(outcome.description)
    assert len(outcome.description) <= triggers.MAX_DESCRIPTION_LENGTH
    assert problem["errorsOmitted"] > 0
    assert len(problem["errors"]) + problem["errorsOmitted"] == 100


# ------------------------------------------------------------------------------ transient failures


def test_a_ledger_that_cannot_be_reached_raises_so_the_message_is_delivered_again(faked_services):
    faked_services.ledger = UnreachableLedger()

    with pytest.raises(ConnectionError):
        accept(faked_services, message(EMAIL))
    assert faked_services.queue.sent == []


def test_an_attachment_store_that_cannot_be_reached_raises_rather_than_refusing(faked_services):
    faked_services.attachments.failures.append(AttachmentStoreUnavailable("the store cannot be reached"))
    body = EMAIL | {"attachments": [{"name": "a.pdf", "contentType": "application/pdf", "contentBase64": "JVBERi0x"}]}

    with pytest.raises(AttachmentStoreUnavailable):
        accept(faked_services, message(body))


# ------------------------------------------------------------------------------ correlation and properties


def test_the_messages_correlation_id_and_properties_are_kept_as_strings_without_the_key_or_tracing(faked_services, client):
    msg = message(
        EMAIL, correlation_id="order-42",
        **{"Idempotency-Key": "k", "tenant": "contoso", "priority": 3, "urgent": True, "Diagnostic-Id": "00-abc-01"},
    )

    outcome = accept(faked_services, msg)

    view = client.get(f"/api/notifications/{outcome.notification_id}", headers=OPERATOR).json()
    assert view["correlationId"] == "order-42"
    assert view["properties"] == {"tenant": "contoso", "priority": "3", "urgent": "true"}


def test_a_correlation_id_in_the_body_is_used_when_the_message_has_none(faked_services):
    outcome = accept(faked_services, message(EMAIL | {"correlationId": "from-body", "properties": {"a": "1"}}))

    notification = faked_services.ledger.get(outcome.notification_id)
    assert (notification.correlation_id, notification.caller_properties) == ("from-body", {"a": "1"})


def test_too_many_application_properties_are_a_field_error(faked_services):
    outcome = accept(faked_services, message(EMAIL, **{f"p{i}": "v" for i in range(21)}))

    assert outcome.reason == "ValidationFailed"
    assert [e["field"] for e in json.loads(outcome.description)["errors"]] == ["/properties"]


# ------------------------------------------------------------------------------ the same on HTTP


def test_a_posted_notification_keeps_the_correlation_header_and_its_properties(client):
    created = client.post(
        "/api/notifications",
        json=EMAIL | {"correlationId": "ignored-for-the-header", "properties": {"tenant": "contoso", "n": 2}},
        headers=SENDER | {"X-Correlation-Id": "req-7"},
    ).json()

    view = client.get(created["location"], headers=SENDER).json()
    assert view["correlationId"] == "req-7"
    assert view["properties"] == {"tenant": "contoso", "n": "2"}


def test_properties_that_are_not_strings_numbers_or_booleans_are_a_422(client):
    response = client.post("/api/notifications", json=EMAIL | {"properties": {"nested": {"a": 1}}}, headers=SENDER)

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["/properties/nested"]


def test_a_correlation_id_with_a_line_break_is_a_422(client):
    response = client.post("/api/notifications", json=EMAIL | {"correlationId": "a\nb"}, headers=SENDER)

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["/correlationId"]


def test_correlation_and_properties_are_not_part_of_the_body_an_idempotency_key_compares(client):
    headers = SENDER | {"Idempotency-Key": "same"}
    first = client.post("/api/notifications", json=EMAIL | {"correlationId": "try-1"}, headers=headers)
    retry = client.post("/api/notifications", json=EMAIL | {"correlationId": "try-2"}, headers=headers)

    assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]


def test_a_batch_item_may_carry_its_own_correlation_id(client):
    response = client.post(
        "/api/notifications/batch", json={"notifications": [EMAIL | {"correlationId": "item-0"}]}, headers=SENDER
    )

    [result] = response.json()["results"]
    assert client.get(result["location"], headers=SENDER).json()["correlationId"] == "item-0"
