"""Commands: what a caller asks the service to do, already validated at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .model import Channel, DeliveryReport, InboundSms, Recipient


@dataclass(frozen=True)
class NewAttachment:
    """An email attachment as the caller sent it, already decoded and checked."""

    name: str
    content_type: str
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class SubmitNotification:
    channel: Channel
    sender: str
    recipients: list[Recipient]
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    #: Already scoped to the caller, so two apps' keys never collide.
    idempotency_key: str | None = None
    request_hash: str | None = None
    #: Email only. The bytes go to the attachment store; the ledger keeps their metadata.
    attachments: list[NewAttachment] = field(default_factory=list)
    #: The caller's own reference and properties, echoed on every status event of the notification.
    correlation_id: str | None = None
    caller_properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DispatchNotification:
    notification_id: str
    attempt: int = 1


@dataclass(frozen=True)
class ApplyDeliveryReports:
    reports: list[DeliveryReport]


@dataclass(frozen=True)
class ApplyInboundSms:
    messages: list[InboundSms]


@dataclass(frozen=True)
class FailureRateThresholds:
    warning: float
    critical: float
    #: The rate is measured over notifications accepted since this long ago.
    window_minutes: int
    min_sent: int

    def level(self, rate: float, sent: int) -> str | None:
        """``critical``, ``warning`` or None; too few sends to judge is None too, so a single
        bounce in a quiet hour raises nothing."""
        if sent < self.min_sent:
            return None
        return "critical" if rate >= self.critical else "warning" if rate >= self.warning else None


@dataclass(frozen=True)
class Reconcile:
    #: Recipients sent before this moment with no report become ``unconfirmed``.
    report_deadline: datetime
    #: Notifications accepted before this moment and never queued are queued again.
    requeue_before: datetime
    thresholds: FailureRateThresholds | None = None
    #: Ledger records accepted before this moment are deleted.
    purge_before: datetime | None = None


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operator means: all of them when every field is empty."""

    channel: Channel | None = None
    #: A dead-letter reason, matched exactly (``MaxAttemptsExceeded``).
    reason: str | None = None
    #: Dead-lettered at or after this moment.
    since: datetime | None = None
    limit: int = 100

    def describe(self) -> dict[str, Any]:
        """For the audit trail."""
        found: dict[str, Any] = {"limit": self.limit}
        if self.channel is not None:
            found["channel"] = self.channel.value
        if self.reason is not None:
            found["reason"] = self.reason
        if self.since is not None:
            found["since"] = self.since.isoformat()
        return found


@dataclass(frozen=True)
class ReplayDeadLetters:
    """Send dead letters again, chosen by ``ids`` or else by ``filter``; ``actor`` is who asks."""

    actor: str
    ids: tuple[str, ...] = ()
    filter: DeadLetterFilter = field(default_factory=DeadLetterFilter)
    dry_run: bool = False


@dataclass(frozen=True)
class PurgeDeadLetters:
    """Give up on dead letters, chosen by ``ids`` or else by ``filter``."""

    actor: str
    ids: tuple[str, ...] = ()
    filter: DeadLetterFilter = field(default_factory=DeadLetterFilter)
    dry_run: bool = False


@dataclass(frozen=True)
class RelayStatusEvents:
    #: CloudEvent ``type`` is ``<type_prefix>.notification.<status>``.
    type_prefix: str = "Notify"
    #: CloudEvent ``source``: which service (and environment) the events come from.
    source: str = "/notify"
    #: Events read from the outbox and published per request (Event Grid takes up to 1 MB).
    batch_size: int = 100
    #: A run stops after this many batches, so a timer run stays short.
    max_batches: int = 20
