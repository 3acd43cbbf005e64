"""Operator handlers: one view over every dead letter, safe replay, purge, and the audit trail.

Where dead letters live:

* **the ledger**: a notification whose status is ``dead_lettered`` (the dispatcher gave up on it,
  with a reason). In Azure this is most of them: the function records the dead letter and returns,
  so the host completes the queue message.
* **the queue's dead-letter sub-queue**: on the local stack the worker also moves the message
  there (so the same notification is in both); in Azure, Service Bus puts crash loops
  (``MaxDeliveryCountExceeded``) and unreadable messages there.

The view lists each notification once. A dead letter's id is the notification id when the ledger
has the notification dead-lettered (its queue copies, if any, are attached to it), and
``q-<sequence number>`` for a queue message whose notification the ledger does not hold as
dead-lettered (a crash loop, a malformed message). Ids are stable: neither changes while the dead
letter exists.

Every action that changes something is recorded in the ledger's audit trail (``AuditEntry``):
who, when, with which filter, and what happened to each dead letter.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Literal

from ..domain.commands import DeadLetterFilter, PurgeDeadLetters, ReplayDeadLetters
from ..domain.model import AuditEntry, Channel, Notification, NotificationStatus, Suppression
from . import handlers
from . import observability as obs
from .handlers import _modify as modify
from .ports import Clock, DeadLetteredMessage, DeadLetterQueue, Ledger, MessagePublisher, OutgoingMessage, SuppressionList

log = logging.getLogger(__name__)

QUEUE_ID_PREFIX = "q-"
#: How many queue dead letters one listing browses. Service Bus's sub-queue holds crash loops and
#: unreadable messages, which are few; a bigger backlog is listed a page at a time as it is purged.
QUEUE_SCAN_LIMIT = 1000
#: A long replay records its audit entry again after this many dead letters, so a replay that is
#: killed half-way leaves a trail of what it did.
AUDIT_EVERY = 25


@dataclass(frozen=True)
class DeadLetter:
    id: str
    notification_id: str | None
    channel: Channel | None
    reason: str
    description: str
    dead_lettered_at: datetime
    source: Literal["queue", "ledger"]
    replay_count: int
    notification: Notification | None = None
    #: The copies of it in the queue's dead-letter sub-queue.
    queue_messages: tuple[DeadLetteredMessage, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The listing's JSON shape (the dashboard depends on these names)."""
        return {
            "id": self.id,
            "notificationId": self.notification_id,
            "channel": self.channel.value if self.channel else None,
            "reason": self.reason,
            "description": self.description,
            "deadLetteredAt": self.dead_lettered_at.isoformat(),
            "source": self.source,
            "replayCount": self.replay_count,
            "status": self.notification.status.value if self.notification else None,
            "queueSequenceNumbers": [m.sequence_number for m in self.queue_messages],
        }


# ------------------------------------------------------------------------------ the view


def _from_ledger(n: Notification, copies: list[DeadLetteredMessage]) -> DeadLetter:
    assert n.dead_letter is not None
    return DeadLetter(
        id=n.id,
        notification_id=n.id,
        channel=n.channel,
        reason=n.dead_letter.reason,
        description=n.dead_letter.description,
        dead_lettered_at=n.dead_letter.at,
        source="ledger",
        replay_count=n.replay_count,
        notification=n,
        queue_messages=tuple(copies),
    )


def _from_queue(message: DeadLetteredMessage, n: Notification | None) -> DeadLetter:
    replay_count = n.replay_count if n else message.body.get("replayCount", 0)
    return DeadLetter(
        id=f"{QUEUE_ID_PREFIX}{message.sequence_number}",
        notification_id=_notification_id(message),
        channel=n.channel if n else None,
        reason=message.reason,
        description=message.description,
        dead_lettered_at=message.dead_lettered_at,
        source="queue",
        replay_count=replay_count if isinstance(replay_count, int) else 0,
        notification=n,
        queue_messages=(message,),
    )


def _notification_id(message: DeadLetteredMessage) -> str | None:
    value = message.body.get("notificationId")
    return value if isinstance(value, str) and value else None


def _is_dead_lettered(n: Notification | None) -> bool:
    return n is not None and n.status is NotificationStatus.DEAD_LETTERED


def _matches(d: DeadLetter, f: DeadLetterFilter) -> bool:
    return (
        (f.channel is None or d.channel is f.channel)
        and (f.reason is None or d.reason == f.reason)
        and (f.since is None or d.dead_lettered_at >= f.since)
    )


def list_dead_letters(f: DeadLetterFilter, *, ledger: Ledger, dead_letters: DeadLetterQueue) -> list[DeadLetter]:
    """Dead letters from both places, newest first, each notification once."""
    queued = dead_letters.dead_letters(limit=QUEUE_SCAN_LIMIT)
    copies: dict[str, list[DeadLetteredMessage]] = {}
    for message in queued:
        nid = _notification_id(message)
        if nid:
            copies.setdefault(nid, []).append(message)

    listed = [
        _from_ledger(n, copies.get(n.id, []))
        for n in ledger.dead_lettered(channel=f.channel, reason=f.reason, since=f.since, limit=f.limit)
    ]
    known: dict[str, Notification | None] = {d.id: d.notification for d in listed}
    for message in queued:
        nid = _notification_id(message)
        if nid is not None and nid not in known:
            known[nid] = ledger.get(nid)
        n = known.get(nid) if nid else None
        if _is_dead_lettered(n):
            # The ledger's dead letter stands for it (listed above, or outside this filter/page).
            continue
        entry = _from_queue(message, n)
        if _matches(entry, f):
            listed.append(entry)
    listed.sort(key=lambda d: d.dead_lettered_at, reverse=True)
    return listed[: f.limit]


def get_dead_letter(dead_letter_id: str, *, ledger: Ledger, dead_letters: DeadLetterQueue) -> DeadLetter | None:
    """One dead letter by its id; a queue id whose notification is dead-lettered in the ledger
    finds the ledger's dead letter (the same one, seen from the ledger)."""
    queued = dead_letters.dead_letters(limit=QUEUE_SCAN_LIMIT)
    if dead_letter_id.startswith(QUEUE_ID_PREFIX):
        sequence = dead_letter_id[len(QUEUE_ID_PREFIX):]
        message = next((m for m in queued if str(m.sequence_number) == sequence), None)
        if message is None:
            return None
        nid = _notification_id(message)
        n = ledger.get(nid) if nid else None
        if not _is_dead_lettered(n):
            return _from_queue(message, n)
        dead_letter_id = n.id
    n = ledger.get(dead_letter_id)
    if not _is_dead_lettered(n):
        return None
    return _from_ledger(n, [m for m in queued if _notification_id(m) == n.id])


# ------------------------------------------------------------------------------ actions


@dataclass
class OperatorResult:
    """What an operator action did, dead letter by dead letter, and its audit entry's id."""

    audit_id: str
    action: str
    dry_run: bool
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for outcome in self.outcomes:
            found[outcome["outcome"]] = found.get(outcome["outcome"], 0) + 1
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "auditId": self.audit_id,
            "action": self.action,
            "dryRun": self.dry_run,
            "counts": self.counts(),
            "outcomes": self.outcomes,
        }


class _Audit:
    """The audit entry of one action, recorded at the start, every ``AUDIT_EVERY`` outcomes and at
    the end, so an interrupted action still says what it did."""

    def __init__(self, ledger: Ledger, clock: Clock, actor: str, action: str, filter_: dict[str, Any], dry_run: bool):
        self.ledger = ledger
        self.entry = AuditEntry(
            id=str(uuid.uuid4()), at=clock.now(), actor=actor, action=action, filter=filter_, dry_run=dry_run,
            finished=False,
        )
        self.ledger.record_audit(self.entry)

    def add(self, outcome: dict[str, Any]) -> None:
        self.entry.outcomes.append(outcome)
        if len(self.entry.outcomes) % AUDIT_EVERY == 0:
            self.ledger.record_audit(self.entry)

    def finish(self) -> None:
        self.entry.finished = True
        self.ledger.record_audit(self.entry)


def _targets(
    ids: tuple[str, ...], f: DeadLetterFilter, *, ledger: Ledger, dead_letters: DeadLetterQueue
) -> list[tuple[str, DeadLetter | None]]:
    if not ids:
        return [(d.id, d) for d in list_dead_letters(f, ledger=ledger, dead_letters=dead_letters)]
    return [(i, get_dead_letter(i, ledger=ledger, dead_letters=dead_letters)) for i in dict.fromkeys(ids)]


def _selection(ids: tuple[str, ...], f: DeadLetterFilter) -> dict[str, Any]:
    return {"ids": list(ids)} if ids else f.describe()


def _outcome(requested: str, d: DeadLetter | None, outcome: str, reason: str | None = None, **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"id": d.id if d else requested, "notificationId": d.notification_id if d else None, "outcome": outcome}
    if reason:
        found["reason"] = reason
    return found | extra


def replay_message(n: Notification) -> OutgoingMessage:
    """The queue message that starts a replayed notification's fresh chain.

    Its attempt is the next one (``attempts`` only grows), which ``dispatch_verdict`` accepts, and
    its id is new, with the replay counter in it: Service Bus duplicate detection would drop a
    message that reused an earlier id. Any second copy of it (a replay run again after a crash)
    carries the same attempt and is absorbed by the dispatcher's lease and fencing.
    """
    attempt = n.attempts + 1
    fields = {"notificationId": n.id, "attempt": attempt, "replayCount": n.replay_count}
    return OutgoingMessage(
        body=dict(fields),
        message_id=f"{n.id}:{attempt}:replay-{n.replay_count}",
        # The replayed sends join the trace the notification was accepted in.
        application_properties=dict(fields) | obs.trace_properties(n.trace_context),
    )


def replay_dead_letters(
    cmd: ReplayDeadLetters,
    *,
    ledger: Ledger,
    dead_letters: DeadLetterQueue,
    publisher: MessagePublisher,
    suppressions: SuppressionList,
    clock: Clock,
    on_targets: Callable[[int], None] | None = None,
    before_each: Callable[[], None] | None = None,
    after_each: Callable[[dict[str, Any]], None] | None = None,
) -> OperatorResult:
    """Send dead letters again, never twice: a notification with nothing left to send (sent,
    delivered, or otherwise final) is skipped, and so is a recipient suppressed or opted out since.

    ``on_targets`` learns how many dead letters were selected; ``before_each`` paces the replay
    (the CLI's ``--rate``); ``after_each`` sees each outcome.
    """
    audit = _Audit(ledger, clock, cmd.actor, "dead-letters.replay", _selection(cmd.ids, cmd.filter), cmd.dry_run)
    result = OperatorResult(audit.entry.id, "dead-letters.replay", cmd.dry_run)
    targets = _targets(cmd.ids, cmd.filter, ledger=ledger, dead_letters=dead_letters)
    if on_targets is not None:
        on_targets(len(targets))
    for requested, d in targets:
        if before_each is not None:
            before_each()
        outcome = _replay_one(
            requested, d, cmd, audit.entry.id,
            ledger=ledger, dead_letters=dead_letters, publisher=publisher, suppressions=suppressions, clock=clock,
        )
        result.outcomes.append(outcome)
        audit.add(outcome)
        if after_each is not None:
            after_each(outcome)
    audit.finish()
    log.info("replay by %s (audit %s): %s", cmd.actor, audit.entry.id, result.counts())
    return result


def _replay_one(
    requested: str,
    d: DeadLetter | None,
    cmd: ReplayDeadLetters,
    audit_id: str,
    *,
    ledger: Ledger,
    dead_letters: DeadLetterQueue,
    publisher: MessagePublisher,
    suppressions: SuppressionList,
    clock: Clock,
) -> dict[str, Any]:
    if d is None:
        return _outcome(requested, d, "skipped", "NotFound")
    if d.notification_id is None:
        return _outcome(requested, d, "skipped", "NotADispatchMessage")
    current = ledger.get(d.notification_id)
    if current is None:
        return _outcome(requested, d, "skipped", "NotificationNotFound")
    if not current.pending_recipients():
        reason = "AlreadySent" if current.reached_acs else "AlreadyFinal"
        return _outcome(requested, d, "skipped", reason, status=current.status.value)
    if not _is_dead_lettered(current):
        # A leftover queue copy of a notification the ledger still sends (queued, retrying, or
        # replayed since): replaying it would start a second chain beside the live one.
        return _live_copy(requested, d, current, dead_letters=dead_letters, publisher=publisher, dry_run=cmd.dry_run)
    listed = suppressions.find(current.channel, [r.address for r in current.pending_recipients()])
    suppressed = {address: f"OnSuppressionList: {entry.reason}" for address, entry in listed.items()}
    if len(suppressed) == len(current.pending_recipients()):
        reasons = sorted({_suppression_kind(e) for e in listed.values()})
        if cmd.dry_run:
            return _outcome(requested, d, "skipped", "RecipientsSuppressed", suppressions=reasons)
    elif cmd.dry_run:
        return _outcome(requested, d, "wouldReplay", suppressedRecipients=len(suppressed))

    # The order, and what a crash between two steps leaves behind:
    #   1. the ledger records the replay: no longer dead-lettered, not queued, a fresh chain;
    #   2. the queue message is enqueued (durable when ``send`` returns);
    #   3. the ledger marks it queued;
    #   4. its copies leave the dead-letter sub-queue.
    # Ledger first, because the other order races the dispatcher: a message that arrives before
    # the ledger forgets the dead letter is dropped as "done", and the notification is stranded.
    # After 1 alone, the notification is unqueued and the reconciliation queues its next attempt;
    # after 2, a second message (that one, or a replay run again) carries the same attempt, and
    # the dispatcher's lease and fencing let only one of them send. So a crash anywhere loses
    # nothing and sends nothing twice; at worst a queue copy stays behind, which a later replay
    # skips once the notification is sent, or turns into one more absorbed message.
    def record(n: Notification) -> list | str:
        pending = {r.address for r in n.pending_recipients()}
        if not pending:
            return "AlreadySent" if n.reached_acs else "AlreadyFinal"  # finished by someone else since it was read
        if n.replay_count != d.replay_count or not _is_dead_lettered(n):
            return "AlreadyReplayed"  # another replay got there first: one replay, one chain
        still_listed = {a: r for a, r in suppressed.items() if a in pending}
        return n.record_replay(clock.now(), cmd.actor, n.replay_count + 1, suppressed=still_listed, audit_id=audit_id)

    n, to_send = modify(ledger, d.notification_id, record)
    if isinstance(to_send, str):
        # Someone else finished or replayed it: their chain owns it, and its copies stay for them.
        return _outcome(requested, d, "skipped", to_send, status=n.status.value)
    if to_send:
        publisher.send(replay_message(n))
        modify(ledger, n.id, lambda fresh: fresh.queued_at or fresh.mark_queued(clock.now()))
    for message in d.queue_messages:
        dead_letters.remove_dead_letter(message.sequence_number)
    if not to_send:
        reasons = sorted({_suppression_kind(e) for e in listed.values()})
        return _outcome(requested, d, "skipped", "RecipientsSuppressed", suppressions=reasons)
    return _outcome(requested, d, "replayed", replayCount=n.replay_count, suppressedRecipients=len(suppressed))


def _live_copy(
    requested: str,
    d: DeadLetter,
    n: Notification,
    *,
    dead_letters: DeadLetterQueue,
    publisher: MessagePublisher,
    dry_run: bool,
) -> dict[str, Any]:
    """A queue dead letter whose notification the ledger holds live (not dead-lettered, still to
    send). The ledger is left alone: no replay is recorded. But the copy may be all that drove
    the notification (a message that crash-looped into the dead-letter queue leaves the ledger
    "queued" with nothing queued), so the next attempt's message is enqueued before the copy is
    removed. Its id is new (the crash-looped copy's id may still be inside Service Bus's duplicate
    detection window); a second chain it might start beside a live one is absorbed by the
    dispatcher's lease and fencing (``dispatch_verdict``), as any duplicate message is."""
    if not dry_run:
        publisher.send(
            handlers.dispatch_message(n.id, n.attempts + 1, waiting_for="requeue", traceparent=n.trace_context)
        )
        for message in d.queue_messages:
            dead_letters.remove_dead_letter(message.sequence_number)
    return _outcome(
        requested, d, "requeued", "NotDeadLettered", status=n.status.value,
        queueCopiesRemoved=0 if dry_run else len(d.queue_messages),
    )


def _suppression_kind(entry: Suppression) -> str:
    """The reason's first word (``OptedOut``, ``Bounced``, ``Operator``): never the address."""
    return entry.reason.split(":", 1)[0].strip() or "Suppressed"


def purge_dead_letters(
    cmd: PurgeDeadLetters, *, ledger: Ledger, dead_letters: DeadLetterQueue, clock: Clock
) -> OperatorResult:
    """Give up on dead letters: a notification that still waits for sending ends ``failed``
    (reason ``DeadLetterPurged``), so it has a terminal state, and its queue copies are removed."""
    audit = _Audit(ledger, clock, cmd.actor, "dead-letters.purge", _selection(cmd.ids, cmd.filter), cmd.dry_run)
    result = OperatorResult(audit.entry.id, "dead-letters.purge", cmd.dry_run)
    for requested, d in _targets(cmd.ids, cmd.filter, ledger=ledger, dead_letters=dead_letters):
        if d is None:
            outcome = _outcome(requested, d, "skipped", "NotFound")
        elif cmd.dry_run:
            outcome = _outcome(requested, d, "wouldPurge")
        else:
            current = ledger.get(d.notification_id) if d.notification_id is not None else None
            purged = False
            if _is_dead_lettered(current):

                def purge(n: Notification) -> bool:
                    # Only while still dead-lettered: one replayed since is being sent again.
                    if not _is_dead_lettered(n):
                        return False
                    n.record_purged(clock.now(), cmd.actor, audit_id=audit.entry.id)
                    return True

                _, purged = modify(ledger, d.notification_id, purge)
            for message in d.queue_messages:
                dead_letters.remove_dead_letter(message.sequence_number)
            if current is not None and current.pending_recipients() and not purged:
                # A leftover queue copy of a notification that is still being sent: only the copy goes.
                outcome = _outcome(requested, d, "purged", "QueueCopyOnly", status=current.status.value)
            else:
                outcome = _outcome(requested, d, "purged")
        result.outcomes.append(outcome)
        audit.add(outcome)
    audit.finish()
    log.info("purge by %s (audit %s): %s", cmd.actor, audit.entry.id, result.counts())
    return result


# ------------------------------------------------------------------------------ suppressions


def add_suppression(
    channel: Channel, address: str, reason: str, *, actor: str, suppressions: SuppressionList, ledger: Ledger, clock: Clock
) -> bool:
    """Put a recipient on the list (audited); False when it was already there."""
    audit = _Audit(ledger, clock, actor, "suppressions.add", {"channel": channel.value}, False)
    added = suppressions.add(Suppression(channel=channel, address=address, reason=f"Operator: {reason}", created_at=clock.now()))
    audit.add({"id": f"{channel.value}/{address}", "outcome": "added" if added else "skipped",
               **({} if added else {"reason": "AlreadyListed"}), "suppressionReason": reason})
    audit.finish()
    return added


def remove_suppression(
    channel: Channel, address: str, *, actor: str, suppressions: SuppressionList, ledger: Ledger, clock: Clock
) -> bool:
    """Take a recipient off the list (audited); False when it was not on it."""
    audit = _Audit(ledger, clock, actor, "suppressions.remove", {"channel": channel.value}, False)
    removed = suppressions.remove(channel, address)
    audit.add({"id": f"{channel.value}/{address}", "outcome": "removed" if removed else "skipped",
               **({} if removed else {"reason": "NotListed"})})
    audit.finish()
    return removed
