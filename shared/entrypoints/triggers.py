"""What each non-HTTP trigger does, shared by the Functions app and the local worker.

Each function decodes its input, builds a command, and hands it to a handler with the ports from
``bootstrap``.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any, Iterable

from .. import bootstrap
from ..domain.commands import ApplyDeliveryReports, DispatchNotification, Reconcile
from ..service import handlers
from .eventgrid import ParsedEvents, read_events

log = logging.getLogger(__name__)

#: A notification accepted this long ago and never queued was interrupted mid-intake.
REQUEUE_AFTER = timedelta(minutes=2)


def dispatch_queue_message(body: bytes | str) -> handlers.DispatchOutcome:
    try:
        data = json.loads(body)
        cmd = DispatchNotification(notification_id=str(data["notificationId"]), attempt=int(data.get("attempt", 1)))
    except (ValueError, KeyError, TypeError):
        return handlers.DeadLettered("MalformedMessage", "The queue message is not a dispatch request.")
    svc = bootstrap.services()
    return handlers.dispatch(
        cmd,
        ledger=svc.ledger,
        email_sender=svc.email_sender,
        sms_sender=svc.sms_sender,
        publisher=svc.publisher,
        suppressions=svc.suppressions,
        rate_limiter=svc.rate_limiter,
        policy=svc.policy,
        clock=svc.clock,
        lease=svc.send_lease,
    )


def apply_events(events: Iterable[Any]) -> tuple[ParsedEvents, handlers.ReportsApplied]:
    svc = bootstrap.services()
    parsed = read_events(events, trusted_source=svc.settings.acs_resource_id)
    if parsed.foreign:
        log.warning("rejected %d events from an untrusted source", parsed.foreign)
    applied = handlers.apply_delivery_reports(
        ApplyDeliveryReports(parsed.reports), ledger=svc.ledger, suppressions=svc.suppressions, clock=svc.clock
    )
    return parsed, applied


def run_reconciliation() -> handlers.Reconciled:
    svc = bootstrap.services()
    now = svc.clock.now()
    cmd = Reconcile(
        report_deadline=now - timedelta(seconds=svc.settings.delivery_report_deadline_seconds),
        requeue_before=now - REQUEUE_AFTER,
    )
    return handlers.reconcile(
        cmd, ledger=svc.ledger, publisher=svc.publisher, suppressions=svc.suppressions, clock=svc.clock
    )
