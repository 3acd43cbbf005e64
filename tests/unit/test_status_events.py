"""Status events: every status change becomes exactly one event, stored with the change, and the
relay publishes them as CloudEvents in order, retrying with backoff and never dropping any."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest

from shared.domain.commands import ApplyInboundSms, Reconcile, RelayStatusEvents
from shared.domain.errors import (
    ConcurrencyConflict,
    RequestRejected,
    StatusPublishFailed,
    StatusPublishRejected,
    Throttled,
)
from shared.domain.masking import mask_recipient, mask_text
from shared.domain.model import Channel, DeliveryReport, InboundSms, Notification, Recipient, Suppression
from shared.service import handlers
from shared.service.retry import RetryPolicy
from shared.service.status_events import Destination, cloud_event, relay_status_events
from tests.fakes import FakeStatusEventPublisher
from tests.unit.builders import World, email_command, sms_command

RELAY = RelayStatusEvents(type_prefix="Contoso.Notify", source="/notify/test", batch_size=100, max_batches=5)
# Deterministic jitter: always the top of the range, so the backoff is 1, 2, 4, ... up to 30 s.
RELAY_POLICY = RetryPolicy(base_seconds=1, max_seconds=30, uniform=lambda lo, hi: hi)


def outbox(world: World, notification_id: str | None = None) -> list[tuple[str, str | None]]:
    return [
        (e.status.value, e.recipient)
        for e in world.ledger.outbox.values()
        if notification_id is None or e.notification_id == notification_id
    ]


def relay(world: World, *destinations: Destination):
    return relay_status_events(RELAY, ledger=world.ledger, destinations=list(destinations), policy=RELAY_POLICY,
                               clock=world.clock)


def report(message_id: str, recipient: str | None, status: str, event_id: str, channel=Channel.EMAIL, detail=None):
    return DeliveryReport(event_id=event_id, channel=channel, message_id=message_id, recipient=recipient,
                          status=status, detail=detail)


# ---------------------------------------------------------------------------- one event per change


def test_a_delivered_email_produces_accepted_sent_and_delivered_once_each_in_order():
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    world.dispatch(n.id)
    world.reports(report(n.id, "jane@example.com", "Delivered", "e1"))
    world.reports(report(n.id, "jane@example.com", "Delivered", "e1"), report(n.id, "jane@example.com", "Delivered", "e2"))

    assert outbox(world) == [("accepted", None), ("sent", "j***@example.com"), ("delivered", "j***@example.com")]
    assert [e.sequence for e in world.ledger.outbox.values()] == [1, 2, 3]


@pytest.mark.parametrize(
    ("acs_status", "event", "recipient_status"),
    [
        ("Bounced", "bounced", "bounced"),
        ("Failed", "failed", "failed"),
        ("Quarantined", "failed", "quarantined"),
        ("FilteredSpam", "failed", "filtered_spam"),
        ("Suppressed", "suppressed", "suppressed"),
    ],
)
def test_each_final_report_outcome_is_one_event_naming_the_recipients_own_status(acs_status, event, recipient_status):
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    world.dispatch(n.id)

    world.reports(report(n.id, "jane@example.com", acs_status, "e1", detail="550 5.1.1 <jane@example.com> unknown"))

    last = list(world.ledger.outbox.values())[-1]
    assert (last.status.value, last.recipient_status) == (event, recipient_status)
    assert last.reason == "550 5.1.1 <j***@example.com> unknown"
    assert len(outbox(world)) == 3


def test_a_late_report_after_unconfirmed_is_a_new_event_and_a_superseded_one_is_none():
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    world.dispatch(n.id)
    world.clock.advance(7200)
    handlers.reconcile(
        Reconcile(report_deadline=world.clock.now() - timedelta(hours=1), requeue_before=world.clock.now()),
        ledger=world.ledger, publisher=world.publisher, suppressions=world.suppressions, clock=world.clock,
    )
    world.reports(report(n.id, "jane@example.com", "Bounced", "e1"))
    world.reports(report(n.id, "jane@example.com", "Delivered", "e2"))  # ranks below bounced: no change

    assert [s for s, _ in outbox(world)] == ["accepted", "sent", "unconfirmed", "bounced"]


def test_each_sms_recipient_has_its_own_events():
    world = World()
    n, _ = world.submit(sms_command("+14255554567", "+14255551234"))
    world.dispatch(n.id)
    stored = world.ledger.get(n.id)
    first, second = (r.message_id for r in stored.recipients)
    world.reports(report(first, "+14255554567", "Delivered", "e1", channel=Channel.SMS),
                  report(second, "+14255551234", "Failed", "e2", channel=Channel.SMS))

    assert outbox(world) == [
        ("accepted", None),
        ("sent", "+1******4567"), ("sent", "+1******1234"),
        ("delivered", "+1******4567"), ("failed", "+1******1234"),
    ]


def test_a_number_that_opted_out_is_an_opted_out_event_and_a_listed_address_a_suppressed_one():
    world = World()
    handlers.apply_inbound_sms(
        ApplyInboundSms([InboundSms(event_id="in1", sender="+14255554567", to="+18005550100", message="STOP")]),
        suppressions=world.suppressions, clock=world.clock,
    )
    world.suppressions.add(Suppression(channel=Channel.EMAIL, address="gone@example.com", reason="Bounced",
                                       created_at=world.clock.now()))
    sms, _ = world.submit(sms_command("+14255554567"))
    mail, _ = world.submit(email_command("gone@example.com", "jane@example.com"))
    world.dispatch(sms.id)
    world.dispatch(mail.id)

    assert outbox(world, sms.id) == [("accepted", None), ("opted_out", "+1******4567")]
    assert outbox(world, mail.id) == [("accepted", None), ("suppressed", "g***@example.com"), ("sent", "j***@example.com")]


def test_a_dead_letter_is_one_event_with_its_reason_and_a_replay_is_another():
    world = World()
    world.email.failures = [RequestRejected("bad payload", status_code=400)]
    n, _ = world.submit(email_command("jane@example.com"))
    world.dispatch(n.id)
    stored = world.ledger.get(n.id)
    stored.record_replay(world.clock.now(), by="operator", replay_count=1)
    world.ledger.save(stored)

    events = list(world.ledger.outbox.values())
    assert [(e.status.value, e.reason, e.notification_status) for e in events] == [
        ("accepted", None, "accepted"), ("dead_lettered", "RequestRejected", "dead_lettered"), ("replayed", None, "accepted"),
    ]


def test_transient_failures_and_retries_are_no_status_change():
    world = World()
    world.email.failures = [Throttled("slow down", status_code=429)]
    n, _ = world.submit(email_command("jane@example.com"))
    world.dispatch(n.id)
    world.clock.advance(10)
    world.dispatch(n.id, attempt=2)

    assert [s for s, _ in outbox(world)] == ["accepted", "sent"]


def test_a_change_whose_write_loses_a_race_leaves_no_event_behind():
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    stale = world.ledger.get(n.id)
    world.dispatch(n.id)
    stale.mark_dead_lettered(world.clock.now(), "Test", "never stored")

    with pytest.raises(ConcurrencyConflict):
        world.ledger.save(stale)
    assert [s for s, _ in outbox(world)] == ["accepted", "sent"]


def test_the_same_change_derives_the_same_event_id_and_the_id_names_no_recipient():
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    first, second = world.ledger.get(n.id), world.ledger.get(n.id)
    for copy in (first, second):
        copy.record_all_sent(world.clock.now(), "m-1")

    assert [e.id for e in first.pending_status_events] == [e.id for e in second.pending_status_events]
    assert all("jane" not in e.id and len(e.id) == 36 for e in first.pending_status_events)


def test_status_events_keep_the_ids_and_content_already_published_for_the_same_changes():
    # Ids and documents as derived before the report path was made faster: a subscriber that holds
    # them must recognise a redelivery after an upgrade.
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    n = Notification.accept(
        channel=Channel.EMAIL, sender="DoNotReply@notify.example.com",
        recipients=[Recipient(address="jane@example.com"), Recipient(address="bob@example.com", kind="cc")],
        content={"subject": "s", "text": "t"}, metadata={}, at=at, notification_id="0b7d9c1e-2f3a-4b5c-8d6e-7f8091a2b3c4",
        correlation_id="order-42", caller_properties={"tenant": "contoso"},
    )
    n.mark_queued(at)
    n.start_attempt(at, lease_until=at)
    n.finish_attempt()
    n.record_all_sent(at, n.id)
    n.apply_report(report(n.id, "jane@example.com", "Delivered", "e1", detail="No error."), at)
    n.apply_report(report(n.id, "bob@example.com", "Bounced", "e2", detail="550 5.1.1 <bob@example.com> does not exist"), at)
    n.caller_properties["tenant"] = "changed after the events"

    assert [(e.id, e.sequence, e.status.value, e.recipient) for e in n.pending_status_events] == [
        ("80d94afe-420c-53e6-b5cc-3d35bcf2bf6a", 1, "accepted", None),
        ("57008e46-0bd7-525e-997e-0a3aaf70a4fa", 2, "sent", "j***@example.com"),
        ("81572e7a-f0b8-5dcc-9d13-42e8800b275f", 3, "sent", "b***@example.com"),
        ("8e86e506-7b23-539d-bd09-689a9f724725", 4, "delivered", "j***@example.com"),
        ("194a8b4d-4225-53a2-b373-ded8f24816f9", 5, "bounced", "b***@example.com"),
    ]
    assert json.loads(n.pending_status_events[-1].model_dump_json()) == {
        "id": "194a8b4d-4225-53a2-b373-ded8f24816f9", "notification_id": "0b7d9c1e-2f3a-4b5c-8d6e-7f8091a2b3c4",
        "sequence": 5, "status": "bounced", "channel": "email", "recipient": "b***@example.com",
        "recipient_status": "bounced", "notification_status": "bounced",
        "reason": "550 5.1.1 <b***@example.com> does not exist", "correlation_id": "order-42",
        "caller_properties": {"tenant": "contoso"}, "at": "2026-01-02T03:04:05Z",
    }


def test_recipients_are_masked_to_their_first_letter_domain_and_last_four_digits():
    assert mask_recipient("jane.doe@example.com") == "j***@example.com"
    assert mask_recipient("+14255554567") == "+1******4567"
    assert mask_recipient("+447700900123") == "+4*******0123"
    assert mask_text("550 <bob@example.com> and +1 425 555 4567") == "550 <b***@example.com> and +1******4567"


# ---------------------------------------------------------------------------- CloudEvents


def test_events_are_published_as_cloudevents_with_type_subject_and_masked_data():
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    world.dispatch(n.id)
    topic = FakeStatusEventPublisher("topic")

    relay(world, Destination(topic))

    accepted, sent = topic.events
    assert accepted["specversion"] == "1.0" and accepted["source"] == "/notify/test"
    assert accepted["type"] == "Contoso.Notify.notification.accepted"
    assert sent["type"] == "Contoso.Notify.notification.sent"
    assert sent["subject"] == f"notifications/{n.id}"
    assert sent["datacontenttype"] == "application/json" and sent["time"].endswith("Z")
    assert sent["data"] == {
        "id": n.id, "channel": "email", "status": "sent", "recipient": "j***@example.com", "recipientStatus": "sent",
        "notificationStatus": "sent", "reason": None, "correlationId": None, "properties": {},
        "time": sent["time"], "sequence": 2,
    }
    assert [e["sequence"] for e in topic.events] == ["0000000001", "0000000002"]
    assert "jane@example.com" not in str(topic.events)
    assert world.ledger.outbox == {}


def test_the_callers_correlation_id_and_properties_travel_in_the_event_data():
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    stored = world.ledger.get(n.id)
    stored.correlation_id, stored.caller_properties = "order-42", {"tenant": "contoso"}
    world.ledger.save(stored)
    world.dispatch(n.id)
    topic = FakeStatusEventPublisher()

    relay(world, Destination(topic))

    sent = topic.events[-1]["data"]
    assert (sent["correlationId"], sent["properties"]) == ("order-42", {"tenant": "contoso"})


# ---------------------------------------------------------------------------- the relay


def test_a_failing_destination_keeps_the_events_and_is_retried_with_growing_backoff():
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    subscriber = FakeStatusEventPublisher("subscriber")
    subscriber.failures = [StatusPublishFailed("HTTP 503"), StatusPublishFailed("HTTP 503")]
    destination = Destination(subscriber)

    relay(world, destination)  # fails: next try in 1 s
    world.clock.advance(0.5)
    relay(world, destination)  # still backing off: not called
    assert subscriber.calls == 1 and destination.retry_at == world.clock.now() + timedelta(seconds=0.5)
    world.clock.advance(0.5)
    relay(world, destination)  # fails again: next try in 2 s
    assert destination.retry_at == world.clock.now() + timedelta(seconds=2)
    world.dispatch(n.id)
    world.clock.advance(2)
    summary = relay(world, destination)

    assert [e["data"]["status"] for e in subscriber.events] == ["accepted", "sent"]
    assert summary.published == 2 and world.ledger.outbox == {} and destination.failures == 0


def test_a_retry_after_from_the_destination_is_a_floor_for_the_backoff():
    world = World()
    world.submit(email_command("jane@example.com"))
    topic = FakeStatusEventPublisher()
    topic.failures = [StatusPublishFailed("HTTP 429", status_code=429, retry_after=20)]
    destination = Destination(topic)

    relay(world, destination)

    assert destination.retry_at == world.clock.now() + timedelta(seconds=20)


def test_an_event_that_keeps_failing_is_kept_not_dropped_and_logged_without_the_recipient(caplog):
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    world.dispatch(n.id)
    topic = FakeStatusEventPublisher("topic")
    topic.failures = [StatusPublishFailed("HTTP 500")] * 50
    destination = Destination(topic)

    with caplog.at_level(logging.WARNING):
        for _ in range(40):
            summary = relay(world, destination)
            world.clock.advance(60)

    assert topic.calls == 40 and destination.failures == 40
    assert summary.kept == 2 and summary.failing == ["topic"]
    assert [s for s, _ in outbox(world)] == ["accepted", "sent"]
    assert "kept in the outbox" in caplog.text and "jane" not in caplog.text and "j***" not in caplog.text
    # Backoff is capped: the 40th failure waits RETRY max, not 2**39 s.
    assert destination.retry_at - (world.clock.now() - timedelta(seconds=60)) == timedelta(seconds=30)


def test_a_healthy_subscriber_is_not_held_back_or_sent_duplicates_by_a_failing_one():
    world = World()
    world.submit(email_command("jane@example.com"))
    healthy, failing = FakeStatusEventPublisher("healthy"), FakeStatusEventPublisher("failing")
    failing.failures = [StatusPublishFailed("down")] * 2
    destinations = [Destination(healthy), Destination(failing)]

    relay(world, *destinations)
    world.clock.advance(1)
    relay(world, *destinations)
    assert len(world.ledger.outbox) == 1  # the failing one has not had it yet
    world.clock.advance(2)
    relay(world, *destinations)

    assert [e["data"]["status"] for e in healthy.events] == ["accepted"]
    assert [e["data"]["status"] for e in failing.events] == ["accepted"]
    assert world.ledger.outbox == {}


class RefusesSome(FakeStatusEventPublisher):
    """A topic that answers 400 to any batch holding one of ``refused`` (as Event Grid does to an
    event it will not take), for as long as the id is in the set."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__("topic")
        self.refused = refused

    def publish(self, events):
        if any(e["id"] in self.refused for e in events):
            self.calls += 1
            raise StatusPublishRejected("HTTP 400: event too large", status_code=400)
        super().publish(events)


def test_an_event_the_destination_refuses_is_kept_while_the_others_go_out_and_its_successors_wait():
    world = World()
    bad, _ = world.submit(email_command("jane@example.com"))
    good, _ = world.submit(email_command("bob@example.com"))
    world.dispatch(bad.id)
    bad_accepted = next(e.id for e in world.ledger.outbox.values() if e.notification_id == bad.id)
    topic = RefusesSome({bad_accepted})
    destination = Destination(topic)

    relay(world, destination)

    assert [(e["data"]["id"], e["data"]["status"]) for e in topic.events] == [(good.id, "accepted")]
    assert outbox(world) == [("accepted", None), ("sent", "j***@example.com")]
    assert destination.failures == 0 and destination.held[bad_accepted][0] == 1


def test_a_refused_event_does_not_slow_the_others_and_goes_out_once_taken():
    world = World()
    bad, _ = world.submit(email_command("jane@example.com"))
    bad_accepted = next(iter(world.ledger.outbox))
    topic = RefusesSome({bad_accepted})
    destination = Destination(topic)
    relay(world, destination)
    calls = topic.calls

    later, _ = world.submit(email_command("bob@example.com"))
    relay(world, destination)  # the refused one waits for its own backoff (1 s): not sent again
    assert [e["data"]["id"] for e in topic.events] == [later.id]
    assert topic.calls == calls + 1

    topic.refused.clear()  # say the topic's limit was raised
    world.dispatch(bad.id)
    world.clock.advance(1)
    relay(world, destination)
    assert [(e["data"]["id"], e["data"]["status"]) for e in topic.events] == [
        (later.id, "accepted"), (bad.id, "accepted"), (bad.id, "sent"),
    ]
    assert world.ledger.outbox == {} and destination.held == {}


def test_refused_events_filling_whole_batches_do_not_hold_up_later_notifications():
    world = World()
    bads = [world.submit(email_command(f"bad{i}@example.com"))[0] for i in range(4)]
    for bad in bads:
        world.dispatch(bad.id)  # each has accepted, sent: held back behind a refused head
    refused = {e.id for e in world.ledger.outbox.values() if e.status.value == "accepted"}
    topic = RefusesSome(refused)
    destination = Destination(topic)
    small = RelayStatusEvents(batch_size=2, max_batches=10)

    def run():
        return relay_status_events(small, ledger=world.ledger, destinations=[destination], policy=RELAY_POLICY,
                                   clock=world.clock)

    run()  # every head refused: all held on their own backoff
    good, _ = world.submit(email_command("good@example.com"))
    world.clock.advance(0.5)  # the refused ones are still backing off
    summary = run()

    assert [(e["data"]["id"], e["data"]["status"]) for e in topic.events] == [(good.id, "accepted")]
    assert summary.published == 1 and summary.kept == 4 and destination.failures == 0  # the held heads
    # Nothing held is lost, and each held notification keeps its order.
    for bad in bads:
        assert outbox(world, bad.id) == [("accepted", None), ("sent", "b***@example.com")]

    topic.refused.clear()
    world.clock.advance(1)
    run()
    assert world.ledger.outbox == {}
    for bad in bads:
        assert [e["data"]["status"] for e in topic.events if e["data"]["id"] == bad.id] == ["accepted", "sent"]


def test_with_no_destination_the_outbox_is_drained_as_a_topic_without_subscribers_would():
    world = World()
    world.submit(email_command("jane@example.com"))

    summary = relay(world)

    assert summary.discarded == 1 and world.ledger.outbox == {}


def test_a_large_outbox_goes_out_in_batches_in_order():
    world = World()
    ids = [world.submit(email_command(f"user{i}@example.com"))[0].id for i in range(7)]
    topic = FakeStatusEventPublisher()
    small = RelayStatusEvents(batch_size=3, max_batches=10)

    relay_status_events(small, ledger=world.ledger, destinations=[Destination(topic)], policy=RELAY_POLICY,
                        clock=world.clock)

    assert [len(b) for b in topic.batches] == [3, 3, 1]
    assert [e["data"]["id"] for e in topic.events] == ids


def test_cloud_event_type_uses_the_configured_prefix():
    world = World()
    world.submit(email_command("jane@example.com"))
    [event] = world.ledger.pending_status_events(10)

    assert cloud_event(event, type_prefix="Notify", source="/x")["type"] == "Notify.notification.accepted"


def test_a_replay_that_finds_a_number_opted_out_since_announces_it_and_a_purge_fails_the_rest():
    world = World()
    world.sms.failures = [RequestRejected("bad", status_code=400)]
    n, _ = world.submit(sms_command("+14255554567", "+14255551234"))
    world.dispatch(n.id)
    stored = world.ledger.get(n.id)
    stored.record_replay(world.clock.now(), by="operator", replay_count=1,
                         suppressed={"+14255554567": "OnSuppressionList: OptedOut: replied STOP"})
    stored.record_purged(world.clock.now(), by="operator")
    world.ledger.save(stored)

    events = [(e.status.value, e.recipient, e.reason) for e in world.ledger.outbox.values()][2:]
    assert events == [
        ("opted_out", "+1******4567", "OnSuppressionList: OptedOut: replied STOP"),
        ("replayed", None, None),
        ("failed", "+1******1234", "DeadLetterPurged"),
    ]
