"""Single POSTs that reach the local stack together are written together (one ledger write, one
queue write, one write of the marks for the group), and each still gets exactly what it would have
got alone."""

import asyncio
import json

import httpx

from shared.domain.model import NotificationStatus
from shared.entrypoints.api import create_api

SENDER = {"Authorization": "Bearer test-sender"}


def email(n: int) -> dict:
    return {"channel": "email", "to": [f"user{n}@example.com"], "subject": f"Order {n}", "text": "Shipped."}


class CountingLedger:
    """Counts the ledger's write calls of the intake."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.add_calls: list[int] = []

    def add(self, notification):
        self.add_calls.append(1)
        return self._inner.add(notification)

    def add_many(self, notifications):
        self.add_calls.append(len(notifications))
        return self._inner.add_many(notifications)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def post_together(services, requests: list[tuple[dict, dict]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_api(lambda: services), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return list(
                await asyncio.gather(
                    *(client.post("/api/notifications", json=body, headers=SENDER | extra) for body, extra in requests)
                )
            )

    return asyncio.run(run())


def test_requests_arriving_together_share_their_writes_and_each_is_accepted(faked_services):
    faked_services.stores_in_process = True
    faked_services.ledger = ledger = CountingLedger(faked_services.ledger)

    responses = post_together(faked_services, [(email(n), {}) for n in range(20)])

    assert [r.status_code for r in responses] == [202] * 20
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 20
    assert sum(ledger.add_calls) == 20 and len(ledger.add_calls) < 20
    assert sorted(m.body["notificationId"] for m in faked_services.queue.sent) == sorted(ids)
    for n, notification_id in enumerate(ids):
        stored = ledger.get(notification_id)
        assert stored.status is NotificationStatus.ACCEPTED and stored.queued_at is not None
        assert stored.recipients[0].address == f"user{n}@example.com"


def test_the_same_key_twice_in_one_group_makes_one_notification(faked_services):
    faked_services.stores_in_process = True
    key = {"Idempotency-Key": "order-7"}

    first, again, other = post_together(
        faked_services, [(email(7), key), (email(7), key), (email(8), key)]
    )

    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()["id"] == again.json()["id"]
    assert (first.headers["Idempotent-Replayed"], again.headers["Idempotent-Replayed"]) == ("false", "true")
    assert other.status_code == 409
    assert other.json()["existingId"] == first.json()["id"]
    assert [m.body["notificationId"] for m in faked_services.queue.sent] == [first.json()["id"]]


def test_a_failing_ledger_fails_every_request_of_the_group_and_queues_nothing(faked_services):
    faked_services.stores_in_process = True

    def unavailable(_notifications):
        raise OSError("disk full")

    faked_services.ledger.add_many = unavailable

    responses = post_together(faked_services, [(email(n), {}) for n in range(5)])

    assert [r.status_code for r in responses] == [500] * 5
    assert faked_services.queue.sent == []


def test_each_queue_message_carries_its_own_request_trace(faked_services, telemetry):
    faked_services.stores_in_process = True
    traces = [f"{n + 1:032x}" for n in range(6)]
    requests = [(email(n), {"traceparent": f"00-{trace}-{n + 1:016x}-01"}) for n, trace in enumerate(traces)]

    responses = post_together(faked_services, requests)

    by_id = {m.body["notificationId"]: m for m in faked_services.queue.sent}
    for trace, response in zip(traces, responses):
        message = by_id[response.json()["id"]]
        assert message.application_properties["traceparent"].split("-")[1] == trace
    submits = {format(s.context.trace_id, "032x") for s in telemetry.spans("notify.submit")}
    assert submits == set(traces)
    accepted = [json.loads(r.content)["id"] for r in responses]
    assert len(set(accepted)) == 6
