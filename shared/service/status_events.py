"""Status events out: the relay from the ledger's outbox to the destinations, as CloudEvents 1.0.

* Each status change was stored as an event in the ledger's outbox by the write that stored the
  change (see ``Notification._derive_status_events`` and ``Ledger``), so publishing can neither
  lose an event nor hold up a send: the relay runs on its own schedule, reads the outbox a batch
  at a time and removes what every destination took.
* Each destination (the Event Grid topic in Azure; each subscriber URL on the local stack) takes
  a batch as a whole or not at all. A destination that fails is left alone for a backoff with
  full jitter (``RetryPolicy.backoff``: doubling from its base up to its cap, a ``Retry-After`` as
  a floor) and the events stay in the outbox: nothing is ever dropped for failing, however long.
  Events another destination already took are not sent to it again meanwhile (in this process).
* Order: a notification's events are published in ``sequence`` order, each batch after the one
  before it succeeded. At-least-once: a crash between publishing and removing publishes a batch
  again, with the same CloudEvent ``id``s, which is how subscribers recognise duplicates.
* A destination that refuses the content of a batch (400, 413) gets its events one at a time, so
  one bad event cannot hold up the rest: the refused event stays in the outbox with a backoff of
  its own, the notification's later events wait behind it so that none overtakes it, and the
  destination itself carries on at full speed. The relay then reads the outbox past that
  notification (``Ledger.pending_status_events(exclude=...)``), so held events piling up at the
  head of the outbox never fill the batches and stall the other notifications.
* With no destination configured the events are removed as relayed, as an Event Grid topic
  without subscriptions drops them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..domain.commands import RelayStatusEvents
from ..domain.errors import StatusPublishFailed, StatusPublishRejected
from ..domain.model import StatusEvent
from .ports import Clock, Ledger, StatusEventPublisher
from .retry import RetryPolicy

log = logging.getLogger(__name__)

CLOUDEVENTS_BATCH_CONTENT_TYPE = "application/cloudevents-batch+json; charset=utf-8"


def _rfc3339(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def cloud_event(event: StatusEvent, *, type_prefix: str, source: str) -> dict[str, Any]:
    """The status event as a CloudEvent 1.0 in structured JSON mode. ``sequence`` is the
    CloudEvents sequence extension, zero-padded so that it also sorts as text."""
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": source,
        "type": f"{type_prefix}.notification.{event.status.value}",
        "subject": f"notifications/{event.notification_id}",
        "time": _rfc3339(event.at),
        "datacontenttype": "application/json",
        "sequence": f"{event.sequence:010d}",
        "data": {
            "id": event.notification_id,
            "channel": event.channel.value,
            "status": event.status.value,
            "recipient": event.recipient,
            "recipientStatus": event.recipient_status,
            "notificationStatus": event.notification_status,
            "reason": event.reason,
            "correlationId": event.correlation_id,
            "properties": event.caller_properties,
            "time": _rfc3339(event.at),
            "sequence": event.sequence,
        },
    }


@dataclass
class Destination:
    """A publisher and what the relay remembers about it between runs (in this process only: a
    restart forgets the backoff and may send an event a second time, never lose one)."""

    publisher: StatusEventPublisher
    #: Failed attempts in a row; the next backoff grows with them.
    failures: int = 0
    retry_at: datetime | None = None
    #: Events this destination took that are still in the outbox (another destination is behind).
    delivered: set[str] = field(default_factory=set)
    #: Events it refused as such (400, 413): id -> (refusals in a row, next try).
    held: dict[str, tuple[int, datetime]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.publisher.name

    def ready(self, now: datetime) -> bool:
        return self.retry_at is None or self.retry_at <= now

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = None

    def failed(self, error: StatusPublishFailed, now: datetime, policy: RetryPolicy, kept: int) -> None:
        self.failures += 1
        delay = policy.backoff(self.failures, error.retry_after)
        self.retry_at = now + timedelta(seconds=delay)
        # The adapter's message says what to check (a 401/403 from the topic names the role).
        log.warning(
            "status events: %s failed (%s) %d time(s) in a row; %d event(s) kept in the outbox, next try in %.1fs",
            self.name, error.message, self.failures, kept, delay,
            extra={"event": "notify.status_events_failing", "destination": self.name, "failures": self.failures,
                   "kept": kept},
        )


@dataclass
class StatusEventsRelayed:
    published: int = 0
    #: Removed with no destination configured.
    discarded: int = 0
    #: Still in the outbox after this run because a destination did not take them.
    kept: int = 0
    failing: list[str] = field(default_factory=list)


def relay_status_events(
    cmd: RelayStatusEvents,
    *,
    ledger: Ledger,
    destinations: list[Destination],
    policy: RetryPolicy,
    clock: Clock,
) -> StatusEventsRelayed:
    """Relay batches from the outbox until it is empty, a destination falls behind, or
    ``cmd.max_batches`` batches went out.

    Events that stay in the outbox because a destination refused them (or their notification's
    earlier event) are not read again in this run: their notifications are excluded from the next
    reads, so the relay pages past them to newer events of other notifications. Otherwise
    ``batch_size`` held events at the head of the outbox, which always returns its oldest events
    first, would fill every batch and stop the relay for everyone. The held events stay in the
    outbox (never lost) and their notifications' later events stay behind them (order kept)."""
    summary = StatusEventsRelayed()
    passed: set[str] = set()  # notifications with an event kept in this run
    for _ in range(cmd.max_batches):
        events = ledger.pending_status_events(cmd.batch_size, exclude=passed)
        if not events:
            break
        if not destinations:
            ledger.mark_status_events_published(events)
            summary.discarded += len(events)
            continue
        now = clock.now()
        for destination in destinations:
            if destination.ready(now):
                _publish(cmd, destination, events, policy, now)
        done = [e for e in events if all(e.id in d.delivered for d in destinations)]
        if done:
            ledger.mark_status_events_published(done)
            finished = {e.id for e in done}
            for destination in destinations:
                destination.delivered -= finished
            summary.published += len(done)
        taken = {e.id for e in done}
        kept = [e for e in events if e.id not in taken]
        summary.kept += len(kept)
        # A destination that failed waits for its backoff, and so does everything it has not
        # taken. Events refused as such wait for their own retry: page past their notifications.
        if kept and any(not d.ready(now) for d in destinations):
            break
        passed.update(e.notification_id for e in kept)
    summary.failing = [d.name for d in destinations if d.failures]
    if summary.published or summary.discarded:
        log.info("status events: %d published, %d discarded (no destination), %d kept",
                 summary.published, summary.discarded, summary.kept)
    return summary


def _publish(
    cmd: RelayStatusEvents, destination: Destination, events: list[StatusEvent], policy: RetryPolicy, now: datetime
) -> None:
    todo, waiting = [], set()
    for event in events:
        if event.id in destination.delivered or event.notification_id in waiting:
            continue
        held = destination.held.get(event.id)
        if held is not None and held[1] > now:
            waiting.add(event.notification_id)  # its later events stay behind it
            continue
        todo.append(event)
    if not todo:
        return
    try:
        destination.publisher.publish([cloud_event(e, type_prefix=cmd.type_prefix, source=cmd.source) for e in todo])
    except StatusPublishRejected as error:
        if len(todo) == 1:
            _hold(destination, todo[0], error, policy, now)
        elif not _one_by_one(cmd, destination, todo, policy, now):
            destination.failed(error, now, policy, kept=sum(e.id not in destination.delivered for e in todo))
            return
    except StatusPublishFailed as error:
        destination.failed(error, now, policy, kept=len(todo))
        return
    else:
        _took(destination, todo)
    destination.succeeded()


def _took(destination: Destination, events: list[StatusEvent]) -> None:
    for event in events:
        destination.delivered.add(event.id)
        destination.held.pop(event.id, None)


def _hold(destination: Destination, event: StatusEvent, error: StatusPublishFailed, policy: RetryPolicy,
          now: datetime) -> None:
    refusals = destination.held.get(event.id, (0, now))[0] + 1
    delay = policy.backoff(refusals, error.retry_after)
    destination.held[event.id] = (refusals, now + timedelta(seconds=delay))
    log.warning(
        "status event %s (%s, notification %s, sequence %d) refused by %s %d time(s): %s; kept in the outbox,"
        " next try in %.1fs",
        event.id, event.status.value, event.notification_id, event.sequence, destination.name, refusals,
        error.message, delay,
        extra={"event": "notify.status_event_refused", "destination": destination.name, "refusals": refusals},
    )


def _one_by_one(
    cmd: RelayStatusEvents, destination: Destination, events: list[StatusEvent], policy: RetryPolicy, now: datetime
) -> bool:
    """Publish each event alone, in order, holding back the ones refused (and their notification's
    later events); False when the destination failed otherwise (it is down, not picky)."""
    waiting: set[str] = set()
    for event in events:
        if event.notification_id in waiting:
            continue
        try:
            destination.publisher.publish([cloud_event(event, type_prefix=cmd.type_prefix, source=cmd.source)])
        except StatusPublishRejected as error:
            waiting.add(event.notification_id)
            _hold(destination, event, error, policy, now)
            continue
        except StatusPublishFailed:
            return False
        _took(destination, [event])
    return True
