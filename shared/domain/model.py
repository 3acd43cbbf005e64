"""The notification, its recipients, and the rules for how their status may change.

Status lives per recipient; the notification's status is derived from its recipients, so the
two can never disagree. Recipient statuses only ever move *up* the ranking below. That single rule
is what makes delivery reports idempotent and order-free: whatever order reports arrive in,
however often, each recipient ends on the highest-ranked status any report claimed.

    pending < sent < unconfirmed < delivered < suppressed < filtered_spam < quarantined
            < failed < bounced

* ``unconfirmed`` (no report by the deadline) ranks below every report, so a late report wins.
* Among final statuses, a worse outcome outranks a better one: a bounce that follows a
  ``Delivered`` (the recipient's server accepted, then bounced) is the truth the sender needs.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import uuid_utils
from pydantic import BaseModel, Field, PrivateAttr

from .errors import SendError
from .masking import mask_recipient, mask_text


def new_notification_id() -> str:
    """A new notification id: a UUIDv7, so ids sort by the millisecond they were made in. Stores
    use that order: the Table Storage ledger keeps notifications made in the same hour together,
    where a delivery-report batch reads and writes them a partition at a time. ``uuid_utils``
    keeps ids made in one millisecond in order with a counter; a generator that moves the
    millisecond on instead (``uuid6``) runs ahead of the clock under load: 20 s after 20,000 ids."""
    return str(uuid_utils.uuid7())


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


class RecipientStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    UNCONFIRMED = "unconfirmed"
    DELIVERED = "delivered"
    SUPPRESSED = "suppressed"
    FILTERED_SPAM = "filtered_spam"
    QUARANTINED = "quarantined"
    FAILED = "failed"
    BOUNCED = "bounced"


RANK: dict[RecipientStatus, int] = {status: rank for rank, status in enumerate(RecipientStatus)}


class NotificationStatus(StrEnum):
    ACCEPTED = "accepted"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    SUPPRESSED = "suppressed"
    FAILED = "failed"
    UNCONFIRMED = "unconfirmed"
    DEAD_LETTERED = "dead_lettered"


# How a recipient's final status counts for the notification as a whole. Quarantine and spam
# filtering are failures to deliver from the sender's point of view.
_NOTIFICATION_OUTCOME = {
    RecipientStatus.DELIVERED: NotificationStatus.DELIVERED,
    RecipientStatus.SUPPRESSED: NotificationStatus.SUPPRESSED,
    RecipientStatus.FILTERED_SPAM: NotificationStatus.FAILED,
    RecipientStatus.QUARANTINED: NotificationStatus.FAILED,
    RecipientStatus.FAILED: NotificationStatus.FAILED,
    RecipientStatus.BOUNCED: NotificationStatus.BOUNCED,
    RecipientStatus.UNCONFIRMED: NotificationStatus.UNCONFIRMED,
}
# When recipients disagree, the notification reports the outcome that most needs attention.
_OUTCOME_SEVERITY = [
    NotificationStatus.DELIVERED,
    NotificationStatus.UNCONFIRMED,
    NotificationStatus.SUPPRESSED,
    NotificationStatus.FAILED,
    NotificationStatus.BOUNCED,
]

# Raw ACS report statuses, lower-cased, to recipient statuses. ``expanded`` is informational:
# a distribution list was expanded; it is recorded but changes nothing.
_REPORT_STATUS = {
    "delivered": RecipientStatus.DELIVERED,
    "bounced": RecipientStatus.BOUNCED,
    "suppressed": RecipientStatus.SUPPRESSED,
    "failed": RecipientStatus.FAILED,
    "quarantined": RecipientStatus.QUARANTINED,
    "filteredspam": RecipientStatus.FILTERED_SPAM,
}
INFORMATIONAL_REPORT_STATUSES = frozenset({"expanded"})

_SMS_REPEATABILITY_NAMESPACE = uuid.UUID("0b1c6f4e-8d52-4c1a-9a57-3f0d2a6b9e11")


def recipient_status_for_report(raw_status: str) -> RecipientStatus | None:
    """The recipient status a report claims, or None for informational and unknown statuses."""
    return _REPORT_STATUS.get(raw_status.strip().lower().replace("_", ""))


class HistoryEntry(BaseModel):
    at: datetime
    event: str
    recipient: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class StatusEventType(StrEnum):
    """What a status event says happened. The event type published is
    ``<STATUS_EVENT_TYPE_PREFIX>.notification.<value>``."""

    ACCEPTED = "accepted"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    OPTED_OUT = "opted_out"
    UNCONFIRMED = "unconfirmed"
    DEAD_LETTERED = "dead_lettered"
    REPLAYED = "replayed"


#: History events that are a status change of the notification as a whole.
_NOTIFICATION_STATUS_EVENTS = {
    "accepted": StatusEventType.ACCEPTED,
    "dead_lettered": StatusEventType.DEAD_LETTERED,
    "replayed": StatusEventType.REPLAYED,
}
# A recipient's new status as subscribers see it: quarantine and spam filtering are failures to
# deliver (the recipient's own status is in the event too).
_RECIPIENT_STATUS_EVENTS = {
    "sent": StatusEventType.SENT,
    "unconfirmed": StatusEventType.UNCONFIRMED,
    "delivered": StatusEventType.DELIVERED,
    "suppressed": StatusEventType.SUPPRESSED,
    "filtered_spam": StatusEventType.FAILED,
    "quarantined": StatusEventType.FAILED,
    "failed": StatusEventType.FAILED,
    "bounced": StatusEventType.BOUNCED,
}
_STATUS_EVENT_NAMESPACE = uuid.UUID("5d2f8c1e-7b3a-4e62-9f0d-c4a1b8e93a27")
# uuid5 is SHA-1 over the namespace's bytes and then the name: hashing on from a copy of the
# namespace's state gives the same ids without hashing the namespace again for each event.
_STATUS_EVENT_ID_HASH = hashlib.sha1(_STATUS_EVENT_NAMESPACE.bytes, usedforsecurity=False)


def _status_event_id(key: str) -> str:
    """``uuid.uuid5(_STATUS_EVENT_NAMESPACE, key)``, a third cheaper (a thousand per report batch)."""
    digest = _STATUS_EVENT_ID_HASH.copy()
    digest.update(key.encode("utf-8"))
    return str(uuid.UUID(bytes=digest.digest()[:16], version=5))


class StatusEvent(BaseModel):
    """One status change, as it will be published: derived by the notification when the change
    happens and stored by the same ledger write (the outbox), then relayed to subscribers.

    ``id`` is derived from the notification, its ``sequence`` number, the status and the
    recipient, so it is the same however often the event is relayed: subscribers drop duplicates
    by it. ``sequence`` counts the notification's events from 1 and orders them.
    """

    id: str
    notification_id: str
    sequence: int
    status: StatusEventType
    channel: Channel
    #: Masked (``j***@example.com``); None for an event about the notification as a whole.
    recipient: str | None = None
    recipient_status: str | None = None
    notification_status: str
    reason: str | None = None
    correlation_id: str | None = None
    caller_properties: dict[str, str] = Field(default_factory=dict)
    at: datetime


class Recipient(BaseModel):
    address: str
    kind: Literal["to", "cc", "bcc"] = "to"
    display_name: str | None = None
    status: RecipientStatus = RecipientStatus.PENDING
    message_id: str | None = None
    reason: str | None = None
    updated_at: datetime | None = None

    def raise_to(self, status: RecipientStatus, at: datetime, reason: str | None = None) -> bool:
        if RANK[status] <= RANK[self.status]:
            return False
        self.status = status
        self.reason = reason
        self.updated_at = at
        return True


class DeadLetterInfo(BaseModel):
    reason: str
    description: str
    at: datetime


class AuditEntry(BaseModel):
    """One operator action, kept in the ledger: who did what, with which filter, and what
    happened to each message it touched (``outcomes``: ``{"id", "notificationId", "outcome",
    "reason"}`` with outcome ``replayed``, ``skipped``, ``purged``, ``added`` or ``removed``)."""

    id: str
    at: datetime
    actor: str
    action: str
    filter: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = False
    #: False while the action is still running (or if it was interrupted).
    finished: bool = True
    outcomes: list[dict[str, Any]] = Field(default_factory=list)


class Suppression(BaseModel):
    """A recipient the service will not send to again on a channel, and why."""

    channel: Channel
    address: str
    reason: str
    created_at: datetime
    notification_id: str | None = None

    @staticmethod
    def key(channel: Channel, address: str) -> str:
        # Email addresses compare case-insensitively in practice; E.164 numbers are canonical.
        return address.lower() if channel is Channel.EMAIL else address


#: Report outcomes that put an email address on the suppression list.
SUPPRESSING_STATUSES = frozenset({RecipientStatus.BOUNCED, RecipientStatus.SUPPRESSED})


class DeliveryReport(BaseModel):
    """One recipient's delivery report, as read from an ACS Event Grid event.

    ``kind="engagement"`` is an email open or click: ``status`` holds the engagement type and
    ``detail`` its context (the clicked link). It goes into the history and never changes a status.
    """

    event_id: str
    channel: Channel
    message_id: str
    recipient: str | None = None
    status: str
    detail: str | None = None
    occurred_at: datetime | None = None
    kind: Literal["delivery", "engagement"] = "delivery"


class InboundSms(BaseModel):
    """An SMS a recipient sent to one of our numbers (ACS ``SMSReceived``)."""

    event_id: str
    sender: str
    to: str
    message: str
    received_at: datetime | None = None

    @property
    def keyword(self) -> Literal["stop", "start"] | None:
        """The opt-out or opt-in keyword the message is, if it is one (carriers' standard set)."""
        word = " ".join(self.message.upper().replace(".", " ").replace("!", " ").split())
        if word in OPT_OUT_KEYWORDS:
            return "stop"
        if word in OPT_IN_KEYWORDS:
            return "start"
        return None


OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "OPT OUT", "REVOKE"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "OPTIN", "OPT IN", "SUBSCRIBE"})
#: Suppressions that an SMS START may lift: only the recipient's own opt-out, never an operator's entry.
OPT_OUT_REASON = "OptedOut"


def e164(number: str) -> str:
    """ACS writes inbound numbers with or without the leading +; recipients are stored with it."""
    number = number.strip()
    return number if number.startswith("+") else f"+{number}"


class Notification(BaseModel):
    id: str
    channel: Channel
    sender: str
    recipients: list[Recipient]
    content: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: The caller that submitted it; senders see only their own notifications.
    owner: str | None = None
    correlation_id: str | None = None
    caller_properties: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    request_hash: str | None = None
    #: The W3C traceparent of the request that accepted it, so the spans of its delivery reports,
    #: which arrive in Event Grid's own trace, can link back to it.
    trace_context: str | None = None
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None = None
    attempts: int = 0
    first_attempt_at: datetime | None = None
    #: While set and in the future, one dispatcher is sending; duplicate queue messages step aside.
    sending_until: datetime | None = None
    #: The attempt number carried by the queue message that started the current attempt.
    attempt_started_by: int = 0
    #: True from the start of an attempt until its outcome is known. Still true at the next attempt
    #: (the worker died mid-send, or the error left it open whether ACS acted), it means: ask ACS
    #: whether it already has this send before sending again.
    outcome_unknown: bool = False
    check_before_send: bool = False
    dead_letter: DeadLetterInfo | None = None
    #: How often an operator replayed it. Each replay starts a fresh retry budget.
    replay_count: int = 0
    #: ``attempts`` when the current chain started (0, or the count at the last replay). The retry
    #: policy counts attempts from here, while ``attempts`` itself never goes back: the fencing in
    #: ``dispatch_verdict`` and the queue message ids (``<id>:<attempt>``) rely on it only growing.
    attempts_before_replay: int = 0
    history: list[HistoryEntry] = Field(default_factory=list)
    applied_event_ids: list[str] = Field(default_factory=list)
    #: Status events derived since the ledger last took them into its outbox; ``add`` and
    #: ``save`` store them with the change itself (see ``Ledger``).
    pending_status_events: list[StatusEvent] = Field(default_factory=list)
    #: How many status events this notification has produced: the next one's ``sequence`` - 1.
    status_event_sequence: int = 0
    #: Optimistic-concurrency token owned by the ledger.
    version: int = 0
    # Each recipient's status as of the last status event: a change from it is the next event.
    _published_statuses: list[RecipientStatus] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any) -> None:
        # A stored notification's statuses already had their events, written with them. (Written
        # to pydantic's private-values dict directly, as ``_derive_status_events`` reads it: once
        # per notification a batch of reports loads.)
        self.__pydantic_private__["_published_statuses"] = [r.status for r in self.recipients]

    # ---------------------------------------------------------------- creation

    @classmethod
    def accept(
        cls,
        *,
        channel: Channel,
        sender: str,
        recipients: list[Recipient],
        content: dict[str, Any],
        metadata: dict[str, Any],
        at: datetime,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        notification_id: str | None = None,
        owner: str | None = None,
        trace_context: str | None = None,
        correlation_id: str | None = None,
        caller_properties: dict[str, str] | None = None,
    ) -> Notification:
        notification = cls(
            id=notification_id or new_notification_id(),
            channel=channel,
            sender=sender,
            recipients=recipients,
            content=content,
            metadata=metadata,
            owner=owner,
            correlation_id=correlation_id,
            caller_properties=dict(caller_properties or {}),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            trace_context=trace_context,
            created_at=at,
            updated_at=at,
        )
        detail: dict[str, Any] = {"recipients": len(recipients)}
        if "template" in content:
            detail["template"] = content["template"]
        notification._record(at, "accepted", detail=detail)
        return notification

    # ---------------------------------------------------------------- derived state

    @property
    def status(self) -> NotificationStatus:
        statuses = [r.status for r in self.recipients]
        if RecipientStatus.PENDING in statuses:
            return NotificationStatus.DEAD_LETTERED if self.dead_letter else NotificationStatus.ACCEPTED
        if RecipientStatus.SENT in statuses:
            return NotificationStatus.SENT
        outcomes = {_NOTIFICATION_OUTCOME[s] for s in statuses}
        return max(outcomes, key=_OUTCOME_SEVERITY.index)

    @property
    def needs_sending(self) -> bool:
        return self.dead_letter is None and any(r.status is RecipientStatus.PENDING for r in self.recipients)

    def pending_recipients(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status is RecipientStatus.PENDING]

    @property
    def reached_acs(self) -> bool:
        """Whether ACS was handed this notification for at least one recipient. One suppressed by
        our own list before sending never was, and must not count in ACS's failure rate."""
        return any(r.message_id for r in self.recipients)

    @property
    def message_ids(self) -> set[str]:
        return {r.message_id for r in self.recipients if r.message_id}

    @property
    def email_operation_id(self) -> str:
        """ACS email Operation-Id: the notification id itself, on every attempt."""
        return self.id

    def sms_repeatability_id(self, to: str) -> str:
        """Deterministic per notification and recipient, so ACS recognises a retry."""
        return str(uuid.uuid5(_SMS_REPEATABILITY_NAMESPACE, f"{self.id}/{to}"))

    # ---------------------------------------------------------------- transitions

    def mark_queued(self, at: datetime) -> None:
        self.queued_at = at
        self._record(at, "queued")

    def is_being_sent(self, at: datetime) -> bool:
        return self.sending_until is not None and self.sending_until > at

    def dispatch_verdict(self, attempt: int, at: datetime) -> Literal["send", "wait", "done", "stale"]:
        """What a queue message asking for ``attempt`` may do now.

        Exactly one chain of messages drives a notification. With no attempt under way, only the
        message for the next attempt (``attempts + 1``) may send. With an attempt started and never
        concluded (its worker died, or is still at it), the message that started it, or a newer
        one, waits for the lease and then takes over, however often workers die in between; any
        older message is a stale duplicate, and acting on it would start a second chain that
        ignores the backoff.
        """
        if not self.needs_sending:
            return "done"
        if self.sending_until is not None:
            if attempt < self.attempt_started_by:
                return "stale"
            return "wait" if self.is_being_sent(at) else "send"
        return "send" if attempt == self.attempts + 1 else "stale"

    def start_attempt(self, at: datetime, *, lease_until: datetime, by: int | None = None) -> int:
        """``by``: the attempt number of the queue message starting it (default: this attempt's)."""
        self.sending_until = lease_until
        self.attempt_started_by = by if by is not None else self.attempts + 1
        self.check_before_send = self.outcome_unknown
        self.outcome_unknown = True
        self.attempts += 1
        if self.first_attempt_at is None:
            self.first_attempt_at = at
        self._record(at, "send_attempt", detail={"attempt": self.attempts})
        return self.attempts

    def record_attempt_failed(
        self, at: datetime, error: SendError, *, retry_in: float | None, outcome_unknown: bool
    ) -> None:
        """``outcome_unknown``: whether ACS may hold a send from this or an earlier attempt that
        nobody has confirmed; it stays set until a lookup or a success settles it."""
        self.sending_until = None
        self.outcome_unknown = outcome_unknown
        detail: dict[str, Any] = {"attempt": self.attempts, "reason": error.reason, "error": error.describe()}
        if retry_in is not None:
            detail["retryInSeconds"] = round(retry_in, 3)
        self._record(at, "send_failed", detail=detail)

    def finish_attempt(self) -> None:
        self.sending_until = None
        self.outcome_unknown = False

    def record_sent(self, at: datetime, address: str, message_id: str) -> None:
        for recipient in self.recipients:
            if recipient.address == address and recipient.status is RecipientStatus.PENDING:
                recipient.message_id = message_id
                recipient.raise_to(RecipientStatus.SENT, at)
        self._record(at, "sent", recipient=address, detail={"messageId": message_id})

    def record_all_sent(self, at: datetime, message_id: str) -> None:
        """Email: one ACS operation carries every recipient."""
        for recipient in self.pending_recipients():
            recipient.message_id = message_id
            recipient.raise_to(RecipientStatus.SENT, at)
        self._record(at, "sent", detail={"messageId": message_id})

    def record_recipient_refused(self, at: datetime, address: str, error: SendError) -> None:
        for recipient in self.recipients:
            if recipient.address == address and recipient.status is RecipientStatus.PENDING:
                recipient.raise_to(RecipientStatus.FAILED, at, reason=error.reason)
        self._record(at, "recipient_refused", recipient=address, detail={"reason": error.reason, "error": error.describe()})

    def record_recipient_suppressed(self, at: datetime, address: str, reason: str) -> None:
        for recipient in self.recipients:
            if recipient.address == address and recipient.status is RecipientStatus.PENDING:
                recipient.raise_to(RecipientStatus.SUPPRESSED, at, reason=reason)
        self._record(at, "suppressed", recipient=address, detail={"reason": reason})

    def newly_suppressing(self, report: DeliveryReport) -> list[str]:
        """Addresses this report puts on the suppression list (hard bounces, ACS suppressions)."""
        claimed = recipient_status_for_report(report.status)
        if self.channel is not Channel.EMAIL or claimed not in SUPPRESSING_STATUSES:
            return []
        return [
            r.address
            for r in self.recipients
            if r.message_id == report.message_id and report.recipient and r.address.lower() == report.recipient.lower()
        ]

    def mark_dead_lettered(self, at: datetime, reason: str, description: str) -> None:
        self.sending_until = None
        self.outcome_unknown = False
        self.dead_letter = DeadLetterInfo(reason=reason, description=description, at=at)
        self._record(at, "dead_lettered", detail={"reason": reason, "description": description})

    @property
    def attempts_in_chain(self) -> int:
        """Attempts since the chain began (acceptance or the last replay), for the retry budget."""
        return self.attempts - self.attempts_before_replay

    def record_replay(
        self, at: datetime, by: str, replay_count: int, *, suppressed: dict[str, str] | None = None, audit_id: str | None = None
    ) -> list[Recipient]:
        """An operator replays it: the recipients still to send (never one that was sent, delivered
        or refused), after marking ``suppressed`` ones (address -> reason: suppressed or opted out
        since) as such. When any is left to send, clears the dead letter, starts a fresh chain of
        attempts and records ``replayed``; when none is, records nothing more (no ``replayed``).

        ``queued_at`` is cleared until the replay's queue message is enqueued: if the replay stops
        in between, the reconciliation re-queues it (``unqueued``), so a replay recorded here can
        never leave the notification with nobody to send it.
        """
        for address, reason in (suppressed or {}).items():
            self.record_recipient_suppressed(at, address, reason)
        to_send = self.pending_recipients()
        if not to_send:
            # Nothing will be sent: no replay to record; the suppressions above end it.
            return to_send
        previous = self.dead_letter
        self.dead_letter = None
        self.replay_count = replay_count
        self.attempts_before_replay = self.attempts
        if to_send:
            self.queued_at = None
            # The last attempt may have reached ACS even if it was recorded as failed (a timeout
            # before the dead letter): the replayed email asks ACS before it sends again.
            self.outcome_unknown = self.outcome_unknown or self.attempts > 0
        detail: dict[str, Any] = {"by": by, "replayCount": replay_count, "recipients": len(to_send)}
        if previous is not None:
            detail["deadLetterReason"] = previous.reason
        if suppressed:
            detail["suppressed"] = len(suppressed)
        if audit_id:
            detail["auditId"] = audit_id
        self._record(at, "replayed", detail=detail)
        return to_send

    def record_purged(self, at: datetime, by: str, *, audit_id: str | None = None) -> None:
        """An operator gives up on a dead letter: its unsent recipients end ``failed`` (reason
        ``DeadLetterPurged``), so the notification has a terminal state and leaves the dead letters."""
        for recipient in self.pending_recipients():
            recipient.raise_to(RecipientStatus.FAILED, at, reason="DeadLetterPurged")
        detail: dict[str, Any] = {"by": by}
        if self.dead_letter is not None:
            detail["deadLetterReason"] = self.dead_letter.reason
        if audit_id:
            detail["auditId"] = audit_id
        self._record(at, "purged", detail=detail)

    def apply_report(self, report: DeliveryReport, at: datetime) -> bool:
        """Apply one delivery report; returns False when it changed nothing (duplicate, unknown)."""
        if report.event_id in self.applied_event_ids:
            return False
        self.applied_event_ids.append(report.event_id)
        if report.kind == "engagement":
            detail = {"type": report.status.lower(), "eventId": report.event_id}
            if report.detail:
                detail["context"] = report.detail[:500]
            if report.occurred_at:
                detail["occurredAt"] = report.occurred_at.isoformat()
            self._record(at, "engagement", recipient=report.recipient, detail=detail)
            return True
        claimed = recipient_status_for_report(report.status)
        targets = [
            r
            for r in self.recipients
            if r.message_id == report.message_id
            and (report.recipient is None or self.channel is Channel.SMS or r.address.lower() == report.recipient.lower())
        ]
        detail: dict[str, Any] = {"status": report.status, "messageId": report.message_id, "eventId": report.event_id}
        if report.detail:
            detail["detail"] = report.detail
        if report.occurred_at:
            detail["occurredAt"] = report.occurred_at.isoformat()
        if claimed is None:
            known = report.status.strip().lower() in INFORMATIONAL_REPORT_STATUSES
            detail["effect"] = "informational" if known else "unknown_status"
        else:
            # A reason explains an outcome that needs one; "No error." on a delivery does not.
            reason = None if claimed is RecipientStatus.DELIVERED else report.detail
            changed = [r.raise_to(claimed, at, reason=reason) for r in targets]
            detail["effect"] = "applied" if any(changed) else "superseded"
        address = targets[0].address if len(targets) == 1 else report.recipient
        self._record(at, "delivery_report", recipient=address, detail=detail)
        return True

    def mark_unconfirmed(self, at: datetime, sent_before: datetime) -> bool:
        changed = False
        for recipient in self.recipients:
            if recipient.status is RecipientStatus.SENT and recipient.updated_at and recipient.updated_at <= sent_before:
                recipient.raise_to(RecipientStatus.UNCONFIRMED, at, reason="NoDeliveryReport")
                self._record(at, "unconfirmed", recipient=recipient.address)
                changed = True
        return changed

    def _record(self, at: datetime, event: str, *, recipient: str | None = None, detail: dict | None = None) -> None:
        self.updated_at = at
        self.history.append(HistoryEntry(at=at, event=event, recipient=recipient, detail=detail or {}))
        self._derive_status_events(at, event, detail or {})

    # ---------------------------------------------------------------- status events

    def _derive_status_events(self, at: datetime, event: str, detail: dict) -> None:
        """Every change of the notification's or a recipient's status becomes one status event,
        here, so whatever records the change also records its event."""
        whole = _NOTIFICATION_STATUS_EVENTS.get(event)
        if whole is not None:
            reason = detail.get("reason") if whole is StatusEventType.DEAD_LETTERED else None
            self._add_status_event(at, whole, reason=reason)
        statuses = [r.status for r in self.recipients]
        # ``self._published_statuses`` would cost pydantic a failed lookup and an AttributeError
        # (about 2 us, 4 % of a batch of reports); its documented private-values dict is a plain read.
        published = self.__pydantic_private__["_published_statuses"]
        if statuses == published:
            return
        for index, recipient in enumerate(self.recipients):
            before = published[index] if index < len(published) else None
            if recipient.status == before:
                continue
            status = _RECIPIENT_STATUS_EVENTS.get(recipient.status.value)
            if status is StatusEventType.SUPPRESSED and recipient.reason and OPT_OUT_REASON in recipient.reason:
                status = StatusEventType.OPTED_OUT
            if status is not None:  # back to pending (a replay) is no status to announce
                self._add_status_event(at, status, recipient=(index, recipient))
        self._published_statuses = statuses

    def _add_status_event(
        self, at: datetime, status: StatusEventType, *, recipient: tuple[int, Recipient] | None = None,
        reason: str | None = None,
    ) -> None:
        self.status_event_sequence += 1
        sequence = self.status_event_sequence
        index, who = recipient if recipient else (None, None)
        if who is not None:
            reason = who.reason
            if reason is None and who.status.value != status.value and status is StatusEventType.FAILED:
                reason = who.status.value
        # The recipient's position, not its address, goes into the id: ids are published.
        key = f"{self.id}/{sequence}/{status.value}/{'' if index is None else index}"
        # Validated rather than ``model_construct``ed: pydantic-core checks these already-typed
        # values faster than ``model_construct`` sets them in Python, and copies the properties.
        self.pending_status_events.append(
            StatusEvent(
                id=_status_event_id(key),
                notification_id=self.id,
                sequence=sequence,
                status=status,
                channel=self.channel,
                recipient=mask_recipient(who.address) if who is not None else None,
                recipient_status=who.status.value if who is not None else None,
                notification_status=self.status.value,
                reason=mask_text(reason) if reason else None,
                correlation_id=self.correlation_id,
                caller_properties=self.caller_properties,
                at=at,
            )
        )
