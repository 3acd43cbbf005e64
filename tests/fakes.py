"""Fakes for every port: in memory, recording what they were asked to do, and failing loudly
when used in a way the real adapter would refuse."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

from shared.domain.errors import ConcurrencyConflict, SendError
from shared.domain.model import AuditEntry, Channel, DeliveryReport, Notification, NotificationStatus, RecipientStatus, StatusEvent
from shared.service.ports import DeadLetteredMessage, OutgoingEmail, OutgoingMessage, OutgoingSms, SmsRecipientResult


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


class FakeLedger:
    """The Ledger port in memory. Stores deep copies, so a caller mutating its object changes
    nothing until it saves, as with a real store."""

    def __init__(self) -> None:
        self.rows: dict[str, Notification] = {}
        self.parked: dict[str, DeliveryReport] = {}
        self.parked_at: dict[str, datetime] = {}
        self.audit: dict[str, AuditEntry] = {}
        #: The status event outbox, in the order the writes stored them.
        self.outbox: dict[str, StatusEvent] = {}
        self.published: set[str] = set()

    def _copy(self, n: Notification) -> Notification:
        return n.model_copy(deep=True)

    def _store(self, n: Notification) -> None:
        """The write itself: the notification and its pending status events, together."""
        for event in n.pending_status_events:
            if event.id not in self.published:
                self.outbox.setdefault(event.id, event.model_copy(deep=True))
        n.pending_status_events = []
        self.rows[n.id] = self._copy(n)

    def add(self, notification: Notification) -> Notification:
        if notification.idempotency_key:
            for existing in self.rows.values():
                if existing.idempotency_key == notification.idempotency_key:
                    return self._copy(existing)
        notification.version = 1
        self._store(notification)
        return notification

    def add_many(self, notifications: list[Notification]) -> list[Notification]:
        return [self.add(n) for n in notifications]

    def get(self, notification_id: str) -> Notification | None:
        stored = self.rows.get(notification_id)
        return self._copy(stored) if stored else None

    def save(self, notification: Notification) -> None:
        if self.save_many([notification]):
            raise ConcurrencyConflict(notification.id)

    def save_many(self, notifications: list[Notification]) -> list[Notification]:
        lost = []
        for n in notifications:
            stored = self.rows.get(n.id)
            if stored is None or stored.version != n.version:
                lost.append(n)
                continue
            n.version += 1
            self._store(n)
        return lost

    def mark_queued(self, notifications: list[Notification], at: datetime) -> list[Notification]:
        for n in notifications:
            n.mark_queued(at)
        return self.save_many(notifications)

    def find_by_message_ids(self, message_ids: Iterable[str]) -> dict[str, Notification]:
        wanted = set(message_ids)
        found: dict[str, Notification] = {}
        for stored in self.rows.values():
            owned = stored.message_ids & wanted
            if owned:
                copy_ = self._copy(stored)
                for message_id in owned:
                    found[message_id] = copy_
        return found

    def park_reports(self, reports: Iterable[DeliveryReport], at: datetime) -> None:
        for report in reports:
            if report.event_id not in self.parked:
                self.parked[report.event_id] = report
                self.parked_at[report.event_id] = at

    def parked_reports_for(self, message_ids: Iterable[str]) -> list[DeliveryReport]:
        wanted = set(message_ids)
        return sorted((r for r in self.parked.values() if r.message_id in wanted), key=lambda r: self.parked_at[r.event_id])

    def claimable_parked_reports(self, limit: int) -> list[DeliveryReport]:
        owned = set().union(*(n.message_ids for n in self.rows.values())) if self.rows else set()
        return self.parked_reports_for(owned)[:limit]

    def discard_parked_reports(self, event_ids: Iterable[str]) -> None:
        for event_id in set(event_ids):
            if self.parked.pop(event_id, None) is not None:
                del self.parked_at[event_id]

    def expire_parked_reports(self, parked_before: datetime) -> int:
        old = [e for e, at in self.parked_at.items() if at < parked_before]
        self.discard_parked_reports(old)
        return len(old)

    def status_counts(self, *, start: datetime, end: datetime, channel: Channel | None = None):
        counts: dict[tuple[Channel, NotificationStatus, bool], int] = {}
        for n in self.rows.values():
            if start <= n.created_at < end and (channel is None or n.channel is channel):
                key = (n.channel, n.status, n.reached_acs)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def awaiting_reports(self, *, sent_before: datetime, limit: int) -> list[Notification]:
        found = [
            self._copy(n)
            for n in self.rows.values()
            if any(r.status is RecipientStatus.SENT and r.updated_at and r.updated_at <= sent_before for r in n.recipients)
        ]
        return found[:limit]

    def unqueued(self, *, accepted_before: datetime, limit: int) -> list[Notification]:
        found = [self._copy(n) for n in self.rows.values() if n.queued_at is None and n.created_at <= accepted_before]
        return found[:limit]

    def purge(self, *, accepted_before: datetime, limit: int) -> int:
        old = sorted((n for n in self.rows.values() if n.created_at < accepted_before), key=lambda n: n.created_at)[:limit]
        for n in old:
            del self.rows[n.id]
        gone = {n.id for n in old}
        self.outbox = {e: event for e, event in self.outbox.items() if event.notification_id not in gone}
        for event_id in [e for e, at in self.parked_at.items() if at < accepted_before]:
            del self.parked[event_id], self.parked_at[event_id]
        return len(old)

    def dead_lettered(self, *, channel=None, reason=None, since=None, limit: int = 100) -> list[Notification]:
        found = [
            n for n in self.rows.values()
            if n.status is NotificationStatus.DEAD_LETTERED
            and (channel is None or n.channel is channel)
            and (reason is None or n.dead_letter.reason == reason)
            and (since is None or n.dead_letter.at >= since)
        ]
        found.sort(key=lambda n: (-n.dead_letter.at.timestamp(), n.id))
        return [self._copy(n) for n in found[:limit]]

    def record_audit(self, entry: AuditEntry) -> None:
        self.audit[entry.id] = entry.model_copy(deep=True)

    def audit_entries(self, *, since=None, limit: int = 100) -> list[AuditEntry]:
        found = [e for e in self.audit.values() if since is None or e.at >= since]
        found.sort(key=lambda e: (-e.at.timestamp(), e.id))
        return [e.model_copy(deep=True) for e in found[:limit]]
    def pending_status_events(self, limit: int, *, exclude: Iterable[str] = ()) -> list[StatusEvent]:
        skipped = set(exclude)
        pending = [e for e in self.outbox.values() if e.notification_id not in skipped]
        return [e.model_copy(deep=True) for e in pending[:max(limit, 0)]]

    def mark_status_events_published(self, events: Iterable[StatusEvent]) -> None:
        for event in events:
            self.outbox.pop(event.id, None)
            self.published.add(event.id)


class FakeStatusEventPublisher:
    """A status event destination in memory: ``batches`` records every batch it took, in order;
    ``failures`` are raised one per call before it takes anything again."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.batches: list[list[dict]] = []
        self.failures: list[Exception] = []
        self.calls = 0

    def publish(self, events: list[dict]) -> None:
        self.calls += 1
        if not events:
            raise AssertionError("publish was called with no events")
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append(copy.deepcopy(events))

    @property
    def events(self) -> list[dict]:
        return [e for batch in self.batches for e in batch]


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.fail_next: Exception | None = None

    def send(self, message: OutgoingMessage) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.sent.append(message)

    def send_many(self, messages: list[OutgoingMessage]) -> None:
        for message in messages:
            self.send(message)


class FakeQueue(FakePublisher):
    """A publisher with a dead-letter sub-queue (``DeadLetterQueue``): ``dead`` holds the dead
    letters by sequence number; ``removed`` records what was removed."""

    def __init__(self) -> None:
        super().__init__()
        self.dead: dict[int, DeadLetteredMessage] = {}
        self.removed: list[int] = []
        self._sequence = 0

    def add_dead_letter(
        self, body: dict, reason: str, at: datetime, *, description: str = "", message_id: str | None = None
    ) -> DeadLetteredMessage:
        self._sequence += 1
        dead = DeadLetteredMessage(
            body=body,
            message_id=message_id or f"m-{self._sequence}",
            application_properties={},
            delivery_count=1,
            enqueued_at=at,
            sequence_number=self._sequence,
            reason=reason,
            description=description,
            dead_lettered_at=at,
        )
        self.dead[self._sequence] = dead
        return dead

    def dead_letters(self, limit: int = 100) -> list[DeadLetteredMessage]:
        return sorted(self.dead.values(), key=lambda d: (d.dead_lettered_at, d.sequence_number))[:limit]

    def remove_dead_letter(self, sequence_number: int) -> bool:
        if self.dead.pop(sequence_number, None) is None:
            return False
        self.removed.append(sequence_number)
        return True


@dataclass
class FakeEmailSender:
    """Records sends; ``failures`` are raised one per call before any success. Like ACS, it
    remembers operation ids, and ``lose_response`` simulates a send that ACS accepted but whose
    answer never came back."""

    failures: list[SendError] = field(default_factory=list)
    sent: list[OutgoingEmail] = field(default_factory=list)
    operations: set[str] = field(default_factory=set)
    lookups: list[str] = field(default_factory=list)
    lookup_failures: list[SendError] = field(default_factory=list)
    lose_response: SendError | None = None
    die_next: BaseException | None = None

    def send(self, email: OutgoingEmail) -> str:
        if self.die_next is not None:
            # The worker process dies mid-call: nothing after this line runs, no failure recorded.
            death, self.die_next = self.die_next, None
            raise death
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(email)
        self.operations.add(email.operation_id)
        if self.lose_response is not None:
            error, self.lose_response = self.lose_response, None
            raise error
        return email.operation_id

    def find_operation(self, operation_id: str) -> str | None:
        self.lookups.append(operation_id)
        if self.lookup_failures:
            raise self.lookup_failures.pop(0)
        return operation_id if operation_id in self.operations else None


@dataclass
class FakeSmsSender:
    """Per-recipient scripted outcomes: ``outcomes[number]`` is a list of errors to return for
    that number, one per call, before it succeeds. Repeated repeatability ids return the first
    message id, as ACS does."""

    outcomes: dict[str, list[SendError]] = field(default_factory=dict)
    failures: list[SendError] = field(default_factory=list)
    sent: list[OutgoingSms] = field(default_factory=list)
    by_repeatability_id: dict[str, str] = field(default_factory=dict)

    def send(self, sms: OutgoingSms) -> list[SmsRecipientResult]:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(copy.deepcopy(sms))
        results = []
        for recipient in sms.recipients:
            scripted = self.outcomes.get(recipient.to)
            if scripted:
                results.append(SmsRecipientResult(to=recipient.to, message_id=None, error=scripted.pop(0)))
                continue
            message_id = self.by_repeatability_id.setdefault(
                recipient.repeatability_request_id, f"Outgoing_{len(self.by_repeatability_id) + 1:04d}"
            )
            results.append(SmsRecipientResult(to=recipient.to, message_id=message_id))
        return results

    @property
    def unique_messages(self) -> int:
        return len(self.by_repeatability_id)


class FakeSuppressionList:
    def __init__(self) -> None:
        from shared.domain.model import Suppression

        self._key = Suppression.key
        self.entries: dict[tuple[Channel, str], "Suppression"] = {}

    def add(self, entry) -> bool:
        key = (entry.channel, self._key(entry.channel, entry.address))
        if key in self.entries:
            return False
        self.entries[key] = entry
        return True

    def add_many(self, entries) -> int:
        return sum(self.add(entry) for entry in entries)

    def remove(self, channel: Channel, address: str) -> bool:
        return self.entries.pop((channel, self._key(channel, address)), None) is not None

    def find(self, channel: Channel, addresses: Iterable[str]) -> dict:
        return {a: self.entries[(channel, self._key(channel, a))] for a in addresses if (channel, self._key(channel, a)) in self.entries}

    def list(self, *, channel: Channel | None = None, limit: int = 100) -> list:
        entries = [e for (c, _), e in self.entries.items() if channel is None or c is channel]
        return sorted(entries, key=lambda e: e.created_at, reverse=True)[:limit]


class FakeRateLimiter:
    """The RateLimiter port in memory: the same decision (``SendQuota.blocked_until``) over a list
    per key. ``calls`` records every request with its answer."""

    def __init__(self, quotas: dict | None = None) -> None:
        self.quotas = dict(quotas or {})
        self.taken: dict[str, list[tuple[datetime, int]]] = {}
        self.calls: list[tuple[str, int, datetime, datetime | None]] = []

    def acquire(self, key: str, units: int, now: datetime) -> datetime | None:
        quota = self.quotas.get(key)
        retry_at = None
        if quota is not None and quota.limits(now):
            log = self.taken.setdefault(key, [])
            retry_at = quota.blocked_until(log, units, now)
            if retry_at is None:
                log.append((now, units))
        self.calls.append((key, units, now, retry_at))
        return retry_at


class UnlimitedRateLimiter:
    """Grants everything; records ``(key, units, now)`` for each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, datetime]] = []

    def acquire(self, key: str, units: int, now: datetime) -> None:
        self.calls.append((key, units, now))
        return None


class FakeAttachmentStore:
    """The AttachmentStore port in memory: ``contents`` maps each reference to its bytes. Like the
    real stores it raises ``AttachmentNotFound`` for a reference it does not hold; ``failures``
    are raised one per call (any method) before it works again."""

    def __init__(self) -> None:
        self.contents: dict[str, bytes] = {}
        self.failures: list[Exception] = []
        self.deleted: list[str] = []

    def _fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    def put(self, notification_id: str, index: int, content: bytes) -> str:
        self._fail()
        ref = f"{notification_id}/{index}"
        self.contents[ref] = bytes(content)
        return ref

    def get(self, ref: str) -> bytes:
        from shared.domain.errors import AttachmentNotFound

        self._fail()
        if ref not in self.contents:
            raise AttachmentNotFound(ref)
        return self.contents[ref]

    def delete(self, notification_id: str) -> None:
        self._fail()
        self.deleted.append(notification_id)
        for ref in [r for r in self.contents if r.startswith(f"{notification_id}/")]:
            del self.contents[ref]
