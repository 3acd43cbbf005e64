"""Service-layer handlers. Each takes a command and its ports as keyword arguments."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, ContextManager, Iterator, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from ..domain.commands import (
    ApplyDeliveryReports,
    ApplyInboundSms,
    DispatchNotification,
    FailureRateThresholds,
    NewAttachment,
    Reconcile,
    SubmitNotification,
)
from ..domain.errors import (
    AttachmentMissing,
    AttachmentNotFound,
    AttachmentStoreUnavailable,
    ConcurrencyConflict,
    IdempotencyConflict,
    NotificationNotFound,
    NotifyError,
    PermanentSendError,
    SendError,
    SendTimeout,
    TransientSendError,
)
from ..domain.privacy import recipient_domain, redact_text
from ..domain.model import (
    OPT_OUT_REASON,
    Channel,
    e164,
    DeliveryReport,
    Notification,
    new_notification_id,
    NotificationStatus,
    Recipient,
    RecipientStatus,
    Suppression,
)
from .ports import (
    AttachmentStore,
    Clock,
    EmailAddress,
    EmailAttachment,
    EmailSender,
    Ledger,
    MessagePublisher,
    OutgoingEmail,
    OutgoingMessage,
    OutgoingSms,
    SmsRecipientRequest,
    RateLimiter,
    SmsSender,
    SuppressionList,
)
from . import observability as obs
from .retry import GiveUp, RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")



def dispatch_message(
    notification_id: str,
    attempt: int,
    *,
    scheduled_at: datetime | None = None,
    waiting_for: str | None = None,
    traceparent: str | None = None,
) -> OutgoingMessage:
    """The queue message that asks the dispatcher to make ``attempt`` on a notification.

    A plain attempt message's id names the attempt, so Service Bus duplicate detection drops a
    second copy of it. A message that only waits (for a lease to run out, for quota) carries the
    same attempt but an id of its own: two waits must never collide, or the second is dropped and
    the notification stranded.

    The message carries W3C trace context in its application properties (the current span's, or
    ``traceparent``), so the dispatcher's spans, and every retry's, join the request's trace.
    """
    message_id = f"{notification_id}:{attempt}"
    if waiting_for:
        message_id += f":{waiting_for}:{uuid.uuid4().hex[:12]}"
    return OutgoingMessage(
        body={"notificationId": notification_id, "attempt": attempt},
        message_id=message_id,
        application_properties={"notificationId": notification_id, "attempt": attempt, **obs.trace_properties(traceparent)},
        scheduled_at=scheduled_at,
    )


def _modify(ledger: Ledger, notification_id: str, change: Callable[[Notification], T], tries: int = 20) -> tuple[Notification, T]:
    """Read, change and save one notification, starting again when another writer got there first."""
    for _ in range(tries):
        notification = ledger.get(notification_id)
        if notification is None:
            raise NotificationNotFound(notification_id)
        result = change(notification)
        try:
            ledger.save(notification)
        except ConcurrencyConflict:
            continue
        return notification, result
    raise ConcurrencyConflict(notification_id)


# ------------------------------------------------------------------------------ intake


def submit_notification(
    cmd: SubmitNotification, *, ledger: Ledger, publisher: MessagePublisher, attachments: AttachmentStore, clock: Clock
) -> tuple[Notification, bool]:
    """Record and queue a notification. Returns it and whether it is new (False: an earlier
    request with the same idempotency key already created it)."""
    with submitting(cmd) as span:
        stored, created = _record(cmd, ledger=ledger, attachments=attachments, clock=clock)
        with obs.about(stored.id):
            if stored.queued_at is None:
                # Also covers a first request that crashed between the ledger write and the enqueue.
                # The next attempt: 1, unless a replay that stopped before its enqueue left it unqueued.
                publisher.send(dispatch_message(stored.id, stored.attempts + 1))
                stored = _mark_queued(ledger, stored, clock.now())
        submitted(span, stored, created)
    return stored, created


def submitting(cmd: SubmitNotification) -> ContextManager[Span]:
    """The span one notification request is taken in; ``submitted`` closes the account."""
    attributes = {"notify.channel": cmd.channel.value, **obs.recipient_attributes(r.address for r in cmd.recipients)}
    return obs.span("notify.submit", attributes=attributes)


def submitted(span: Span, stored: Notification, created: bool) -> None:
    """What a taken request leaves behind: its span's attributes, and the accepted metric and log
    line when it made a new notification."""
    span.set_attribute("notify.notification.id", stored.id)
    span.set_attribute("notify.idempotent_replay", not created)
    if created:
        with obs.about(stored.id):
            _accepted(stored)


def _mark_queued(ledger: Ledger, n: Notification, at: datetime) -> Notification:
    """The "queued" mark: saved on the copy in hand, which is usually still the latest (one write,
    no read); re-read and applied like any change when a dispatcher got there first."""
    if ledger.mark_queued([n], at):
        n, _ = _modify(ledger, n.id, lambda latest: latest.queued_at or latest.mark_queued(at))
    return n


def _accepted(n: Notification) -> None:
    obs.accepted.add(1, {"channel": n.channel.value})
    log.info(
        "notification %s accepted (%s, %d recipients)", n.id, n.channel, len(n.recipients),
        extra={"event": "notify.accepted", "channel": n.channel.value},
    )


def _accepted_together(notifications: list[Notification]) -> None:
    """``_accepted`` for a batch's new notifications: the same metric, and one log line naming every
    id (operators find a notification by its id in the message or in ``notification_ids``) rather
    than a line each, which cost a batch as much as writing its ledger entries."""
    ids = [n.id for n in notifications]
    channels = Counter(n.channel.value for n in notifications)
    for channel, count in channels.items():
        obs.accepted.add(count, {"channel": channel})
    trace.get_current_span().set_attribute("notify.notification.ids", ids)
    log.info(
        "notifications accepted in one batch (%s): %s",
        ", ".join(f"{count} {channel}" for channel, count in sorted(channels.items())), " ".join(ids),
        extra={"event": "notify.batch_accepted", "notification_ids": ids, "channels": dict(channels)},
    )


def prepare_notification(cmd: SubmitNotification, *, attachments: AttachmentStore, clock: Clock) -> Notification:
    """A new notification for a command, its attachments' bytes already stored, carrying the
    current trace context (so made in the request's own context, even when recorded later with
    others by ``record_notifications``)."""
    notification_id = new_notification_id()
    content = dict(cmd.content)
    if cmd.attachments:
        # The bytes are stored before the ledger entry that points at them: a crash in between
        # leaves an orphan in the store, which is harmless, never an entry that cannot be sent.
        content["attachments"] = [
            _store_attachment(attachments, notification_id, index, attachment)
            for index, attachment in enumerate(cmd.attachments)
        ]
    return Notification.accept(
        channel=cmd.channel,
        sender=cmd.sender,
        recipients=cmd.recipients,
        content=content,
        metadata=cmd.metadata,
        at=clock.now(),
        idempotency_key=cmd.idempotency_key,
        request_hash=cmd.request_hash,
        owner=cmd.owner,
        correlation_id=cmd.correlation_id,
        caller_properties=cmd.caller_properties,
        notification_id=notification_id,
        trace_context=obs.current_traceparent(),
    )


def _settle(cmd: SubmitNotification, candidate: Notification, stored: Notification, attachments: AttachmentStore) -> bool:
    """Whether the ledger took the candidate (True) or already held its idempotency key (False);
    ``IdempotencyConflict`` when the holder was made from another body."""
    created = stored.id == candidate.id
    if not created and cmd.attachments:
        # The notification that holds the key has its own copies; these were never referenced.
        _forget_attachments(attachments, candidate.id)
    if not created and stored.request_hash != cmd.request_hash:
        raise IdempotencyConflict(stored.id)
    return created


def _record(cmd: SubmitNotification, *, ledger: Ledger, attachments: AttachmentStore, clock: Clock) -> tuple[Notification, bool]:
    """The ledger entry for a command: a new one, or the one that already holds its idempotency
    key (``IdempotencyConflict`` when that one was made from another body)."""
    candidate = prepare_notification(cmd, attachments=attachments, clock=clock)
    stored = ledger.add(candidate)
    return stored, _settle(cmd, candidate, stored, attachments)


@obs.in_span("notify.submit_batch", lambda cmds: {"notify.batch.size": len(cmds)})
def submit_notifications(
    cmds: list[SubmitNotification],
    *,
    ledger: Ledger,
    publisher: MessagePublisher,
    attachments: AttachmentStore,
    clock: Clock,
) -> list[Submitted]:
    """``submit_notification`` for each command, in order, with the same guarantees; see
    ``record_notifications``, which writes them. One outcome per command: the notification and
    whether it is new, or the error that refused this command alone."""
    prepared: list[tuple[SubmitNotification, Notification | AttachmentStoreUnavailable]] = []
    for cmd in cmds:
        try:
            prepared.append((cmd, prepare_notification(cmd, attachments=attachments, clock=clock)))
        except AttachmentStoreUnavailable as exc:
            prepared.append((cmd, exc))
    outcomes = record_notifications(prepared, ledger=ledger, publisher=publisher, attachments=attachments, clock=clock)
    created = [outcome[0] for outcome in outcomes if not isinstance(outcome, NotifyError) and outcome[1]]
    if created:
        _accepted_together(created)
    return outcomes


#: One command's outcome: the notification and whether it is new, or the error that refused it.
Submitted = tuple[Notification, bool] | IdempotencyConflict | AttachmentStoreUnavailable


def record_notifications(
    prepared: list[tuple[SubmitNotification, Notification | AttachmentStoreUnavailable]],
    *,
    ledger: Ledger,
    publisher: MessagePublisher,
    attachments: AttachmentStore,
    clock: Clock,
) -> list[Submitted]:
    """Record and queue prepared notifications (``prepare_notification``; or the error that
    preparing one raised), with ``submit_notification``'s guarantees: ledger entries, then queue
    messages, then the "queued" marks; idempotency keys as for one request, a key used twice in
    the same list included. One outcome per command, in order; nothing is queued for a refused
    command. Each queue message carries its own notification's trace context, so commands from
    different requests can be recorded together.

    One ledger write for all the entries (``add_many``), one for all the queue messages
    (``send_many``) and one for the marks (``mark_queued``). If the ledger or the queue fails, the
    error is raised; what was recorded but not queued is re-queued by the reconciliation.
    """
    added = iter(ledger.add_many([c for _, c in prepared if isinstance(c, Notification)]))

    outcomes: list[Submitted] = []
    latest: dict[str, Notification] = {}  # by id: what the outcomes return
    fresh: list[Notification] = []
    for cmd, candidate in prepared:
        if isinstance(candidate, AttachmentStoreUnavailable):
            outcomes.append(candidate)
            continue
        stored = next(added)
        try:
            created = _settle(cmd, candidate, stored, attachments)
        except IdempotencyConflict as exc:
            outcomes.append(exc)
            continue
        if stored.id not in latest:  # the same key twice in this list: the first one queues it
            latest[stored.id] = stored
            if stored.queued_at is None:
                fresh.append(stored)
        outcomes.append((stored, created))

    if fresh:
        publisher.send_many(
            [dispatch_message(n.id, n.attempts + 1, traceparent=n.trace_context) for n in fresh]
        )
        for lost in ledger.mark_queued(fresh, clock.now()):
            # Another writer (a dispatcher that already took the message) got there first.
            latest[lost.id], _ = _modify(ledger, lost.id, lambda n: n.queued_at or n.mark_queued(clock.now()))
    return [o if isinstance(o, NotifyError) else (latest[o[0].id], o[1]) for o in outcomes]


def _store_attachment(store: AttachmentStore, notification_id: str, index: int, attachment: NewAttachment) -> dict:
    """Store one attachment's bytes; what the notification keeps of it."""
    return {
        "name": attachment.name,
        "contentType": attachment.content_type,
        "size": len(attachment.content),
        "sha256": hashlib.sha256(attachment.content).hexdigest(),
        "ref": store.put(notification_id, index, attachment.content),
    }


def _forget_attachments(store: AttachmentStore, notification_id: str) -> None:
    """Best effort: what is left behind is an orphan in the store, never a wrong send."""
    try:
        store.delete(notification_id)
    except NotifyError as exc:
        log.warning("notification %s: attachments not deleted (%s)", notification_id, type(exc).__name__)


# ------------------------------------------------------------------------------ dispatch


@dataclass(frozen=True)
class Completed:
    detail: str


@dataclass(frozen=True)
class Rescheduled:
    delay_seconds: float
    detail: str


@dataclass(frozen=True)
class DeadLettered:
    reason: str
    description: str


DispatchOutcome = Completed | Rescheduled | DeadLettered


def _dispatch_span(handler: Callable[..., DispatchOutcome]) -> Callable[..., DispatchOutcome]:
    """Runs ``dispatch`` in its span, with its outcome on it, and its log lines about its notification."""

    @functools.wraps(handler)
    def traced(cmd: DispatchNotification, **ports) -> DispatchOutcome:
        attributes = {"notify.notification.id": cmd.notification_id, "notify.attempt": cmd.attempt}
        with obs.about(cmd.notification_id), obs.span("notify.dispatch", attributes=attributes) as span:
            outcome = handler(cmd, **ports)
            span.set_attribute("notify.dispatch.outcome", type(outcome).__name__)
            return outcome

    return traced


def _dead_lettered(nid: str, channel: str, reason: str, description: str) -> DeadLettered:
    obs.dead_lettered.add(1, {"channel": channel, "reason": reason})
    log.warning(
        "notification %s dead-lettered: %s", nid, reason,
        extra={"event": "notify.dead_lettered", "channel": channel, "reason": reason, "description": redact_text(description)},
    )
    return DeadLettered(reason, description)


@_dispatch_span
def dispatch(
    cmd: DispatchNotification,
    *,
    ledger: Ledger,
    email_sender: EmailSender,
    sms_sender: SmsSender,
    publisher: MessagePublisher,
    attachments: AttachmentStore,
    suppressions: SuppressionList,
    rate_limiter: RateLimiter,
    policy: RetryPolicy,
    clock: Clock,
    lease: timedelta,
) -> DispatchOutcome:
    """Make one send attempt. Safe to run for any message, any number of times, from any number of
    workers: the ledger decides whether this message may send at all (``dispatch_verdict``)."""
    nid = cmd.notification_id
    current = ledger.get(nid)
    if current is None:
        return _dead_lettered(nid, "unknown", "NotificationNotFound", f"No notification {nid} in the ledger.")
    verdict = current.dispatch_verdict(cmd.attempt, clock.now())
    if verdict in ("done", "stale"):
        log.info("notification %s: message for attempt %d ignored (%s)", nid, cmd.attempt, verdict)
        return Completed(verdict)
    if verdict == "wait":
        return _wait_for_lease(current, cmd.attempt, publisher, clock)

    listed = suppressions.find(current.channel, [r.address for r in current.pending_recipients()])
    deferred = _over_quota(current, listed, cmd.attempt, rate_limiter, publisher, policy, clock)
    if deferred is not None:
        return deferred

    def claim(n: Notification) -> str:
        now = clock.now()
        found = n.dispatch_verdict(cmd.attempt, now)
        if found != "send":
            return found
        for address, entry in listed.items():
            n.record_recipient_suppressed(now, address, f"OnSuppressionList: {entry.reason}")
        if not n.needs_sending:
            return "done"
        n.start_attempt(now, lease_until=now + lease, by=cmd.attempt)
        return "send"

    notification, verdict = _modify(ledger, nid, claim)
    if listed and verdict in ("send", "done"):
        obs.count_outcome(notification.channel.value, "suppressed", len(listed), source="suppression_list")
    if verdict == "wait":
        return _wait_for_lease(notification, cmd.attempt, publisher, clock)
    if verdict != "send":
        return Completed(verdict)

    attempt = notification.attempts
    try:
        if notification.channel is Channel.EMAIL:
            _send_email(notification, email_sender, attachments, ledger, clock)
        else:
            _send_sms(notification, sms_sender, ledger, clock)
        error = None
    except SendError as exc:
        error = exc
    if error is None:
        _apply_parked_reports(notification.id, ledger, suppressions, clock)
        return Completed(f"sent on attempt {attempt}")

    # Still unknown if this error leaves it open, or if an earlier unknown was not looked up.
    unknown = error.ambiguous if isinstance(error, TransientSendError) else False
    unknown = unknown or notification.check_before_send
    # Counted from the start of the chain: a replayed notification gets the whole budget again.
    decision = policy.decide(notification.attempts_in_chain, error)
    if isinstance(decision, GiveUp):
        _modify(ledger, nid, lambda n: n.mark_dead_lettered(clock.now(), decision.reason, decision.description))
        return _dead_lettered(nid, notification.channel.value, decision.reason, decision.description)

    # Enqueue the next attempt before recording this failure: a crash in between leaves a retry
    # that finds the lease expired, never a notification that nobody will send.
    retry_at = clock.now() + timedelta(seconds=decision.delay_seconds)
    publisher.send(dispatch_message(nid, attempt + 1, scheduled_at=retry_at))
    _modify(
        ledger,
        nid,
        lambda n: n.record_attempt_failed(clock.now(), error, retry_in=decision.delay_seconds, outcome_unknown=unknown),
    )
    log.info("notification %s attempt %d failed (%s), retry in %.1fs", nid, attempt, error.reason, decision.delay_seconds)
    return Rescheduled(decision.delay_seconds, error.describe())


def _wait_for_lease(n: Notification, attempt: int, publisher: MessagePublisher, clock: Clock) -> Rescheduled:
    """Another dispatcher holds the notification, or died holding it: look again when its lease
    runs out rather than drop this message, which may be the only one left."""
    assert n.sending_until is not None
    wake = n.sending_until + timedelta(seconds=1)
    publisher.send(dispatch_message(n.id, attempt, scheduled_at=wake, waiting_for="lease"))
    return Rescheduled((wake - clock.now()).total_seconds(), "another dispatcher holds it")


def _over_quota(
    n: Notification,
    listed: dict,
    attempt: int,
    rate_limiter: RateLimiter,
    publisher: MessagePublisher,
    policy: RetryPolicy,
    clock: Clock,
) -> Rescheduled | None:
    """Take quota for the send about to happen, or defer the notification until there is some.

    Quota is taken before the ledger claim: a deferral is then no attempt and no ledger write, and
    the rare loser of a claim race wastes one unit rather than a send.
    """
    now = clock.now()
    recipients = [r for r in n.pending_recipients() if r.address not in listed]
    units = len(recipients) if n.channel is Channel.SMS else min(len(recipients), 1)
    if units == 0:
        return None
    retry_at = rate_limiter.acquire(n.channel.value, units, now)
    if retry_at is None:
        return None
    # Spread a deferred burst over a second or two rather than waking it all at once.
    wake = retry_at + timedelta(seconds=policy.uniform(0.0, 2.0))
    publisher.send(dispatch_message(n.id, attempt, scheduled_at=wake, waiting_for="quota"))
    log.info("notification %s deferred by the %s quota until %s", n.id, n.channel.value, wake.isoformat())
    return Rescheduled((wake - now).total_seconds(), f"{n.channel.value} quota reached")


def _pending_addresses(n: Notification) -> tuple[list[EmailAddress], list[EmailAddress], list[EmailAddress]]:
    kinds: dict[str, list[EmailAddress]] = {"to": [], "cc": [], "bcc": []}
    for r in n.pending_recipients():
        kinds[r.kind].append(EmailAddress(r.address, r.display_name))
    to, cc, bcc = kinds["to"], kinds["cc"], kinds["bcc"]
    # ACS needs at least one "to". When every "to" is suppressed, copies still go out: cc
    # recipients see each other anyway, but blind copies must stay blind, so they go to the
    # sender as "to", as mail clients do for undisclosed recipients.
    if not to and cc:
        to, cc = cc, []
    if not to:
        to = [EmailAddress(n.sender)]
    return to, cc, bcc


def _load_attachments(notification: Notification, store: AttachmentStore) -> list[EmailAttachment]:
    loaded = []
    for index, meta in enumerate(notification.content.get("attachments", [])):
        try:
            content = store.get(meta["ref"])
        except AttachmentNotFound:
            raise AttachmentMissing(f"attachment {index} is no longer in the attachment store") from None
        if hashlib.sha256(content).hexdigest() != meta["sha256"]:
            raise AttachmentMissing(f"attachment {index} in the store is not the content accepted (SHA-256 differs)")
        loaded.append(EmailAttachment(meta["name"], meta["contentType"], content))
    return loaded


def _send_email(
    notification: Notification, sender: EmailSender, attachments: AttachmentStore, ledger: Ledger, clock: Clock
) -> None:
    operation_id = notification.email_operation_id
    message_id = None
    to, cc, bcc = _pending_addresses(notification)
    # An earlier attempt may have reached ACS before it failed or its worker died: ask ACS first,
    # because nothing documents that ACS drops a repeated Operation-Id.
    if notification.check_before_send:
        with _acs_call("acs.email.find_operation", notification, []):
            message_id = sender.find_operation(operation_id)
        notification.check_before_send = False  # settled, whatever the send below does
    if message_id is None:
        content = notification.content
        email = OutgoingEmail(
            operation_id=operation_id,
            sender=notification.sender,
            to=to,
            cc=cc,
            bcc=bcc,
            subject=content["subject"],
            text=content.get("text"),
            html=content.get("html"),
            reply_to=[EmailAddress(**a) for a in content.get("replyTo", [])],
            attachments=_load_attachments(notification, attachments),
        )
        with _acs_call("acs.email.send", notification, [a.address for a in to + cc + bcc], measure=True):
            message_id = sender.send(email)

    def sent(n: Notification) -> None:
        n.finish_attempt()
        n.record_all_sent(clock.now(), message_id)

    recorded, _ = _modify(ledger, notification.id, sent)
    obs.sent.add(sum(1 for r in recorded.recipients if r.message_id == message_id), {"channel": "email"})
    if notification.content.get("attachments"):
        # Handed to ACS and recorded: nothing sends this notification again, so its bytes are no
        # longer needed (the ledger keeps name, type, size and SHA-256).
        _forget_attachments(attachments, notification.id)


def _send_sms(notification: Notification, sender: SmsSender, ledger: Ledger, clock: Clock) -> None:
    first_sent = notification.first_attempt_at
    assert first_sent is not None  # set by start_attempt before any send
    pending = notification.pending_recipients()
    with _acs_call("acs.sms.send", notification, [r.address for r in pending], measure=True):
        results = sender.send(
            OutgoingSms(
                sender=notification.sender,
                message=notification.content["message"],
                recipients=[
                    SmsRecipientRequest(r.address, notification.sms_repeatability_id(r.address), first_sent) for r in pending
                ],
                tag=notification.id,
            )
        )
    by_number = {e164(result.to): result for result in results if result.to}
    retryable: list[SendError] = []
    tally: dict[str, int] = {}

    def record(n: Notification) -> None:
        retryable.clear()
        tally.clear()
        now = clock.now()
        n.finish_attempt()
        for recipient in n.pending_recipients():
            result = by_number.get(recipient.address)
            if result is not None and result.error is None and result.message_id:
                n.record_sent(now, recipient.address, result.message_id)
                tally["sent"] = tally.get("sent", 0) + 1
            elif result is not None and isinstance(result.error, PermanentSendError):
                n.record_recipient_refused(now, recipient.address, result.error)
                tally["failed"] = tally.get("failed", 0) + 1
            elif result is not None and isinstance(result.error, SendError):
                retryable.append(result.error)
            else:
                # ACS answered without a usable result for this recipient; the repeatability id
                # makes asking again safe.
                retryable.append(SendTimeout("ACS returned no result for a recipient"))

    _modify(ledger, notification.id, record)
    obs.sent.add(tally.get("sent", 0), {"channel": "sms"})
    obs.count_outcome("sms", "failed", tally.get("failed", 0), source="acs_refused")
    if retryable:
        raise retryable[0]


@contextmanager
def _acs_call(name: str, notification: Notification, addresses: list[str], *, measure: bool = False) -> Iterator[None]:
    """A client span around one ACS call (and, for sends, its latency): the hop an operator follows
    from the queue to ACS, with the recipients as keyed hashes."""
    attributes = {
        "notify.notification.id": notification.id,
        "notify.channel": notification.channel.value,
        "notify.attempt": notification.attempts,
        "peer.service": "azure-communication-services",
        **obs.recipient_attributes(addresses),
    }
    started = time.perf_counter()
    outcome = "ok"
    try:
        with obs.span(name, kind=SpanKind.CLIENT, attributes=attributes):
            yield
    except Exception as exc:
        outcome = type(exc).__name__
        raise
    finally:
        if measure:
            obs.send_duration.record(time.perf_counter() - started, {"channel": notification.channel.value, "outcome": outcome})


@dataclass
class ReportsApplied:
    applied: int = 0
    duplicates: int = 0
    parked: int = 0
    notifications: set[str] = field(default_factory=set)


def apply_delivery_reports(
    cmd: ApplyDeliveryReports, *, ledger: Ledger, suppressions: SuppressionList, clock: Clock
) -> ReportsApplied:
    summary = ReportsApplied()
    if not cmd.reports:
        return summary
    owners = ledger.find_by_message_ids(r.message_id for r in cmd.reports)
    orphans = [r for r in cmd.reports if r.message_id not in owners]
    if orphans:
        # A report can overtake the dispatcher's "sent" write; keep it until the id is known.
        ledger.park_reports(orphans, clock.now())
        summary.parked = len(orphans)
    touched: dict[str, Notification] = {}
    to_suppress: list[Suppression] = []
    now = clock.now()
    tracing = obs.tracing()
    for report in cmd.reports:
        notification = owners.get(report.message_id)
        if notification is None:
            continue
        with obs.about(notification.id), _report_span(notification, report, tracing) as span:
            before = [r.status for r in notification.recipients]
            if not notification.apply_report(report, now):
                summary.duplicates += 1
                span.set_attribute("notify.report.effect", "duplicate")
                continue
            touched[notification.id] = notification
            summary.applied += 1
            changed = [r for r, was in zip(notification.recipients, before) if r.status is not was]
            span.set_attribute("notify.report.effect", "applied" if changed else "superseded")
            for recipient in changed:
                _recipient_outcome(notification, recipient, now)
            reason = f"{report.status}: {report.detail}" if report.detail else report.status
            to_suppress += [
                Suppression(channel=notification.channel, address=a, reason=reason, created_at=now, notification_id=notification.id)
                for a in notification.newly_suppressing(report)
            ]
    for lost in ledger.save_many(list(touched.values())):
        # Another writer won the race (rare): its reports, picked out of the batch again, go onto
        # the stored copy.
        reports = [r for r in cmd.reports if owners.get(r.message_id) is lost]
        _modify(ledger, lost.id, lambda n: [n.apply_report(r, clock.now()) for r in reports])
    # After the ledger write: a crash in between loses a suppression, never a report.
    suppressions.add_many(to_suppress)
    summary.notifications = set(touched)
    return summary


def _report_span(notification: Notification, report: DeliveryReport, tracing: bool) -> ContextManager[Span]:
    """A span per delivery report, in Event Grid's trace, linked to the trace that accepted the
    notification: an operator can walk from the request to its outcome. ``tracing``: whether spans
    are recorded (``obs.tracing()``, asked once per batch)."""
    if not tracing:
        return obs.NOT_RECORDED
    attributes = {
        "notify.notification.id": notification.id,
        "notify.channel": notification.channel.value,
        "notify.report.kind": report.kind,
        "notify.report.status": report.status,
        "notify.report.event_id": report.event_id,
        **obs.recipient_attributes([report.recipient] if report.recipient else []),
    }
    return obs.span(
        "notify.delivery_report", links=obs.link_to(notification.trace_context), attributes=attributes
    )


def _recipient_outcome(notification: Notification, recipient: Recipient, now: datetime) -> None:
    """Metrics and one structured log line for a recipient whose status a report changed: what the
    operations queries (docs/operations.md) count bounces by domain and slow deliveries from."""
    channel, status = notification.channel.value, recipient.status.value
    obs.count_outcome(channel, status)
    took = obs.since(notification.created_at, now)
    if recipient.status is RecipientStatus.DELIVERED:
        obs.delivery_duration.record(took, {"channel": channel})
    if not log.isEnabledFor(logging.INFO):
        return  # the keyed hash below is the dearest part of a report that nothing would log
    log.info(
        "notification %s: a recipient is now %s after %.1fs", notification.id, status, took,
        extra={
            "event": "notify.recipient_status",
            "channel": channel,
            "status": status,
            "recipientHash": obs.hash_recipient(recipient.address),
            "recipientDomain": recipient_domain(recipient.address) or "",
            "secondsSinceAccepted": round(took, 3),
        },
    )


@dataclass
class InboundApplied:
    opted_out: int = 0
    opted_in: int = 0
    other: int = 0


def apply_inbound_sms(cmd: ApplyInboundSms, *, suppressions: SuppressionList, clock: Clock) -> InboundApplied:
    """STOP-family keywords put the sender's number on the SMS suppression list; START-family ones
    lift the sender's own opt-out (never an operator's entry).

    Event Grid may deliver a STOP and a START out of order. A START lifts only an opt-out older than
    itself; a STOP that arrives late re-adds the number, which errs on the side of not messaging.
    """
    summary = InboundApplied()
    for message in cmd.messages:
        when = message.received_at or clock.now()
        if message.keyword == "stop":
            added = suppressions.add(
                Suppression(
                    channel=Channel.SMS,
                    address=message.sender,
                    reason=f"{OPT_OUT_REASON}: replied {message.message.strip().upper()[:20]} to {message.to}",
                    created_at=when,
                )
            )
            summary.opted_out += added
        elif message.keyword == "start":
            entry = suppressions.find(Channel.SMS, [message.sender]).get(message.sender)
            if entry and entry.reason.startswith(OPT_OUT_REASON) and entry.created_at <= when:
                summary.opted_in += suppressions.remove(Channel.SMS, message.sender)
        else:
            summary.other += 1
    if summary.opted_out or summary.opted_in:
        log.info("inbound SMS: %d opted out, %d opted back in", summary.opted_out, summary.opted_in)
    return summary


def _apply_parked_reports(notification_id: str, ledger: Ledger, suppressions: SuppressionList, clock: Clock) -> None:
    notification = ledger.get(notification_id)
    if notification is None:
        return
    parked = ledger.parked_reports_for(notification.message_ids)
    if parked:
        apply_delivery_reports(ApplyDeliveryReports(parked), ledger=ledger, suppressions=suppressions, clock=clock)
        ledger.discard_parked_reports(r.event_id for r in parked)


#: A parked report nobody claims within this long belongs to another sender on the same ACS resource.
PARKED_REPORT_TTL = timedelta(days=1)


@dataclass(frozen=True)
class FailureRateAlert:
    channel: Channel
    level: str
    rate: float
    sent: int


@dataclass
class Reconciled:
    unconfirmed: int = 0
    requeued: int = 0
    parked_applied: int = 0
    purged: int = 0
    alerts: list[FailureRateAlert] = field(default_factory=list)


@obs.in_span("notify.reconcile")
def reconcile(
    cmd: Reconcile,
    *,
    ledger: Ledger,
    publisher: MessagePublisher,
    suppressions: SuppressionList,
    clock: Clock,
    batch: int = 500,
) -> Reconciled:
    summary = Reconciled()
    stale = ledger.awaiting_reports(sent_before=cmd.report_deadline, limit=batch)
    changed = [n for n in stale if n.mark_unconfirmed(clock.now(), cmd.report_deadline)]
    for lost in ledger.save_many(changed):
        _modify(ledger, lost.id, lambda n: n.mark_unconfirmed(clock.now(), cmd.report_deadline))
    summary.unconfirmed = len(changed)

    for notification in ledger.unqueued(accepted_before=cmd.requeue_before, limit=batch):
        # The next attempt: 1 for an interrupted intake, later for an interrupted replay; on the
        # notification's own trace, which its delivery continues.
        publisher.send(dispatch_message(notification.id, notification.attempts + 1, traceparent=notification.trace_context))
        _modify(ledger, notification.id, lambda n: n.queued_at or n.mark_queued(clock.now()))
        summary.requeued += 1

    # Reports that were parked while their send was being recorded (the dispatcher looked before
    # they arrived): apply, then discard.
    parked = ledger.claimable_parked_reports(limit=batch)
    if parked:
        summary.parked_applied = apply_delivery_reports(
            ApplyDeliveryReports(parked), ledger=ledger, suppressions=suppressions, clock=clock
        ).applied
        ledger.discard_parked_reports(r.event_id for r in parked)
    ledger.expire_parked_reports(clock.now() - PARKED_REPORT_TTL)
    if cmd.thresholds is not None:
        summary.alerts = _failure_rate_alerts(ledger, cmd.thresholds, clock.now())
    if cmd.purge_before is not None:
        summary.purged = ledger.purge(accepted_before=cmd.purge_before, limit=batch * 10)
    if summary.unconfirmed or summary.requeued or summary.parked_applied or summary.purged:
        log.info(
            "reconciled: %d unconfirmed, %d requeued, %d parked reports applied, %d purged",
            summary.unconfirmed, summary.requeued, summary.parked_applied, summary.purged,
        )
    return summary


def _failure_rate_alerts(ledger: Ledger, thresholds: FailureRateThresholds, now: datetime) -> list[FailureRateAlert]:
    """A structured warning per channel whose failure rate is over a threshold, every run while it
    stays there (the alert rule in Azure Monitor dedupes)."""
    start = now - timedelta(minutes=thresholds.window_minutes)
    report = reconciliation_report(ledger=ledger, start=start, end=now, channel=None)
    alerts = []
    for name, figures in report["channels"].items():
        sent, rate = figures["sent"], figures["failureRate"]
        if sent:
            obs.failure_rate.set(rate, {"channel": name})
        level = thresholds.level(rate, sent)
        if level is None:
            continue
        alert = FailureRateAlert(Channel(name), level, rate, sent)
        alerts.append(alert)
        log.log(
            logging.ERROR if level == "critical" else logging.WARNING,
            "failure rate %s on %s: %.2f%% of %d sent in the last %d min",
            level, name, rate * 100, sent, thresholds.window_minutes,
            extra={"event": "notify.failure_rate", "channel": name, "level": level, "failureRate": rate, "sent": sent},
        )
    return alerts


# ------------------------------------------------------------------------------ queries


SENT_OR_LATER = (
    NotificationStatus.SENT,
    NotificationStatus.DELIVERED,
    NotificationStatus.BOUNCED,
    NotificationStatus.SUPPRESSED,
    NotificationStatus.FAILED,
    NotificationStatus.UNCONFIRMED,
)


FAILURE_STATUSES = (NotificationStatus.BOUNCED, NotificationStatus.FAILED, NotificationStatus.SUPPRESSED)

StatusCounts = dict[tuple[Channel, NotificationStatus, bool], int]


def count_statuses(counts: StatusCounts, channels: list[Channel], *statuses: NotificationStatus, reached: bool | None = None) -> int:
    """How many of ``counts`` are on one of ``channels`` with one of ``statuses`` (and reached ACS
    or not, when ``reached`` says which)."""
    return sum(
        count
        for (c, s, acs), count in counts.items()
        if c in channels and s in statuses and (reached is None or acs is reached)
    )


def summarise_counts(counts: StatusCounts, channels: list[Channel]) -> dict:
    """The reconciliation figures of ``Ledger.status_counts`` output, for the given channels.

    ``sent`` counts what reached ACS (whatever happened after); the failure rate is bounced +
    failed + suppressed over sent, the figure ACS judges senders by. Notifications suppressed by
    our own list before sending count in ``suppressed`` (and ``suppressedBeforeSending``) but
    neither as sent nor as failures: ACS never saw them.
    """

    def total(*statuses: NotificationStatus, reached: bool | None = None) -> int:
        return count_statuses(counts, channels, *statuses, reached=reached)

    sent = total(*SENT_OR_LATER, reached=True)
    failed_like = total(*FAILURE_STATUSES, reached=True)
    return {
        "accepted": total(*NotificationStatus),
        "pending": total(NotificationStatus.ACCEPTED),
        "sent": sent,
        "awaitingReport": total(NotificationStatus.SENT),
        "delivered": total(NotificationStatus.DELIVERED),
        "bounced": total(NotificationStatus.BOUNCED),
        "suppressed": total(NotificationStatus.SUPPRESSED),
        "suppressedBeforeSending": total(NotificationStatus.SUPPRESSED, reached=False),
        "failed": total(NotificationStatus.FAILED),
        "unconfirmed": total(NotificationStatus.UNCONFIRMED),
        "deadLettered": total(NotificationStatus.DEAD_LETTERED),
        "failureRate": round(failed_like / sent, 4) if sent else 0.0,
    }


def reconciliation_report(*, ledger: Ledger, start: datetime, end: datetime, channel: Channel | None) -> dict:
    """Counts by status for notifications accepted in [start, end), per channel and in total (see
    ``summarise_counts``)."""
    counts = ledger.status_counts(start=start, end=end, channel=channel)
    channels = [channel] if channel else list(Channel)
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "channels": {c.value: summarise_counts(counts, [c]) for c in channels},
        "total": summarise_counts(counts, channels),
    }
