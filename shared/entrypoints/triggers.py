"""What each non-HTTP trigger does, shared by the Functions app and the local worker.

Each function decodes its input, builds a command, and hands it to a handler with the ports from
``bootstrap``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from opentelemetry.trace import SpanKind

from .. import bootstrap
from ..domain.commands import ApplyDeliveryReports, ApplyInboundSms, DispatchNotification, FailureRateThresholds, Reconcile
from ..service import handlers
from ..service import observability as obs
from .eventgrid import ParsedEvents, read_events

log = logging.getLogger(__name__)

#: A notification accepted this long ago and never queued was interrupted mid-intake.
REQUEUE_AFTER = timedelta(minutes=2)


def dispatch_queue_message(
    body: bytes | str,
    properties: Mapping[str, Any] | None = None,
    enqueued_at: datetime | None = None,
    *,
    queue: str | None = None,
) -> handlers.DispatchOutcome:
    """One dispatch message, from the Service Bus trigger or the local worker: a consumer span
    that continues the trace in the message's application properties (W3C ``traceparent``)."""
    svc = bootstrap.services()
    queue = queue or svc.settings.notifications_queue
    attributes = {"messaging.system": "servicebus", "messaging.destination.name": queue, "messaging.operation.type": "process"}
    with obs.span(
        f"{queue} process", context=obs.extract(properties), kind=SpanKind.CONSUMER, attributes=attributes
    ):
        if enqueued_at is not None:
            if enqueued_at.tzinfo is None:  # the Functions binding gives UTC without a zone
                enqueued_at = enqueued_at.replace(tzinfo=timezone.utc)
            obs.queue_age.record(obs.since(enqueued_at, svc.clock.now()), {"queue": queue})
        try:
            data = json.loads(body)
            cmd = DispatchNotification(notification_id=str(data["notificationId"]), attempt=int(data.get("attempt", 1)))
        except (ValueError, KeyError, TypeError):
            obs.dead_lettered.add(1, {"channel": "unknown", "reason": "MalformedMessage"})
            log.warning(
                "a queue message that is not a dispatch request was dead-lettered",
                extra={"event": "notify.dead_lettered", "channel": "unknown", "reason": "MalformedMessage"},
            )
            return handlers.DeadLettered("MalformedMessage", "The queue message is not a dispatch request.")
        return _dispatch(cmd, svc)


def _dispatch(cmd: DispatchNotification, svc: bootstrap.Services) -> handlers.DispatchOutcome:
    return handlers.dispatch(
        cmd,
        ledger=svc.ledger,
        email_sender=svc.email_sender,
        sms_sender=svc.sms_sender,
        publisher=svc.publisher,
        attachments=svc.attachments,
        suppressions=svc.suppressions,
        rate_limiter=svc.rate_limiter,
        policy=svc.policy,
        clock=svc.clock,
        lease=svc.send_lease,
    )


@dataclass(frozen=True)
class EventsApplied:
    parsed: ParsedEvents
    reports: handlers.ReportsApplied
    inbound: handlers.InboundApplied

    def summary(self, received: int) -> dict[str, int]:
        return {
            "received": received,
            "applied": self.reports.applied,
            "duplicates": self.reports.duplicates,
            "parked": self.reports.parked,
            "optedOut": self.inbound.opted_out,
            "optedIn": self.inbound.opted_in,
            "rejected": self.parsed.foreign,
            "malformed": self.parsed.malformed,
            "ignored": self.parsed.ignored,
        }


def apply_events(events: list[Any], svc: bootstrap.Services | None = None) -> EventsApplied:
    """ACS events from either entrypoint (the Event Grid trigger or the webhook), in either schema."""
    svc = svc or bootstrap.services()
    parsed = read_events(events, trusted_source=svc.settings.acs_resource_id)
    if parsed.foreign or parsed.malformed:
        log.warning("events refused: %d from an untrusted source, %d malformed", parsed.foreign, parsed.malformed)
    reports = handlers.apply_delivery_reports(
        ApplyDeliveryReports(parsed.reports), ledger=svc.ledger, suppressions=svc.suppressions, clock=svc.clock
    )
    inbound = handlers.apply_inbound_sms(ApplyInboundSms(parsed.inbound), suppressions=svc.suppressions, clock=svc.clock)
    return EventsApplied(parsed, reports, inbound)


def run_reconciliation() -> handlers.Reconciled:
    svc = bootstrap.services()
    now = svc.clock.now()
    s = svc.settings
    cmd = Reconcile(
        report_deadline=now - timedelta(seconds=s.delivery_report_deadline_seconds),
        requeue_before=now - REQUEUE_AFTER,
        thresholds=FailureRateThresholds(
            warning=s.failure_rate_warning,
            critical=s.failure_rate_critical,
            window_minutes=s.failure_rate_window_minutes,
            min_sent=s.failure_rate_min_sent,
        ),
        purge_before=now - timedelta(days=s.retention_days),
    )
    return handlers.reconcile(
        cmd, ledger=svc.ledger, publisher=svc.publisher, suppressions=svc.suppressions, clock=svc.clock
    )
