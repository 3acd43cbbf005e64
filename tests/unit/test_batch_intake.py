"""POST /api/notifications/batch: up to 100 notifications in one request, each validated, made
idempotent and answered on its own, as if it had been sent alone."""

import base64

import pytest
from fastapi.testclient import TestClient

from shared.config import Settings
from shared.domain.errors import AttachmentStoreUnavailable
from shared.entrypoints.api import create_api
from shared.entrypoints.schemas import parse_notification_request
from shared.service import handlers
from tests.conftest import SETTINGS

SENDER = {"Authorization": "Bearer test-sender"}
OTHER_APP = {"Authorization": "Bearer other-app"}
OPERATOR = {"Authorization": "Bearer test-operator"}
EVENTGRID = {"Authorization": "Bearer test-eventgrid"}
EMAIL = {"channel": "email", "to": ["a@example.com"], "subject": "Receipt", "text": "Thanks"}
SMS = {"channel": "sms", "to": ["+14255551234"], "message": "Code 123456"}
BATCH = "/api/notifications/batch"
LIMIT = 64 * 1024


@pytest.fixture
def client(faked_services):
    # A hundred notifications need more room than the 4 KiB the single-request tests run with.
    faked_services.settings = Settings(**SETTINGS | {"MAX_REQUEST_BYTES": str(LIMIT)})
    return TestClient(create_api(), raise_server_exceptions=False)


def post_batch(client, items, headers=SENDER, **kwargs):
    return client.post(BATCH, json={"notifications": items}, headers=headers, **kwargs)


def email_to(address: str, **changes) -> dict:
    return EMAIL | {"to": [address]} | changes


def queued_ids(services) -> list[str]:
    return [m.body["notificationId"] for m in services.queue.sent]


def nothing_was_kept(services) -> bool:
    return not services.queue.sent and not services.ledger.rows


# ---------------------------------------------------------------------------- per-item results


def test_mixed_valid_and_invalid_items_get_results_in_order_and_only_the_valid_ones_are_queued(client, faked_services):
    items = [
        email_to("first@example.com"),
        {**EMAIL, "to": ["not-an-address"]},
        SMS,
        {**EMAIL, "channel": "pigeon"},
        "not an object",
        email_to("last@example.com"),
    ]

    response = post_batch(client, items)

    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4, 5]
    assert [r["status"] for r in results] == [202, 422, 202, 422, 422, 202]
    assert (body["accepted"], body["failed"]) == (3, 3)
    accepted = [r for r in results if r["status"] == 202]
    assert queued_ids(faked_services) == [r["id"] for r in accepted]
    assert set(faked_services.ledger.rows) == {r["id"] for r in accepted}
    for r in accepted:
        assert r["location"] == f"/api/notifications/{r['id']}" and r["idempotentReplayed"] is False
        assert "problem" not in r


def test_an_invalid_item_is_an_rfc_9457_problem_naming_its_fields_as_the_single_route_would(client):
    single = client.post("/api/notifications", json={**EMAIL, "to": ["not-an-address"], "priority": "high"}, headers=SENDER).json()

    [result] = post_batch(client, [{**EMAIL, "to": ["not-an-address"], "priority": "high"}]).json()["results"]

    assert result["status"] == 422 and "id" not in result and "location" not in result
    assert result["problem"] == single
    assert result["problem"]["type"] == "urn:notify:problem:validation" and result["problem"]["status"] == 422
    assert {e["field"] for e in result["problem"]["errors"]} == {"/to/0/address", "/priority"}


def test_accepted_items_are_stored_as_a_single_request_would_store_them(client, faked_services):
    [result] = post_batch(client, [EMAIL | {"cc": ["c@example.com"], "metadata": {"order": "A-42"}}]).json()["results"]

    view = client.get(result["location"], headers=SENDER).json()

    assert view["status"] == "accepted" and view["subject"] == "Receipt" and view["metadata"] == {"order": "A-42"}
    assert [(r["address"], r["kind"]) for r in view["recipients"]] == [("a@example.com", "to"), ("c@example.com", "cc")]
    assert [h["event"] for h in view["history"]] == ["accepted", "queued"]
    single = client.post("/api/notifications", json=EMAIL, headers=SENDER).json()
    assert faked_services.ledger.rows[result["id"]].owner == faked_services.ledger.rows[single["id"]].owner


def test_a_batch_of_a_hundred_is_accepted_in_one_request(client, faked_services):
    response = post_batch(client, [email_to(f"user{i}@example.com") for i in range(100)])

    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json()["accepted"] == 100
    assert len(faked_services.queue.sent) == 100
    assert all(n.queued_at is not None for n in faked_services.ledger.rows.values())


def test_an_item_whose_attachments_cannot_be_stored_is_503_and_the_others_are_accepted(client, faked_services):
    pdf = base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()
    with_attachment = EMAIL | {"attachments": [{"name": "a.pdf", "contentType": "application/pdf", "contentBase64": pdf}]}
    faked_services.attachments.failures.append(AttachmentStoreUnavailable("blob service down"))

    results = post_batch(client, [with_attachment, email_to("b@example.com")]).json()["results"]

    assert [r["status"] for r in results] == [503, 202]
    assert results[0]["problem"]["status"] == 503
    assert queued_ids(faked_services) == [results[1]["id"]]


# ---------------------------------------------------------------------------- idempotency


def test_the_same_idempotency_key_with_the_same_body_in_a_later_batch_returns_the_same_notification(client, faked_services):
    item = EMAIL | {"idempotencyKey": "order-42"}
    [first] = post_batch(client, [item]).json()["results"]
    [second] = post_batch(client, [item]).json()["results"]

    assert second["status"] == 202 and second["id"] == first["id"]
    assert (first["idempotentReplayed"], second["idempotentReplayed"]) == (False, True)
    assert len(faked_services.queue.sent) == 1


def test_the_same_idempotency_key_twice_in_one_batch_creates_and_queues_one_notification(client, faked_services):
    item = EMAIL | {"idempotencyKey": "order-42"}

    first, second = post_batch(client, [item, item]).json()["results"]

    assert first["id"] == second["id"]
    assert (first["idempotentReplayed"], second["idempotentReplayed"]) == (False, True)
    assert queued_ids(faked_services) == [first["id"]]
    assert [h.event for h in faked_services.ledger.rows[first["id"]].history] == ["accepted", "queued"]


def test_the_same_idempotency_key_with_another_body_is_a_409_item_and_the_rest_of_the_batch_goes_on(client, faked_services):
    [original] = post_batch(client, [EMAIL | {"idempotencyKey": "order-42"}]).json()["results"]

    response = post_batch(client, [EMAIL | {"subject": "Other", "idempotencyKey": "order-42"}, email_to("b@example.com")])

    conflict, other = response.json()["results"]
    assert conflict["status"] == 409 and "id" not in conflict
    assert conflict["problem"]["type"] == "urn:notify:problem:conflict"
    assert conflict["problem"]["existingId"] == original["id"]
    assert other["status"] == 202
    assert (response.json()["accepted"], response.json()["failed"]) == (1, 1)
    assert queued_ids(faked_services) == [original["id"], other["id"]]


def test_an_item_key_and_the_single_routes_header_are_the_same_key(client, faked_services):
    single = client.post("/api/notifications", json=EMAIL, headers=SENDER | {"Idempotency-Key": "order-42"}).json()

    [replayed, conflict] = post_batch(
        client, [EMAIL | {"idempotencyKey": "order-42"}, EMAIL | {"subject": "Other", "idempotencyKey": "order-42"}]
    ).json()["results"]

    assert replayed["id"] == single["id"] and replayed["idempotentReplayed"] is True
    assert conflict["status"] == 409
    assert len(faked_services.queue.sent) == 1


def test_idempotency_keys_are_scoped_to_the_caller_in_a_batch_too(client, faked_services):
    [mine] = post_batch(client, [EMAIL | {"idempotencyKey": "order-42"}]).json()["results"]
    [theirs] = post_batch(client, [EMAIL | {"subject": "Theirs", "idempotencyKey": "order-42"}], headers=OTHER_APP).json()["results"]

    assert theirs["status"] == 202 and theirs["id"] != mine["id"] and theirs["idempotentReplayed"] is False


@pytest.mark.parametrize("key", ["", "k" * 201, 42, None, ["order-42"]])
def test_an_idempotency_key_that_is_not_a_string_of_1_to_200_characters_is_a_422_item(client, faked_services, key):
    [result] = post_batch(client, [EMAIL | {"idempotencyKey": key}]).json()["results"]

    assert result["status"] == 422
    assert [e["field"] for e in result["problem"]["errors"]] == ["/idempotencyKey"]
    assert nothing_was_kept(faked_services)


def test_a_bad_idempotency_key_is_reported_with_the_items_other_errors(client):
    [result] = post_batch(client, [{**EMAIL, "to": ["nope"], "idempotencyKey": ""}]).json()["results"]

    assert [e["field"] for e in result["problem"]["errors"]] == ["/idempotencyKey", "/to/0/address"]


def test_an_idempotency_key_of_200_characters_is_accepted(client):
    [result] = post_batch(client, [EMAIL | {"idempotencyKey": "k" * 200}]).json()["results"]
    assert result["status"] == 202


def test_an_idempotency_key_header_on_the_batch_route_is_422_rather_than_silently_ignored(client, faked_services):
    response = post_batch(client, [EMAIL], headers=SENDER | {"Idempotency-Key": "batch-1"})

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["Idempotency-Key"]
    assert nothing_was_kept(faked_services)


# ---------------------------------------------------------------------------- the request as a whole


def test_more_than_a_hundred_items_is_422_and_nothing_is_queued(client, faked_services):
    response = post_batch(client, [email_to(f"user{i}@example.com") for i in range(101)])

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == ["/notifications"]
    assert nothing_was_kept(faked_services)


def test_an_empty_list_is_422(client, faked_services):
    response = post_batch(client, [])

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["/notifications"]
    assert nothing_was_kept(faked_services)


@pytest.mark.parametrize(
    "body, field",
    [
        ([EMAIL], "/"),
        ("notifications", "/"),
        ({}, "/notifications"),
        ({"notifications": EMAIL}, "/notifications"),
        ({"notifications": None}, "/notifications"),
        ({"notifications": [EMAIL], "dryRun": True}, "/dryRun"),
    ],
)
def test_a_body_that_is_not_an_object_with_a_notifications_list_is_422(client, faked_services, body, field):
    response = client.post(BATCH, json=body, headers=SENDER)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]
    assert nothing_was_kept(faked_services)


def test_malformed_json_is_400(client, faked_services):
    response = client.post(BATCH, content=b'{"notifications": [', headers=SENDER | {"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert nothing_was_kept(faked_services)


def test_a_body_that_is_not_json_is_415(client, faked_services):
    response = client.post(BATCH, content=b"notifications=a", headers=SENDER | {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert nothing_was_kept(faked_services)


def test_a_body_over_the_limit_is_413_even_when_every_item_is_small(client, faked_services):
    items = [email_to(f"user{i}@example.com", text="x" * 1000) for i in range(70)]

    response = post_batch(client, items)

    assert response.status_code == 413
    assert nothing_was_kept(faked_services)


# ---------------------------------------------------------------------------- who may send


def test_a_missing_token_is_401_and_an_unknown_one_too(client, faked_services):
    assert post_batch(client, [EMAIL], headers={}).status_code == 401
    assert post_batch(client, [EMAIL], headers={"Authorization": "Bearer guess"}).status_code == 401
    assert nothing_was_kept(faked_services)


@pytest.mark.parametrize("headers", [OPERATOR, EVENTGRID])
def test_a_caller_without_the_sender_role_is_403(client, faked_services, headers):
    response = post_batch(client, [EMAIL], headers=headers)

    assert response.status_code == 403
    assert nothing_was_kept(faked_services)


def test_the_caller_is_checked_before_the_body_is_read(client):
    response = client.post(BATCH, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 401


# ---------------------------------------------------------------------------- the OpenAPI document


def test_the_openapi_document_describes_the_batch_body_by_reference_to_the_single_request(client):
    spec = client.get("/api/openapi.json").json()
    operation = spec["paths"][BATCH]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]

    notifications = schema["properties"]["notifications"]
    assert (notifications["minItems"], notifications["maxItems"]) == (1, 100)
    [ref] = notifications["items"]["allOf"]
    target = spec
    for part in ref["$ref"].removeprefix("#/").split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    assert target is spec["paths"]["/api/notifications"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert notifications["items"]["properties"]["idempotencyKey"]["maxLength"] == 200
    result = operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["results"]["items"]
    assert set(result["properties"]) == {"index", "status", "id", "location", "idempotentReplayed", "problem"}


# ---------------------------------------------------------------------------- the handler


def command(services, body, key=None):
    return parse_notification_request(body, settings=services.settings, idempotency_key=key, caller="sender")


def test_a_notification_a_dispatcher_changed_before_its_queued_mark_is_still_marked_queued(faked_services):
    """The marks are written after the messages are sent: a dispatcher that took a message at
    once may have written first, and the mark then goes through a fresh read."""
    services = faked_services
    publish = services.queue.send

    def send_and_let_a_dispatcher_write(message):
        publish(message)
        stored = services.ledger.get(message.body["notificationId"])
        stored.attempts += 1
        services.ledger.save(stored)

    services.queue.send = send_and_let_a_dispatcher_write
    outcomes = handlers.submit_notifications(
        [command(services, email_to(f"user{i}@example.com")) for i in range(3)],
        ledger=services.ledger, publisher=services.queue, attachments=services.attachments, clock=services.clock,
    )

    assert [created for _, created in outcomes] == [True, True, True]
    for notification, _ in outcomes:
        stored = services.ledger.rows[notification.id]
        assert stored.queued_at is not None and stored.attempts == 1
        assert notification.version == stored.version


def test_a_queue_failure_leaves_every_recorded_notification_for_the_reconciliation_to_queue(faked_services):
    services = faked_services
    cmds = [command(services, email_to(f"user{i}@example.com")) for i in range(3)]

    def unreachable(messages):
        raise ConnectionError("queue unreachable")

    services.queue.send_many = unreachable
    with pytest.raises(ConnectionError):
        handlers.submit_notifications(
            cmds, ledger=services.ledger, publisher=services.queue, attachments=services.attachments, clock=services.clock
        )

    # All three are recorded and none is marked queued: the reconciliation's sweep for
    # notifications never queued picks them up (a copy the queue did take is absorbed later).
    assert len(services.ledger.rows) == 3
    assert all(n.queued_at is None for n in services.ledger.rows.values())
    services.clock.advance(300)
    assert len(services.ledger.unqueued(accepted_before=services.clock.now(), limit=10)) == 3
