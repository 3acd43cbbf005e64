"""Ports: one per outside capability. Handlers depend on these, never on a technology.

Each port has one adapter per technology in ``shared.adapters`` and a fake in ``tests/fakes.py``;
the same contract tests run against every implementation of a port.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Protocol

from ..domain.model import AuditEntry, Channel, DeliveryReport, Notification, NotificationStatus, StatusEvent, Suppression


# ---------------------------------------------------------------------------- clock


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""


# ---------------------------------------------------------------------------- ledger


class Ledger(Protocol):
    """Durable record of every notification, its recipients and their history.

    Writes are optimistic: ``save`` raises ``ConcurrencyConflict`` when the stored version is not
    the one that was read, and bumps ``notification.version`` when it succeeds.

    The ledger is also the outbox of status events: ``add``, ``add_many``, ``save`` and
    ``save_many`` store the notification's ``pending_status_events`` in the same write as the
    change that produced them (a write that is refused stores none), and the relay reads them back
    with ``pending_status_events`` until ``mark_status_events_published`` removes them. Storing an
    event that is already in the outbox, or was published, never makes it pending again.
    """

    def add(self, notification: Notification) -> Notification:
        """Store a new notification. When its idempotency key is already taken, store nothing
        and return the notification that holds the key."""

    def add_many(self, notifications: list[Notification]) -> list[Notification]:
        """``add`` for each, in order, in as few writes as the store allows; a key used twice in
        the list returns the first holder for the second."""

    def get(self, notification_id: str) -> Notification | None: ...

    def save(self, notification: Notification) -> None: ...

    def save_many(self, notifications: list[Notification]) -> list[Notification]:
        """Save several in one write where the store allows; return those that lost a race
        (not saved, to be re-read and retried)."""

    def mark_queued(self, notifications: list[Notification], at: datetime) -> list[Notification]:
        """``Notification.mark_queued(at)`` on each and save it, as ``save_many`` would, in as few
        writes as the store allows: called once their queue messages are on the queue. Each must be
        as last read or written, with no other change of its own (a store may write only the
        mark). Returns those that lost a race (another writer saved first): nothing of theirs is
        saved, and they are to be re-read and marked again (the copies themselves may or may not
        carry the mark: only the stored notification counts). The others come back as stored,
        version and all."""

    def find_by_message_ids(self, message_ids: Iterable[str]) -> dict[str, Notification]:
        """Notifications that own the given ACS message ids, keyed by message id; the message ids
        of one notification map to one and the same copy of it, so that a batch's reports for
        several of its recipients all change what is saved."""

    def park_reports(self, reports: Iterable[DeliveryReport], at: datetime) -> None:
        """Keep reports whose message id no notification owns yet (they can beat the dispatcher).
        Parking the same event twice keeps one."""

    def parked_reports_for(self, message_ids: Iterable[str]) -> list[DeliveryReport]:
        """Parked reports for these message ids, left in place until discarded."""

    def claimable_parked_reports(self, limit: int) -> list[DeliveryReport]:
        """Parked reports whose message id a notification now owns, oldest first. Reports for
        other senders' messages (the system topic covers the whole ACS resource) never crowd
        these out."""

    def discard_parked_reports(self, event_ids: Iterable[str]) -> None:
        """Remove parked reports once they have been applied (applying is idempotent by event id,
        so a crash before this call only applies them again)."""

    def expire_parked_reports(self, parked_before: datetime) -> int:
        """Remove parked reports older than the cutoff that nobody claimed; returns how many."""

    def status_counts(
        self, *, start: datetime, end: datetime, channel: Channel | None = None
    ) -> dict[tuple[Channel, NotificationStatus, bool], int]:
        """Notifications accepted in [start, end), counted by channel, status and whether they
        reached ACS (``Notification.reached_acs``)."""

    def awaiting_reports(self, *, sent_before: datetime, limit: int) -> list[Notification]:
        """Notifications with a recipient still ``sent`` whose send is older than ``sent_before``."""

    def unqueued(self, *, accepted_before: datetime, limit: int) -> list[Notification]:
        """Notifications accepted before the cutoff that were never marked queued."""

    def purge(self, *, accepted_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` notifications accepted before the cutoff (oldest first), with
        their message ids, and parked reports older than it; returns how many notifications."""

    def dead_lettered(
        self,
        *,
        channel: Channel | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Notification]:
        """Notifications whose status is ``dead_lettered``, newest dead letter first: on
        ``channel``, with dead-letter ``reason`` (exactly), dead-lettered at or after ``since``."""

    def record_audit(self, entry: AuditEntry) -> None:
        """Keep an operator action. Recording an entry with the same id again replaces it (a long
        action records itself as it goes, then once more when it is finished)."""

    def audit_entries(self, *, since: datetime | None = None, limit: int = 100) -> list[AuditEntry]:
        """Operator actions at or after ``since``, newest first."""
    def pending_status_events(self, limit: int, *, exclude: Iterable[str] = ()) -> list[StatusEvent]:
        """Up to ``limit`` status events not yet published: each notification's in ``sequence``
        order (a cut-off batch holds the first of a notification's events, never later ones),
        notifications with older events first.

        ``exclude`` names notifications whose events are left out altogether (they stay pending):
        the relay pages past notifications whose head event a destination holds back, so that a
        full batch of held events cannot hide the newer events of other notifications."""

    def mark_status_events_published(self, events: Iterable[StatusEvent]) -> None:
        """Remove these events from the outbox (events already gone are ignored)."""


# ---------------------------------------------------------------------------- status events


class StatusEventPublisher(Protocol):
    """One destination of status events: an Event Grid topic in Azure, a subscriber's URL on the
    local stack. ``publish`` delivers a batch of CloudEvents 1.0 (structured JSON, as dicts) as a
    whole, in order, or raises ``StatusPublishFailed`` and delivered none as far as the caller can
    tell (a retry may deliver some twice: subscribers drop duplicates by ``id``)."""

    #: Names the destination in logs, without credentials or query strings.
    name: str

    def publish(self, events: list[dict[str, Any]]) -> None: ...


# ---------------------------------------------------------------------------- attachments


class AttachmentStore(Protocol):
    """The bytes of email attachments, kept outside the ledger and the queue (a Table Storage
    entity holds at most 1 MiB, a Service Bus message 256 KB). The notification keeps each
    attachment's metadata and the reference ``put`` returned.

    * ``put`` stores one attachment of a notification; putting the same index again replaces it.
    * ``get`` returns the bytes, or raises ``AttachmentNotFound`` when the reference names nothing.
    * ``delete`` removes every attachment of a notification; deleting what is not there is no error.

    Failures to reach the store raise ``AttachmentStoreUnavailable`` (transient).
    """

    def put(self, notification_id: str, index: int, content: bytes) -> str: ...

    def get(self, ref: str) -> bytes: ...

    def delete(self, notification_id: str) -> None: ...


# ---------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class RenderedTemplate:
    name: str
    version: int
    locale: str
    #: The sender the template names, if any (still checked against the allow-list).
    sender: str | None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    message: str | None = None


class TemplateError(Exception):
    """A template that cannot be used: unknown, not approved, wrong version or channel, or
    failing to render. ``field`` names the request field to blame, as a JSON pointer."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Templates(Protocol):
    """Approved content, rendered at intake so a broken template is the caller's 422, never a
    failure at send time."""

    def render(
        self, *, name: str, channel: Channel, data: dict[str, Any], version: int | None = None, locale: str | None = None
    ) -> RenderedTemplate: ...


# ---------------------------------------------------------------------------- suppressions


class SuppressionList(Protocol):
    """Recipients the service will not send to again, per channel, until an operator removes them."""

    def add(self, entry: Suppression) -> bool:
        """Add an entry; False (and nothing changed) when the recipient is already listed."""

    def add_many(self, entries: Iterable[Suppression]) -> int:
        """``add`` for each entry, in order (so of two for one recipient the first stays); returns
        how many were added. Where the store allows, in one write: a batch of delivery reports
        carries a hundred bounces."""

    def remove(self, channel: Channel, address: str) -> bool: ...

    def find(self, channel: Channel, addresses: Iterable[str]) -> dict[str, Suppression]:
        """Entries for those of ``addresses`` that are listed, keyed by the address as given."""

    def list(self, *, channel: Channel | None = None, limit: int = 100) -> list[Suppression]:
        """Newest first."""


# ---------------------------------------------------------------------------- queue


@dataclass(frozen=True)
class OutgoingMessage:
    body: dict[str, Any]
    message_id: str
    application_properties: dict[str, Any] = field(default_factory=dict)
    #: When set, the message becomes visible to receivers only at this time (scheduled enqueue).
    scheduled_at: datetime | None = None
    #: The sender's reference (Service Bus ``CorrelationId``), carried through unchanged.
    correlation_id: str | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    body: dict[str, Any]
    message_id: str
    application_properties: dict[str, Any]
    delivery_count: int
    enqueued_at: datetime
    sequence_number: int
    lock_token: str
    locked_until: datetime
    correlation_id: str | None = None


@dataclass(frozen=True)
class DeadLetteredMessage:
    body: dict[str, Any]
    message_id: str
    application_properties: dict[str, Any]
    delivery_count: int
    enqueued_at: datetime
    sequence_number: int
    reason: str
    description: str
    dead_lettered_at: datetime


class DeadLetterQueue(Protocol):
    """The queue's dead-letter sub-queue, for operator tools (``EmbeddedQueue``, ``ServiceBusQueue``)."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetteredMessage]:
        """Browse without locking, oldest first."""

    def remove_dead_letter(self, sequence_number: int) -> bool:
        """Delete one dead letter; False when it is not there (or another receiver holds it)."""


class MessagePublisher(Protocol):
    """Puts messages on a queue. All the handlers need: in Azure the Functions host receives."""

    def send(self, message: OutgoingMessage) -> None: ...

    def send_many(self, messages: list[OutgoingMessage]) -> None:
        """``send`` for each, in as few round trips as the technology allows."""


class MessageConsumer(Protocol):
    """Peek-lock receiving with Service Bus semantics, for the local worker and operator tools.

    * ``receive`` locks up to ``max_messages`` visible messages and increments their delivery
      count; a message whose lock expires becomes visible again.
    * ``complete`` deletes, ``abandon`` unlocks at once, ``dead_letter`` moves to the dead-letter
      sub-queue with a reason and description. Each raises ``LockLost`` when the lock expired or
      was never held.
    * A message received more than ``max_delivery_count`` times is dead-lettered with reason
      ``MaxDeliveryCountExceeded`` instead of being delivered again.
    """

    def receive(self, max_messages: int = 1, max_wait: float = 0.0) -> list[ReceivedMessage]: ...

    def complete(self, message: ReceivedMessage) -> None: ...

    def abandon(self, message: ReceivedMessage) -> None: ...

    def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None: ...

    def renew_lock(self, message: ReceivedMessage) -> ReceivedMessage: ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetteredMessage]: ...


# ---------------------------------------------------------------------------- ACS


@dataclass(frozen=True)
class EmailAddress:
    address: str
    display_name: str | None = None


@dataclass(frozen=True)
class EmailAttachment:
    name: str
    content_type: str
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class OutgoingEmail:
    operation_id: str
    sender: str
    to: list[EmailAddress]
    cc: list[EmailAddress]
    bcc: list[EmailAddress]
    subject: str
    text: str | None
    html: str | None
    reply_to: list[EmailAddress] = field(default_factory=list)
    attachments: list[EmailAttachment] = field(default_factory=list)


class EmailSender(Protocol):
    """Sends one email through ACS. Raises ``SendError`` subclasses only."""

    def send(self, email: OutgoingEmail) -> str:
        """Start the send and return ACS's message id, without waiting for the operation."""

    def find_operation(self, operation_id: str) -> str | None:
        """The message id of an earlier send with this operation id, or None if ACS never saw it."""


@dataclass(frozen=True)
class SmsRecipientRequest:
    to: str
    repeatability_request_id: str
    repeatability_first_sent: datetime


@dataclass(frozen=True)
class OutgoingSms:
    sender: str
    message: str
    recipients: list[SmsRecipientRequest]
    #: Echoed back by ACS in the delivery report.
    tag: str


@dataclass(frozen=True)
class SmsRecipientResult:
    to: str
    message_id: str | None
    #: None when ACS accepted this recipient.
    error: Exception | None = None


class SmsSender(Protocol):
    """Sends one SMS to several recipients. Whole-request failures raise ``SendError``; a
    recipient refused inside a 202 comes back as a result whose ``error`` is a ``SendError``."""

    def send(self, sms: OutgoingSms) -> list[SmsRecipientResult]: ...


# ---------------------------------------------------------------------------- quotas


class RateLimiter(Protocol):
    """Shared send quotas. ``acquire`` takes ``units`` for ``key`` (a channel) when every limit of
    its quota allows it and returns None; otherwise it takes nothing and returns the earliest time
    at which the same request could succeed."""

    def acquire(self, key: str, units: int, now: datetime) -> datetime | None: ...
