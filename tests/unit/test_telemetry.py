"""Traces and metrics an operator relies on, read back from the SDK's in-memory exporter and reader."""

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from opentelemetry.trace import SpanKind

from shared.domain.commands import FailureRateThresholds, Reconcile
from shared.domain.errors import RequestRejected, ServiceUnavailable
from shared.domain.model import Channel, DeliveryReport
from shared.entrypoints import triggers
from shared.entrypoints.api import create_api
from shared.service import handlers
from shared.service.observability import hash_recipient
from tests.conftest import SETTINGS
from tests.unit.builders import World, email_command, sms_command

SENDER = {"Authorization": "Bearer test-sender"}
EVENTGRID = {"Authorization": "Bearer test-eventgrid"}
ADDRESS = "grace.hopper@navy.example.org"
BODY = "Your cobol compiler finished at dawn"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE}-b7ad6b7169203331-01"


@pytest.fixture
def client(faked_services):
    return TestClient(create_api(), raise_server_exceptions=False)


def accept_and_dispatch(client, faked_services) -> str:
    """POST an email with the caller's traceparent, then hand its queue message to the trigger."""
    body = {"channel": "email", "to": [ADDRESS], "subject": "Build report", "text": BODY}
    response = client.post("/api/notifications", json=body, headers=SENDER | {"traceparent": CALLER_TRACEPARENT})
    assert response.status_code == 202
    [message] = faked_services.queue.sent
    outcome = triggers.dispatch_queue_message(json.dumps(message.body), message.application_properties)
    assert isinstance(outcome, handlers.Completed)
    return response.json()["id"]


def submit(services) -> None:
    handlers.submit_notification(
        email_command(), ledger=services.ledger, publisher=services.queue, attachments=services.attachments, clock=services.clock
    )


def ancestors(span, spans) -> list[str]:
    by_id = {s.context.span_id: s for s in spans}
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def delivery_report_event(notification_id: str, status: str = "Delivered", event_id: str = "evt-1") -> dict:
    return {
        "id": event_id,
        "topic": SETTINGS["ACS_RESOURCE_ID"],
        "subject": f"sender/DoNotReply@notify.example.com/message/{notification_id}",
        "eventType": "Microsoft.Communication.EmailDeliveryReportReceived",
        "eventTime": "2026-11-22T10:00:00Z",
        "dataVersion": "1.0",
        "data": {
            "sender": "DoNotReply@notify.example.com",
            "recipient": ADDRESS,
            "messageId": notification_id,
            "status": status,
            "deliveryStatusDetails": {"statusMessage": "No error."},
        },
    }


# ------------------------------------------------------------------------------ traces


def test_one_trace_follows_an_email_from_the_request_through_the_queue_hop_to_the_acs_call(client, faked_services, telemetry):
    accept_and_dispatch(client, faked_services)

    spans = telemetry.spans()
    acs = telemetry.span("acs.email.send")
    assert acs.kind is SpanKind.CLIENT
    consumer = telemetry.span("notifications process")
    assert consumer.kind is SpanKind.CONSUMER
    # The caller's trace continues through our request, the queue message and the ACS call.
    assert {s.context.trace_id for s in spans} == {int(CALLER_TRACE, 16)}
    chain = ancestors(acs, spans)
    assert chain[:3] == ["notify.dispatch", "notifications process", "notify.submit"]
    assert chain[-1] == "POST /api/notifications"


def test_a_retry_message_carries_the_trace_so_every_attempt_joins_it(faked_services, telemetry):
    faked_services.email_sender.failures.append(ServiceUnavailable("ACS is having a moment"))
    submit(faked_services)
    [first] = faked_services.queue.sent

    outcome = triggers.dispatch_queue_message(json.dumps(first.body), first.application_properties)

    assert isinstance(outcome, handlers.Rescheduled)
    retry = faked_services.queue.sent[-1]
    assert retry.body["attempt"] == 2 and retry.scheduled_at is not None
    trace_of = lambda message: message.application_properties["traceparent"].split("-")[1]  # noqa: E731
    assert trace_of(retry) == trace_of(first) == format(telemetry.span("notify.submit").context.trace_id, "032x")


def test_a_delivery_report_span_links_back_to_the_trace_that_accepted_the_notification(client, faked_services, telemetry):
    notification_id = accept_and_dispatch(client, faked_services)
    telemetry.exporter.clear()

    response = client.post("/api/events", json=[delivery_report_event(notification_id)], headers=EVENTGRID)

    assert response.json()["applied"] == 1
    report = telemetry.span("notify.delivery_report")
    assert report.context.trace_id != int(CALLER_TRACE, 16)  # Event Grid's delivery, not ours
    [link] = report.links
    assert link.context.trace_id == int(CALLER_TRACE, 16)
    assert report.attributes["notify.report.status"] == "Delivered"
    assert report.attributes["notify.notification.id"] == notification_id


def test_with_telemetry_on_every_report_of_a_batch_has_its_own_span_with_its_effect(telemetry):
    world = World()
    first, _ = world.submit(email_command("ada@example.com"))
    second, _ = world.submit(email_command("alan@example.com"))
    world.dispatch(first.id)
    world.dispatch(second.id)
    telemetry.exporter.clear()

    world.reports(
        DeliveryReport(event_id="e1", channel=Channel.EMAIL, message_id=first.id, recipient="ada@example.com", status="Delivered"),
        DeliveryReport(event_id="e2", channel=Channel.EMAIL, message_id=second.id, recipient="alan@example.com", status="Bounced"),
        DeliveryReport(event_id="e1", channel=Channel.EMAIL, message_id=first.id, recipient="ada@example.com", status="Delivered"),
    )

    spans = [s for s in telemetry.spans() if s.name == "notify.delivery_report"]
    assert [(s.attributes["notify.notification.id"], s.attributes["notify.report.effect"]) for s in spans] == [
        (first.id, "applied"), (second.id, "applied"), (first.id, "duplicate"),
    ]
    assert list(spans[1].attributes["notify.recipient.hashes"]) == [hash_recipient("alan@example.com")]


def test_spans_know_recipients_only_by_keyed_hash_and_domain_and_never_carry_the_body(client, faked_services, telemetry):
    notification_id = accept_and_dispatch(client, faked_services)
    client.post("/api/events", json=[delivery_report_event(notification_id)], headers=EVENTGRID)

    spans = telemetry.spans()
    exported = "\n".join(s.to_json() for s in spans)
    assert ADDRESS not in exported.lower() and "grace.hopper" not in exported
    assert BODY not in exported and "Build report" not in exported
    for name in ("notify.submit", "acs.email.send", "notify.delivery_report"):
        attributes = telemetry.span(name).attributes
        assert list(attributes["notify.recipient.hashes"]) == [hash_recipient(ADDRESS)]
        assert list(attributes["notify.recipient.domains"]) == ["navy.example.org"]


def test_a_failed_acs_call_marks_its_span_without_the_address_acs_quoted(telemetry):
    world = World()
    world.email.failures.append(RequestRejected(f"email send: recipient {ADDRESS} is not valid (masked upstream: no)"))
    n, _ = world.submit(email_command(ADDRESS))

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, handlers.DeadLettered)
    span = telemetry.span("acs.email.send")
    assert not span.status.is_ok and span.attributes["error.type"] == "RequestRejected"
    assert ADDRESS not in span.to_json() and "g***@navy.example.org" in span.status.description


# ------------------------------------------------------------------------------ metrics


def test_an_accepted_sent_and_delivered_email_is_counted_by_channel_with_its_latencies(telemetry):
    world = World()
    before = {
        name: telemetry.total(name, channel="email")
        for name in ("notify.notifications.accepted", "notify.messages.sent", "notify.messages.delivered", "notify.delivery.duration")
    }
    sends_before = telemetry.total("notify.send.duration", channel="email", outcome="ok")

    n, _ = world.submit(email_command("a@example.com", "b@example.com"))
    world.dispatch(n.id)
    world.clock.advance(42)
    world.reports(DeliveryReport(event_id="e1", channel=Channel.EMAIL, message_id=n.id, recipient="a@example.com", status="Delivered"))

    delta = {name: telemetry.total(name, channel="email") - value for name, value in before.items()}
    assert delta == {
        "notify.notifications.accepted": 1,
        "notify.messages.sent": 2,
        "notify.messages.delivered": 1,
        "notify.delivery.duration": 1,
    }
    assert telemetry.total("notify.send.duration", channel="email", outcome="ok") - sends_before == 1
    [point] = telemetry.points("notify.delivery.duration", channel="email")
    assert point.max >= 42


def test_bounced_failed_and_suppressed_reports_count_once_each_by_outcome(telemetry):
    world = World()
    to = ["b@example.com", "f@example.com", "q@example.com", "s@example.com"]
    n, _ = world.submit(email_command(*to))
    world.dispatch(n.id)
    before = {o: telemetry.total(f"notify.messages.{o}", channel="email") for o in ("bounced", "failed", "suppressed")}

    reports = [
        DeliveryReport(event_id=f"e-{a}", channel=Channel.EMAIL, message_id=n.id, recipient=a, status=s)
        for a, s in zip(to, ["Bounced", "Failed", "Quarantined", "Suppressed"])
    ]
    world.reports(*reports)
    world.reports(*reports)  # Event Grid delivers at least once

    after = {o: telemetry.total(f"notify.messages.{o}", channel="email") - before[o] for o in before}
    assert after == {"bounced": 1, "failed": 2, "suppressed": 1}


def test_an_sms_recipient_acs_refuses_counts_as_failed_and_the_others_as_sent(telemetry):
    world = World()
    world.sms.outcomes["+14255550001"] = [RequestRejected("sms recipient: not a mobile number")]
    sent_before = telemetry.total("notify.messages.sent", channel="sms")
    failed_before = telemetry.total("notify.messages.failed", channel="sms")
    n, _ = world.submit(sms_command("+14255551234", "+14255550001"))

    world.dispatch(n.id)

    assert telemetry.total("notify.messages.sent", channel="sms") - sent_before == 1
    assert telemetry.total("notify.messages.failed", channel="sms") - failed_before == 1


def test_a_dead_letter_is_counted_with_its_reason(telemetry):
    world = World()
    world.email.failures.append(RequestRejected("email send: the request is not valid"))
    before = telemetry.total("notify.notifications.dead_lettered", channel="email", reason="RequestRejected")
    n, _ = world.submit(email_command())

    outcome = world.dispatch(n.id)

    assert outcome.reason == "RequestRejected"
    assert telemetry.total("notify.notifications.dead_lettered", channel="email", reason="RequestRejected") - before == 1


def test_queue_age_is_how_long_the_message_waited_before_the_dispatcher_took_it(faked_services, telemetry):
    submit(faked_services)
    [message] = faked_services.queue.sent
    enqueued = faked_services.clock.now()
    faked_services.clock.advance(7)
    before = telemetry.points("notify.queue.age", queue="notifications")
    count, total = sum(p.count for p in before), sum(p.sum for p in before)

    triggers.dispatch_queue_message(json.dumps(message.body), message.application_properties, enqueued)

    after = telemetry.points("notify.queue.age", queue="notifications")
    assert sum(p.count for p in after) - count == 1
    assert sum(p.sum for p in after) - total == pytest.approx(7)


def test_the_reconciler_publishes_each_channels_failure_rate(telemetry):
    world = World()
    for i in range(4):
        n, _ = world.submit(email_command(f"u{i}@example.com"))
        world.dispatch(n.id)
        status = "Bounced" if i == 0 else "Delivered"
        world.reports(DeliveryReport(event_id=f"e{i}", channel=Channel.EMAIL, message_id=n.id, recipient=f"u{i}@example.com", status=status))
    world.clock.advance(1)
    now = world.clock.now()
    thresholds = FailureRateThresholds(warning=0.01, critical=0.02, window_minutes=60, min_sent=50)

    handlers.reconcile(
        Reconcile(report_deadline=now - timedelta(hours=1), requeue_before=now, thresholds=thresholds),
        ledger=world.ledger, publisher=world.publisher, suppressions=world.suppressions, clock=world.clock,
    )

    [point] = telemetry.points("notify.failure_rate", channel="email")
    assert point.value == 0.25


def test_an_exception_a_library_records_on_a_span_is_exported_with_the_recipient_masked(telemetry):
    from opentelemetry import trace

    with pytest.raises(ValueError):
        with trace.get_tracer("some.library").start_as_current_span("GET /somewhere"):
            raise ValueError(f"no route to {ADDRESS} or +14255557731")

    exported = telemetry.span("GET /somewhere")
    assert ADDRESS not in exported.to_json() and "+14255557731" not in exported.to_json()
    [event] = exported.events
    assert event.attributes["exception.message"] == "no route to g***@navy.example.org or +1******7731"
    assert "g***@navy.example.org" in exported.status.description
