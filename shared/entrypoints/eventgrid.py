"""Reading ACS events from Event Grid, in either schema, tolerantly.

Only the few fields we use are read, with keys matched case-insensitively: Microsoft's own
samples use PascalCase data keys for SMS events, and both ``deliveryAttemptTimestamp`` and
``deliveryAttemptTimeStamp`` occur. An event that cannot be read is counted, never fatal to the
rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from ..domain.model import Channel, DeliveryReport, InboundSms, e164

EMAIL_DELIVERY = "microsoft.communication.emaildeliveryreportreceived"
SMS_DELIVERY = "microsoft.communication.smsdeliveryreportreceived"
EMAIL_ENGAGEMENT = "microsoft.communication.emailengagementtrackingreportreceived"
SMS_RECEIVED = "microsoft.communication.smsreceived"
VALIDATION = "microsoft.eventgrid.subscriptionvalidationevent"


def field_of(mapping: Any, *names: str) -> Any:
    """The value of the first of ``names`` present in ``mapping``, ignoring key case."""
    if not isinstance(mapping, dict):
        return None
    lowered = None
    for name in names:
        # Most events spell the key as documented: fold every key's case only when one does not.
        if name in mapping:
            return mapping[name]
        if lowered is None:
            lowered = {str(k).lower(): v for k, v in mapping.items()}
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # .NET writes seven fractional digits; Python reads at most six.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    # Event Grid times are UTC; a timestamp written without an offset means UTC too.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass
class ParsedEvents:
    reports: list[DeliveryReport] = field(default_factory=list)
    inbound: list[InboundSms] = field(default_factory=list)
    validation_code: str | None = None
    foreign: int = 0
    malformed: int = 0
    ignored: int = 0


def _same_resource(a: str, b: str) -> bool:
    # Resource ids are case-insensitive; Microsoft's SMS samples lower-case the provider segment.
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def read_event(event: Any, *, trusted_source: str, parsed: ParsedEvents) -> None:
    if not isinstance(event, dict):
        parsed.malformed += 1
        return
    event_type = str(field_of(event, "eventType", "type") or "").lower()
    data = field_of(event, "data")
    if event_type == VALIDATION:
        code = field_of(data, "validationCode")
        if isinstance(code, str):
            parsed.validation_code = code
        else:
            parsed.malformed += 1
        return
    source = field_of(event, "topic", "source")
    if not isinstance(source, str) or not _same_resource(source, trusted_source):
        parsed.foreign += 1
        return
    if event_type not in (EMAIL_DELIVERY, SMS_DELIVERY, EMAIL_ENGAGEMENT, SMS_RECEIVED):
        parsed.ignored += 1
        return
    event_id = field_of(event, "id")
    if event_type == SMS_RECEIVED:
        sender, to, text = field_of(data, "from"), field_of(data, "to"), field_of(data, "message")
        if not all(isinstance(v, str) and v for v in (event_id, sender, to)) or not isinstance(text, str):
            parsed.malformed += 1
            return
        parsed.inbound.append(
            InboundSms(event_id=event_id, sender=e164(sender), to=e164(to), message=text,
                       received_at=_time(field_of(data, "receivedTimestamp", "receivedTimeStamp")))
        )
        return
    message_id = field_of(data, "messageId")
    if not isinstance(event_id, str) or not isinstance(message_id, str) or not message_id:
        parsed.malformed += 1
        return
    if event_type == EMAIL_ENGAGEMENT:
        engagement = field_of(data, "engagementType")
        if not isinstance(engagement, str) or not engagement:
            parsed.malformed += 1
            return
        context = field_of(data, "engagementContext")
        parsed.reports.append(
            DeliveryReport(
                event_id=event_id,
                channel=Channel.EMAIL,
                message_id=message_id,
                recipient=field_of(data, "recipient"),
                status=engagement,
                detail=context if isinstance(context, str) else None,
                occurred_at=_time(field_of(data, "userActionTimestamp", "userActionTimeStamp")),
                kind="engagement",
            )
        )
        return
    if event_type == EMAIL_DELIVERY:
        status = field_of(data, "status")
        details = field_of(data, "deliveryStatusDetails")
        report = DeliveryReport(
            event_id=event_id,
            channel=Channel.EMAIL,
            message_id=message_id,
            recipient=field_of(data, "recipient"),
            status=str(status or ""),
            detail=field_of(details, "statusMessage") if isinstance(details, dict) else details,
            occurred_at=_time(field_of(data, "deliveryAttemptTimestamp", "deliveryAttemptTimeStamp")),
        )
    else:
        status = field_of(data, "deliveryStatus")
        report = DeliveryReport(
            event_id=event_id,
            channel=Channel.SMS,
            message_id=message_id,
            recipient=field_of(data, "to"),
            status=str(status or ""),
            detail=field_of(data, "deliveryStatusDetails"),
            occurred_at=_time(field_of(data, "receivedTimestamp", "receivedTimeStamp")),
        )
    if not report.status:
        parsed.malformed += 1
        return
    parsed.reports.append(report)


def read_events(events: Iterable[Any], *, trusted_source: str) -> ParsedEvents:
    parsed = ParsedEvents()
    for event in events:
        try:
            read_event(event, trusted_source=trusted_source, parsed=parsed)
        except (TypeError, ValueError):
            parsed.malformed += 1
    return parsed
