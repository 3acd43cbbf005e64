"""What each non-HTTP trigger does, shared by the Functions app and the local worker.

Each function decodes its input, builds a command, and hands it to a handler with the ports from
``bootstrap``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from opentelemetry.trace import SpanKind

from .. import bootstrap
from ..domain.commands import ApplyDeliveryReports, ApplyInboundSms, DispatchNotification, Reconcile
from ..domain.errors import FieldError, IdempotencyConflict, InvalidRequest
from ..service import handlers, status_events
from ..service import observability as obs
from ..service.ports import ReceivedMessage
from . import intake, schemas
from .eventgrid import ParsedEvents, read_events
from .problems import problem_details

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
    """ACS events from either entrypoint (the delivery-reports queue or the webhook), in either schema."""
    svc = svc or bootstrap.services()
    parsed = read_events(events, trusted_source=svc.settings.acs_resource_id)
    if parsed.foreign or parsed.malformed:
        log.warning("events refused: %d from an untrusted source, %d malformed", parsed.foreign, parsed.malformed)
    reports = handlers.apply_delivery_reports(
        ApplyDeliveryReports(parsed.reports), ledger=svc.ledger, suppressions=svc.suppressions, clock=svc.clock
    )
    inbound = handlers.apply_inbound_sms(ApplyInboundSms(parsed.inbound), suppressions=svc.suppressions, clock=svc.clock)
    return EventsApplied(parsed, reports, inbound)


@dataclass(frozen=True)
class EventMessagesApplied:
    """A batch of messages from the delivery-reports queue, applied together."""

    applied: EventsApplied
    #: Positions of the messages whose body is not a JSON object or array: delivering them again
    #: cannot help, so they are dead-lettered (``UNREADABLE_EVENT``) and the others completed. An
    #: object that is no valid event, or one from a foreign topic, is refused by ``read_events``,
    #: counted in ``applied.parsed`` and logged, and its message completed like the rest.
    unreadable: list[int]


UNREADABLE_EVENT = "UnreadableEvent"


def apply_event_messages(bodies: list[bytes | str], svc: bootstrap.Services | None = None) -> EventMessagesApplied:
    """Events that Event Grid put on the delivery-reports queue, one event (or an array of them)
    per message body, as the batch trigger receives them: applied in one
    ``apply_delivery_reports`` call (one read and one write of the ledger for the whole batch),
    where Event Grid's own trigger would have been one invocation, one read and one write per
    event.

    A failure to apply raises, so the whole batch is delivered again; applying a report twice
    changes nothing, so the reports that did land are harmless on the second delivery.
    """
    svc = svc or bootstrap.services()
    queue = svc.settings.delivery_reports_queue
    attributes = {
        "messaging.system": "servicebus",
        "messaging.destination.name": queue,
        "messaging.operation.type": "process",
        "messaging.batch.message_count": len(bodies),
    }
    with obs.span(f"{queue} process", kind=SpanKind.CONSUMER, attributes=attributes):
        events, unreadable = [], []
        for position, body in enumerate(bodies):
            try:
                event = json.loads(body)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting recurses
                event = None
            if isinstance(event, dict):
                events.append(event)
            elif isinstance(event, list):  # a batch in one body, as the webhook takes them
                events.extend(event)
            else:
                unreadable.append(position)
        if unreadable:
            log.warning("%d of %d delivery-report messages are not JSON events", len(unreadable), len(bodies))
        return EventMessagesApplied(apply_events(events, svc), unreadable)


def event_bodies_from_servicebus(messages: list[Any]) -> list[bytes]:
    """The bodies of ``ServiceBusReceivedMessage`` objects (what the batch binding hands over)."""
    from ..adapters.servicebus_queue import body_bytes

    return [body_bytes(message) for message in messages]


def run_reconciliation() -> handlers.Reconciled:
    svc = bootstrap.services()
    now = svc.clock.now()
    s = svc.settings
    cmd = Reconcile(
        report_deadline=now - timedelta(seconds=s.delivery_report_deadline_seconds),
        requeue_before=now - REQUEUE_AFTER,
        thresholds=svc.failure_rate_thresholds,
        purge_before=now - timedelta(days=s.retention_days),
    )
    return handlers.reconcile(
        cmd, ledger=svc.ledger, publisher=svc.publisher, suppressions=svc.suppressions, clock=svc.clock
    )


# ------------------------------------------------------------------------------ the requests queue

#: The application property that plays the Idempotency-Key header's part (else the message id does).
IDEMPOTENCY_KEY_PROPERTY = "Idempotency-Key"
#: Properties the Azure SDKs stamp on messages for distributed tracing: theirs, not the caller's.
_TRACING_PROPERTIES = frozenset({"diagnostic-id", "traceparent", "tracestate"})
VALIDATION_FAILED = "ValidationFailed"
IDEMPOTENCY_CONFLICT = "IdempotencyConflict"
#: A dead letter's description travels in a message header; a problem with hundreds of field
#: errors is cut to fit (``errorsOmitted`` says how many were left out).
MAX_DESCRIPTION_LENGTH = 4096


@dataclass(frozen=True)
class RequestMessage:
    """A message from the requests queue, as any queue technology delivers it."""

    #: As received (bytes), or already decoded by a queue that stores JSON (the embedded queue).
    body: bytes | str | dict[str, Any]
    message_id: str
    correlation_id: str | None = None
    application_properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestAccepted:
    notification_id: str
    #: False when an earlier delivery (or request) with the same idempotency key created it.
    created: bool


@dataclass(frozen=True)
class RequestRefused:
    """Delivering the message again cannot help: dead-letter it with this reason and description."""

    reason: str
    description: str


def request_owner(queue_name: str) -> str:
    """Who owns a notification that came through the requests queue.

    Service Bus does not tell the receiver which identity sent a message, and any holder of
    *Data Sender* on the queue can set any application property, so a property naming the app
    would be a claim, not an identity. The queue itself is the only thing we know: everything put
    on it shares one owner, and so one idempotency-key scope and one view over HTTP (operators).
    """
    return f"servicebus:{queue_name}"


def request_from_servicebus(message: Any) -> RequestMessage:
    """A ``ServiceBusReceivedMessage`` (what the Functions SDK-type binding hands the function)."""
    from ..adapters.servicebus_queue import application_properties, body_bytes

    return RequestMessage(
        body=body_bytes(message),
        message_id=str(message.message_id or ""),
        correlation_id=message.correlation_id,
        application_properties=application_properties(message),
    )


def request_from_queue(message: ReceivedMessage) -> RequestMessage:
    """A message received through the queue port (the local worker)."""
    return RequestMessage(
        body=message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        application_properties=message.application_properties,
    )


def accept_request_message(message: RequestMessage, svc: bootstrap.Services | None = None) -> RequestAccepted | RequestRefused:
    """The intake trigger: validate a queued request as the HTTP route does and submit it.

    An invalid request, or a reused idempotency key with another body, is refused (to be
    dead-lettered) and stores and queues nothing. Anything else that fails, such as the ledger or
    the attachment store being unreachable, raises, so the message is delivered again.
    """
    svc = svc or bootstrap.services()
    queue = svc.settings.requests_queue
    attributes = {"messaging.system": "servicebus", "messaging.destination.name": queue, "messaging.operation.type": "process"}
    # A sender whose SDK stamped W3C trace context on the message sees its trace continue here.
    with obs.span(
        f"{queue} process", context=obs.extract(message.application_properties), kind=SpanKind.CONSUMER, attributes=attributes
    ):
        return _accept_request_message(message, svc)


def _accept_request_message(message: RequestMessage, svc: bootstrap.Services) -> RequestAccepted | RequestRefused:
    key: Any = None
    properties: dict[str, Any] = {}
    for name, value in message.application_properties.items():
        if name.lower() == IDEMPOTENCY_KEY_PROPERTY.lower():
            key = value
        elif name.lower() not in _TRACING_PROPERTIES:
            properties[name] = value
    envelope = intake.Envelope(
        # A sender that sets neither gets no idempotency: an empty id must not become one shared key.
        idempotency_key=key if key is not None else (message.message_id or None),
        correlation_id=message.correlation_id,
        properties=properties,
        correlation_id_field="CorrelationId",
    )
    try:
        body = _request_body(message.body, svc.settings.max_request_bytes)
        cmd = intake.parse_request(
            body,
            settings=svc.settings,
            templates=svc.templates,
            caller=request_owner(svc.settings.requests_queue),
            envelope=envelope,
        )
        notification, created = handlers.submit_notification(
            cmd, ledger=svc.ledger, publisher=svc.publisher, attachments=svc.attachments, clock=svc.clock
        )
    except InvalidRequest as exc:
        # Field pointers only: an error message may quote what the caller sent.
        log.warning(
            "request message %s refused (%s): %s", message.message_id, VALIDATION_FAILED, ", ".join(e.field for e in exc.errors)
        )
        return RequestRefused(VALIDATION_FAILED, _description(problem_details(422, exc.detail, errors=exc.errors)))
    except IdempotencyConflict as exc:
        log.warning("request message %s refused (%s): key held by %s", message.message_id, IDEMPOTENCY_CONFLICT, exc.existing_id)
        return RequestRefused(IDEMPOTENCY_CONFLICT, _description(problem_details(409, str(exc), existingId=exc.existing_id)))
    return RequestAccepted(notification.id, created)


def _request_body(raw: bytes | str | dict[str, Any], limit: int) -> Any:
    """The message's JSON document, checked as the HTTP route checks a body (``api._json_body``):
    at most ``limit`` bytes, valid JSON, and no lone surrogate escape, which could be stored
    nowhere and would fail the message on every delivery instead of refusing it once."""
    if isinstance(raw, dict):
        # The embedded queue hands over the document itself: measure it as its JSON text.
        document: Any = raw
    else:
        if len(raw) > limit:
            raise InvalidRequest([FieldError("/", f"the body is larger than {limit} bytes")])
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest([FieldError("/", f"the body is not valid JSON: {exc}")]) from None
    try:
        size = schemas.json_document_size(document)
    except ValueError as exc:
        raise InvalidRequest([FieldError("/", str(exc))]) from None
    if isinstance(raw, dict) and size > limit:
        raise InvalidRequest([FieldError("/", f"the body is larger than {limit} bytes")])
    return document


def _description(problem: dict[str, Any]) -> str:
    errors = list(problem.get("errors", []))
    text = json.dumps(problem, ensure_ascii=False, separators=(",", ":"))
    omitted = 0
    while len(text) > MAX_DESCRIPTION_LENGTH and errors:
        errors.pop()
        omitted += 1
        text = json.dumps(problem | {"errors": errors, "errorsOmitted": omitted}, ensure_ascii=False, separators=(",", ":"))
    return text[:MAX_DESCRIPTION_LENGTH]


def relay_status_events() -> status_events.StatusEventsRelayed:
    svc = bootstrap.services()
    return status_events.relay_status_events(
        svc.status_relay_command,
        ledger=svc.ledger,
        destinations=svc.status_destinations,
        policy=svc.status_relay_policy,
        clock=svc.clock,
    )
