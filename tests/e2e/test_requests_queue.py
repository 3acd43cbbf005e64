"""Requests put on the requests queue with the CLI, as an app puts them on Service Bus, through the
local stack to the ACS emulator."""

import json
import sqlite3
import subprocess
import sys
import uuid

import httpx
import pytest

from shared.adapters.embedded_queue import EmbeddedQueue
from tests.e2e.stack import OPERATOR, ROOT, LocalStack, wait_until
from tests.e2e.test_status_events import FlakySubscriber

pytestmark = pytest.mark.e2e

OWNER = "servicebus:notification-requests"


@pytest.fixture(scope="module")
def subscriber():
    # An app's webhook for status events, which never fails here.
    webhook = FlakySubscriber(fail_first=0)
    yield webhook
    webhook.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, subscriber):
    settings = {"STATUS_EVENT_SUBSCRIBERS": subscriber.url, "STATUS_RELAY_INTERVAL_SECONDS": "0.2"}
    with LocalStack(tmp_path_factory.mktemp("requests"), **settings) as running:
        yield running


@pytest.fixture
def requests_queue(stack):
    queue = EmbeddedQueue(stack.data_dir / "queue.sqlite3", "notification-requests")
    yield queue
    queue.close()


def unique(local: str = "user") -> str:
    return f"{local}+{uuid.uuid4().hex[:8]}@example.com"


def enqueue(stack, body: dict, *options: str) -> str:
    """``python -m shared enqueue request.json ...`` against the stack's data dir; the message id."""
    request = stack.data_dir / f"request-{uuid.uuid4().hex[:8]}.json"
    request.write_text(json.dumps(body))
    result = subprocess.run(
        [sys.executable, "-m", "shared", "enqueue", str(request), *options],
        cwd=ROOT, env=stack.environment(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["messageId"]


def notification_id_for(stack, key: str) -> str | None:
    """The notification a queued request with this idempotency key created, read from the ledger."""
    with sqlite3.connect(stack.data_dir / "ledger.sqlite3") as conn:
        row = conn.execute("SELECT id FROM notifications WHERE idempotency_key = ?", (f"{OWNER}:{key}",)).fetchone()
    conn.close()
    return row[0] if row else None


def read(stack, notification_id: str) -> dict:
    # Queue-submitted notifications are owned by the queue, so an operator reads them.
    return httpx.get(f"{stack.api}/api/notifications/{notification_id}", headers=OPERATOR, timeout=10).json()


def test_a_request_put_on_the_requests_queue_reaches_delivered_with_its_correlation_and_properties(stack, subscriber):
    key = f"order-{uuid.uuid4().hex[:8]}"
    enqueue(
        stack, {"channel": "email", "to": [unique()], "subject": "Shipped", "text": "On its way"},
        "--idempotency-key", key, "--correlation-id", "trace-42", "--property", "tenant=contoso",
    )

    notification_id = wait_until(lambda: notification_id_for(stack, key), timeout=20, what="the request to be accepted")
    notification = wait_until(
        lambda: (n := read(stack, notification_id))["status"] == "delivered" and n, timeout=30, what="delivered"
    )

    assert notification["correlationId"] == "trace-42"
    assert notification["properties"] == {"tenant": "contoso"}
    assert [h["event"] for h in notification["history"]] == ["accepted", "queued", "send_attempt", "sent", "delivery_report"]
    events = wait_until(
        lambda: (found := subscriber.for_notification(notification_id)) and len(found) >= 3 and found,
        timeout=30, what="the status events of the queued request",
    )
    assert [e["data"]["status"] for e in events] == ["accepted", "sent", "delivered"]
    assert all(e["data"]["correlationId"] == "trace-42" and e["data"]["properties"] == {"tenant": "contoso"} for e in events)


def test_an_invalid_request_is_dead_lettered_as_validation_failed_with_its_field_errors(stack, requests_queue):
    address = unique()
    message_id = enqueue(stack, {"channel": "email", "to": [address, "not-an-address"], "subject": "Hi", "text": "x", "colour": "red"})

    dead = wait_until(
        lambda: [d for d in requests_queue.dead_letters(limit=1000) if d.message_id == message_id],
        timeout=20, what="the invalid request to be dead-lettered",
    )

    [letter] = dead
    assert letter.reason == "ValidationFailed"
    problem = json.loads(letter.description)
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == ["/to/1/address", "/colour"]
    assert notification_id_for(stack, message_id) is None
    assert not [m for m in stack.emulator_messages("email") if address in str(m)]


def test_the_same_request_delivered_twice_creates_one_notification_and_one_send(stack, requests_queue):
    address = unique()
    body = {"channel": "email", "to": [address], "subject": "Receipt", "text": "Thanks"}
    key = f"receipt-{uuid.uuid4().hex[:8]}"
    first = enqueue(stack, body, "--idempotency-key", key)
    enqueue(stack, body, "--idempotency-key", key)  # another message, the same request
    enqueue(stack, body, "--idempotency-key", key, "--message-id", first)  # the same message again

    notification_id = wait_until(lambda: notification_id_for(stack, key), timeout=20, what="the request to be accepted")
    wait_until(lambda: read(stack, notification_id)["status"] == "delivered", timeout=30, what="delivered")
    wait_until(lambda: requests_queue.active_count() == 0, timeout=20, what="the requests queue to drain")

    assert len([m for m in stack.emulator_messages("email") if address in str(m)]) == 1
    assert not [d for d in requests_queue.dead_letters(limit=1000) if d.message_id == first]
    with sqlite3.connect(stack.data_dir / "ledger.sqlite3") as conn:
        [(count,)] = conn.execute("SELECT COUNT(*) FROM notifications WHERE doc LIKE ?", (f"%{address}%",)).fetchall()
    conn.close()
    assert count == 1
