"""The local stack, driven over HTTP the way a user drives it."""

import base64
import hashlib
import uuid

import httpx
import pytest

from tests.e2e.stack import EVENTGRID, OPERATOR, LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LocalStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


def unique(local: str = "user") -> str:
    return f"{local}+{uuid.uuid4().hex[:8]}@example.com"


def emails_to(stack, address: str) -> list[dict]:
    return [m for m in stack.emulator_messages("email") if address in str(m)]


def test_an_email_reaches_delivered_with_its_history(stack):
    address = unique()
    accepted = stack.send({"channel": "email", "to": [address], "subject": "Receipt", "text": "Thanks", "html": "<p>Thanks</p>"})
    assert accepted.status_code == 202

    notification = stack.wait_for_status(accepted.json()["id"], "delivered")

    [recipient] = notification["recipients"]
    assert recipient["status"] == "delivered" and recipient["messageId"] == notification["id"]
    assert [h["event"] for h in notification["history"]] == ["accepted", "queued", "send_attempt", "sent", "delivery_report"]


def test_an_sms_reaches_delivered(stack):
    accepted = stack.send({"channel": "sms", "to": ["+14255551234"], "message": "Your code is 123456"})

    notification = stack.wait_for_status(accepted.json()["id"], "delivered")

    assert notification["recipients"][0]["messageId"].startswith("Outgoing_")


def test_a_bounce_address_reaches_bounced_and_counts_against_the_failure_rate(stack):
    accepted = stack.send({"channel": "email", "to": [unique("bounce")], "subject": "Hi", "text": "Hello"})

    notification = stack.wait_for_status(accepted.json()["id"], "bounced")

    assert notification["recipients"][0]["status"] == "bounced"
    report = httpx.get(f"{stack.api}/api/reconciliation", headers=OPERATOR, params={"channel": "email"}).json()
    assert report["channels"]["email"]["bounced"] >= 1
    assert report["channels"]["email"]["failureRate"] > 0


@pytest.mark.parametrize(
    "local, status",
    [("suppressed", "suppressed"), ("failed", "failed"), ("quarantined", "failed")],
)
def test_each_simulator_address_gives_its_outcome(stack, local, status):
    accepted = stack.send({"channel": "email", "to": [unique(local)], "subject": "Hi", "text": "Hello"})
    stack.wait_for_status(accepted.json()["id"], status)


def test_an_sms_to_a_failing_number_ends_failed(stack):
    accepted = stack.send({"channel": "sms", "to": ["+14255550001"], "message": "Hi"})
    stack.wait_for_status(accepted.json()["id"], "failed")


def test_a_notification_without_a_report_stays_sent(stack):
    accepted = stack.send({"channel": "email", "to": [unique("noreport")], "subject": "Hi", "text": "Hello"})
    notification = stack.wait_for_status(accepted.json()["id"], "sent")
    assert notification["recipients"][0]["status"] == "sent"


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (b'{"channel": "email", "to": [', "application/json", 400),
        (b"to=someone", "application/x-www-form-urlencoded", 415),
        (b'{"channel": "fax", "to": ["MARKER"]}', "application/json", 422),
        (b'{"channel": "email", "to": ["MARKER"], "subject": "s", "text": "t"}', "application/json", 422),
        (b'{"channel": "email", "to": ["MARKER@example.com"], "subject": "", "text": "t"}', "application/json", 422),
        (b'{"channel": "email", "to": ["MARKER@example.com"], "subject": "s"}', "application/json", 422),
        (b'{"channel": "email", "to": ["MARKER@example.com"], "subject": "s", "text": "t", "sender": "x@evil.example"}', "application/json", 422),
        (b'{"channel": "email", "to": ["MARKER@example.com"], "subject": "s", "text": "t", "bogus": 1}', "application/json", 422),
        (b'{"channel": "sms", "to": ["555-1234"], "message": "MARKER"}', "application/json", 422),
        (b'{"channel": "sms", "to": ["+14255551234"], "message": ""}', "application/json", 422),
        # Over MAX_REQUEST_BYTES, 10 MiB by default (ACS's limit for an email with its attachments).
        (b'{"channel": "email", "to": ["MARKER@example.com"], "subject": "s", "text": "' + b"x" * 10_500_000 + b'"}', "application/json", 413),
    ],
)
def test_bad_input_gets_its_status_and_sends_nothing(stack, body, content_type, status):
    marker = uuid.uuid4().hex
    response = httpx.post(
        f"{stack.api}/api/notifications",
        content=body.replace(b"MARKER", marker.encode()),
        headers={"Authorization": "Bearer dev-sender-key", "Content-Type": content_type},
    )

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert marker not in str(stack.emulator_messages())


def test_a_repeated_idempotency_key_sends_once(stack):
    address = unique()
    body = {"channel": "email", "to": [address], "subject": "Order 42", "text": "Shipped"}
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}

    first = stack.send(body, key)
    second = stack.send(body, key)
    stack.wait_for_status(first.json()["id"], "delivered")
    third = stack.send(body, key)

    assert first.json()["id"] == second.json()["id"] == third.json()["id"]
    assert len(emails_to(stack, address)) == 1
    assert stack.send(body | {"subject": "changed"}, key).status_code == 409


def test_the_event_grid_validation_handshake_answers(stack):
    event = {
        "id": str(uuid.uuid4()), "topic": "x", "subject": "", "data": {"validationCode": "code-123"},
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "eventTime": "2026-11-22T00:00:00Z",
        "dataVersion": "1", "metadataVersion": "1",
    }
    response = httpx.post(f"{stack.api}/api/events", json=[event], headers=EVENTGRID | {"aeg-event-type": "SubscriptionValidation"})
    assert response.json() == {"validationResponse": "code-123"}


def test_reports_from_a_foreign_topic_change_nothing(stack):
    accepted = stack.send({"channel": "email", "to": [unique("noreport")], "subject": "Hi", "text": "Hello"})
    nid = accepted.json()["id"]
    stack.wait_for_status(nid, "sent")
    forged = {
        "id": str(uuid.uuid4()), "topic": "/subscriptions/someone-else/providers/Microsoft.Communication/communicationServices/x",
        "subject": "s", "eventType": "Microsoft.Communication.EmailDeliveryReportReceived", "eventTime": "2026-11-22T00:00:00Z",
        "dataVersion": "1.0", "data": {"messageId": nid, "recipient": "x", "status": "Delivered"},
    }

    response = httpx.post(f"{stack.api}/api/events", json=[forged], headers=EVENTGRID)

    assert response.json()["rejected"] == 1
    assert stack.get(nid)["status"] == "sent"


def test_throttling_and_server_errors_are_retried_until_every_notification_is_delivered_once(stack):
    stack.set_faults(throttleRate=0.2, serverErrorRate=0.1, retryAfterSeconds=0)
    try:
        addresses = [unique() for _ in range(20)]
        ids = [stack.send({"channel": "email", "to": [a], "subject": "Hi", "text": "Hello"}).json()["id"] for a in addresses]
        for nid in ids:
            stack.wait_for_status(nid, "delivered", timeout=60)
    finally:
        stack.set_faults(throttleRate=0.0, serverErrorRate=0.0)
    sent = [m for m in stack.emulator_messages("email") if m["id"] in ids]
    assert sorted(m["id"] for m in sent) == sorted(ids)
    retried = [stack.get(nid) for nid in ids]
    assert any(n["attempts"] > 1 for n in retried), "with 30% faults some sends must have been retried"


def test_an_sms_stop_reply_opts_the_number_out_of_later_notifications(stack):
    number = "+14255557777"
    stop = {
        "id": f"Incoming_{uuid.uuid4()}", "topic": stack.environment()["ACS_RESOURCE_ID"], "subject": "/phonenumber/18005550100",
        "eventType": "Microsoft.Communication.SMSReceived", "eventTime": "2026-11-22T00:00:00Z", "dataVersion": "1.0",
        "data": {"MessageId": "Incoming_1", "From": number.lstrip("+"), "To": "18005550100", "Message": "STOP",
                 "ReceivedTimestamp": "2026-11-22T00:00:00Z", "SegmentCount": 1},
    }
    assert httpx.post(f"{stack.api}/api/events", json=[stop], headers=EVENTGRID).json()["optedOut"] == 1

    accepted = stack.send({"channel": "sms", "to": [number], "message": "Your code is 1"})
    notification = stack.wait_for_status(accepted.json()["id"], "suppressed")

    assert notification["recipients"][0]["reason"].startswith("OnSuppressionList: OptedOut")
    assert number not in str(stack.emulator_messages("sms"))


def test_an_email_with_a_pdf_attachment_is_delivered_and_reaches_acs_with_the_attachment(stack):
    pdf = (
        b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n2 0 obj <</Type /Pages /Kids [] /Count 0>> endobj\n"
        b"trailer <</Root 1 0 R>>\n%%EOF\n"
    )
    address = unique()
    accepted = stack.send(
        {
            "channel": "email",
            "to": [address],
            "subject": "Your invoice",
            "text": "Your invoice is attached.",
            "attachments": [{"name": "invoice.pdf", "contentType": "application/pdf", "contentBase64": base64.b64encode(pdf).decode()}],
        }
    )
    assert accepted.status_code == 202, accepted.text

    notification = stack.wait_for_status(accepted.json()["id"], "delivered")

    described = {"name": "invoice.pdf", "contentType": "application/pdf", "size": len(pdf), "sha256": hashlib.sha256(pdf).hexdigest()}
    assert notification["attachments"] == [described]
    [message] = emails_to(stack, address)
    assert message["attachments"] == [described]
    # Handed to ACS: the local store no longer holds the bytes.
    assert not (stack.data_dir / "attachments" / notification["id"]).exists()


def test_a_batch_of_twenty_emails_all_reach_delivered(stack):
    addresses = [unique("batch") for _ in range(20)]
    items = [{"channel": "email", "to": [a], "subject": "Batch", "text": f"Hello {i}"} for i, a in enumerate(addresses)]

    response = httpx.post(
        f"{stack.api}/api/notifications/batch", json={"notifications": items}, headers={"Authorization": "Bearer dev-sender-key"}, timeout=30
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["failed"]) == (20, 0)
    assert [r["index"] for r in body["results"]] == list(range(20))
    ids = [r["id"] for r in body["results"]]
    for nid in ids:
        stack.wait_for_status(nid, "delivered", timeout=60)
    sent = [m for m in stack.emulator_messages("email") if m["id"] in ids]
    assert sorted(m["id"] for m in sent) == sorted(ids)


def test_dispatcher_processes_run_with_two_malloc_arenas_so_their_memory_stays_flat(stack):
    # bench/memory_flat.py: +14-16 % resident memory over 50,000 sends with glibc's default
    # arenas, under 1 % with two; the supervisor must hand the setting to every worker it starts.
    pids = stack.worker_pids()
    assert pids, "the stack runs no dispatcher worker"
    for pid in pids:
        environ = dict(
            entry.split(b"=", 1) for entry in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if b"=" in entry
        )
        assert environ.get(b"MALLOC_ARENA_MAX") == b"2"
