"""Small builders for service-layer tests."""

from __future__ import annotations

from datetime import timedelta

from shared.domain.commands import SubmitNotification
from shared.domain.model import Channel, Recipient
from shared.service import handlers
from shared.service.retry import RetryPolicy
from tests.fakes import (
    FakeAttachmentStore,
    FakeClock,
    FakeEmailSender,
    FakeLedger,
    FakePublisher,
    FakeSmsSender,
    FakeSuppressionList,
    UnlimitedRateLimiter,
)


def email_command(*to: str, key: str | None = None, request_hash: str = "h1") -> SubmitNotification:
    return SubmitNotification(
        channel=Channel.EMAIL,
        sender="DoNotReply@notify.example.com",
        recipients=[Recipient(address=a) for a in (to or ("someone@example.com",))],
        content={"subject": "Your receipt", "text": "Thanks", "html": None},
        idempotency_key=key,
        request_hash=request_hash,
    )


def sms_command(*to: str) -> SubmitNotification:
    return SubmitNotification(
        channel=Channel.SMS,
        sender="+18005550100",
        recipients=[Recipient(address=n) for n in (to or ("+14255551234",))],
        content={"message": "Your code is 123456"},
        request_hash="h2",
    )


class World:
    """Every port faked, and the handlers bound to them."""

    def __init__(self, max_attempts: int = 4) -> None:
        self.clock = FakeClock()
        self.ledger = FakeLedger()
        self.publisher = FakePublisher()
        self.attachments = FakeAttachmentStore()
        self.email = FakeEmailSender()
        self.sms = FakeSmsSender()
        self.suppressions = FakeSuppressionList()
        self.rate_limiter = UnlimitedRateLimiter()
        self.lease = timedelta(seconds=90)
        # Deterministic jitter: always the top of the range.
        self.policy = RetryPolicy(max_attempts=max_attempts, base_seconds=2, max_seconds=60, uniform=lambda lo, hi: hi)

    def submit(self, cmd: SubmitNotification):
        return handlers.submit_notification(
            cmd, ledger=self.ledger, publisher=self.publisher, attachments=self.attachments, clock=self.clock
        )

    def dispatch(self, notification_id: str, attempt: int = 1):
        from shared.domain.commands import DispatchNotification

        return handlers.dispatch(
            DispatchNotification(notification_id, attempt),
            ledger=self.ledger,
            email_sender=self.email,
            sms_sender=self.sms,
            publisher=self.publisher,
            attachments=self.attachments,
            suppressions=self.suppressions,
            rate_limiter=self.rate_limiter,
            policy=self.policy,
            clock=self.clock,
            lease=self.lease,
        )

    def reports(self, *reports):
        from shared.domain.commands import ApplyDeliveryReports

        return handlers.apply_delivery_reports(
            ApplyDeliveryReports(list(reports)), ledger=self.ledger, suppressions=self.suppressions, clock=self.clock
        )
