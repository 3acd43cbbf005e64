"""Status events on the local stack: an app's own endpoint (STATUS_EVENT_SUBSCRIBERS) receives a
notification's accepted, sent and delivered events as CloudEvents, in order, even though it fails
its first two deliveries."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.stack import LocalStack, free_port, wait_until

pytestmark = pytest.mark.e2e


class FlakySubscriber:
    """An app's webhook: answers 500 to its first ``fail_first`` deliveries, then 200, and keeps
    what it received the way a subscriber should: each CloudEvent once, by ``id``."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.deliveries: list[dict] = []  # every POST, failed or not
        self.events: dict[str, dict] = {}  # by CloudEvent id: duplicates dropped
        self.arrival: list[str] = []
        self.lock = threading.Lock()
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with subscriber.lock:
                    failing = len(subscriber.deliveries) < subscriber.fail_first
                    subscriber.deliveries.append({"contentType": self.headers.get("Content-Type"), "events": body,
                                                  "status": 500 if failing else 200})
                    if not failing:
                        for event in body:
                            if event["id"] not in subscriber.events:
                                subscriber.events[event["id"]] = event
                                subscriber.arrival.append(event["id"])
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/notify-events"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def for_notification(self, notification_id: str) -> list[dict]:
        with self.lock:
            return [self.events[i] for i in self.arrival if self.events[i]["data"]["id"] == notification_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_subscriber_that_fails_twice_still_receives_accepted_sent_and_delivered_in_order(tmp_path):
    subscriber = FlakySubscriber(fail_first=2)
    settings = {
        "STATUS_EVENT_SUBSCRIBERS": subscriber.url,
        "STATUS_EVENT_TYPE_PREFIX": "Contoso.Notify",
        "STATUS_RELAY_INTERVAL_SECONDS": "0.2",
        "STATUS_RELAY_RETRY_BASE_SECONDS": "0.5",
        "STATUS_RELAY_RETRY_MAX_SECONDS": "2",
    }
    address = f"jane+{uuid.uuid4().hex[:8]}@example.com"
    try:
        with LocalStack(tmp_path, **settings) as stack:
            accepted = stack.send({"channel": "email", "to": [address], "subject": "Receipt", "text": "Thanks",
                                   "correlationId": "order-42", "properties": {"tenant": "contoso"}})
            assert accepted.status_code == 202
            nid = accepted.json()["id"]
            stack.wait_for_status(nid, "delivered")

            received = wait_until(
                lambda: (events := subscriber.for_notification(nid)) and len(events) >= 3 and events,
                timeout=30, what="the subscriber to receive three events",
            )
            log = stack.log_text()
    finally:
        subscriber.close()

    assert [d["status"] for d in subscriber.deliveries[:3]] == [500, 500, 200]
    assert subscriber.deliveries[0]["events"][0]["data"]["status"] == "accepted"
    assert all(d["contentType"] == "application/cloudevents-batch+json; charset=utf-8" for d in subscriber.deliveries)
    # In the order they happened, each once, and the sequence says so too.
    assert [e["type"] for e in received] == [
        "Contoso.Notify.notification.accepted", "Contoso.Notify.notification.sent", "Contoso.Notify.notification.delivered",
    ]
    assert [e["data"]["sequence"] for e in received] == [1, 2, 3]
    assert all(e["specversion"] == "1.0" and e["subject"] == f"notifications/{nid}" for e in received)
    assert received[2]["data"]["recipient"] == "j***@example.com" and received[2]["data"]["notificationStatus"] == "delivered"
    assert all(e["data"]["correlationId"] == "order-42" and e["data"]["properties"] == {"tenant": "contoso"} for e in received)
    # The failures were logged, without the recipient.
    assert "kept in the outbox" in log and address not in log
