"""Operators: one view over the dead letters, replay that never sends twice, purge, the audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.commands import DeadLetterFilter, PurgeDeadLetters, ReplayDeadLetters
from shared.domain.errors import RequestRejected, SendTimeout, ServiceUnavailable
from shared.domain.model import Channel, NotificationStatus, Suppression
from shared.service import handlers, operator
from shared.service.handlers import Completed, DeadLettered, Rescheduled
from tests.fakes import FakeQueue
from tests.unit.builders import World, email_command, sms_command

OPERATOR = "cli:ops"


class Operations(World):
    """Every port faked; the publisher is a queue with a dead-letter sub-queue, and the dispatcher
    runs the way the local worker does (its message dead-lettered beside the ledger's record)."""

    def __init__(self, max_attempts: int = 3) -> None:
        super().__init__(max_attempts=max_attempts)
        self.publisher = self.queue = FakeQueue()

    def messages_for(self, nid: str):
        return [m for m in self.queue.sent if m.body["notificationId"] == nid]

    def drive(self, nid: str, *, worker_dead_letters: bool = True, steps: int = 20):
        """Deliver this notification's queue messages in order until its chain ends."""
        handled = 0
        outcome = None
        for _ in range(steps):
            pending = self.messages_for(nid)[handled:]
            if not pending:
                return outcome
            message = pending[0]
            handled += 1
            self.clock.advance(120)
            outcome = self.dispatch(nid, message.body["attempt"])
            if isinstance(outcome, DeadLettered) and worker_dead_letters:
                self.queue.add_dead_letter(dict(message.body), outcome.reason, self.clock.now(), description=outcome.description)
        return outcome

    def dead_lettered_email(self, *to: str, error=None, worker_dead_letters: bool = True) -> str:
        n, _ = self.submit(email_command(*to))
        self.email.failures = [error or ServiceUnavailable("down", status_code=503) for _ in range(10)]
        outcome = self.drive(n.id, worker_dead_letters=worker_dead_letters)
        assert isinstance(outcome, DeadLettered), outcome
        self.email.failures = []
        return n.id

    def listing(self, **filters):
        return operator.list_dead_letters(DeadLetterFilter(**filters), ledger=self.ledger, dead_letters=self.queue)

    def replay(self, *ids: str, dry_run: bool = False, **filters):
        return operator.replay_dead_letters(
            ReplayDeadLetters(actor=OPERATOR, ids=ids, filter=DeadLetterFilter(**filters), dry_run=dry_run),
            ledger=self.ledger, dead_letters=self.queue, publisher=self.publisher,
            suppressions=self.suppressions, clock=self.clock,
        )

    def purge(self, *ids: str, **filters):
        return operator.purge_dead_letters(
            PurgeDeadLetters(actor=OPERATOR, ids=ids, filter=DeadLetterFilter(**filters)),
            ledger=self.ledger, dead_letters=self.queue, clock=self.clock,
        )


@pytest.fixture
def ops() -> Operations:
    return Operations()


# ---------------------------------------------------------------------------- the view


def test_a_notification_dead_lettered_in_the_ledger_and_the_queue_is_listed_once_under_its_id(ops):
    nid = ops.dead_lettered_email()

    [listed] = ops.listing()

    assert listed.id == nid and listed.source == "ledger"
    assert listed.reason == "MaxAttemptsExceeded"
    assert "HTTP 503" in listed.description
    assert listed.channel is Channel.EMAIL
    assert [m.body["notificationId"] for m in listed.queue_messages] == [nid]


def test_the_listing_shape_is_the_one_the_dashboard_reads(ops):
    nid = ops.dead_lettered_email()

    summary = ops.listing()[0].summary()

    assert summary | {"deadLetteredAt": None} == summary | {
        "id": nid,
        "notificationId": nid,
        "channel": "email",
        "reason": "MaxAttemptsExceeded",
        "source": "ledger",
        "replayCount": 0,
        "deadLetteredAt": None,
    }
    assert summary["deadLetteredAt"] == ops.ledger.get(nid).dead_letter.at.isoformat()


def test_a_dead_letter_only_the_queue_holds_is_listed_by_its_sequence_number(ops):
    alive, _ = ops.submit(email_command())
    crash = ops.queue.add_dead_letter({"notificationId": alive.id, "attempt": 1}, "MaxDeliveryCountExceeded", ops.clock.now())
    junk = ops.queue.add_dead_letter({"raw": "not json"}, "MalformedMessage", ops.clock.now() + timedelta(seconds=1))

    listed = ops.listing()

    assert [(d.id, d.source, d.notification_id, d.channel) for d in listed] == [
        (f"q-{junk.sequence_number}", "queue", None, None),
        (f"q-{crash.sequence_number}", "queue", alive.id, Channel.EMAIL),
    ]


def test_dead_letters_are_newest_first_and_filtered_by_channel_reason_time_and_limit(ops):
    first = ops.dead_lettered_email()
    rejected = ops.dead_lettered_email(error=RequestRejected("bad", status_code=400))
    sms, _ = ops.submit(sms_command())
    ops.sms.failures = [ServiceUnavailable("down", status_code=503) for _ in range(10)]
    ops.drive(sms.id)
    cutoff = ops.ledger.get(rejected).dead_letter.at

    assert [d.id for d in ops.listing()] == [sms.id, rejected, first]
    assert [d.id for d in ops.listing(channel=Channel.EMAIL)] == [rejected, first]
    assert [d.id for d in ops.listing(reason="RequestRejected")] == [rejected]
    assert [d.id for d in ops.listing(since=cutoff)] == [sms.id, rejected]
    assert [d.id for d in ops.listing(limit=1)] == [sms.id]


def test_a_queue_copy_of_a_ledger_dead_letter_outside_the_page_is_not_listed_twice(ops):
    older = ops.dead_lettered_email()
    newer = ops.dead_lettered_email()

    assert [d.id for d in ops.listing(limit=1)] == [newer]
    assert older not in {d.notification_id for d in ops.listing(limit=1)}


def test_one_dead_letter_is_found_by_its_id_or_by_its_queue_copy(ops):
    nid = ops.dead_lettered_email()
    [copy] = ops.queue.dead_letters()

    by_id = operator.get_dead_letter(nid, ledger=ops.ledger, dead_letters=ops.queue)
    by_copy = operator.get_dead_letter(f"q-{copy.sequence_number}", ledger=ops.ledger, dead_letters=ops.queue)

    assert by_id.id == by_copy.id == nid
    assert [h.event for h in by_id.notification.history][-1] == "dead_lettered"
    assert operator.get_dead_letter("q-999", ledger=ops.ledger, dead_letters=ops.queue) is None
    assert operator.get_dead_letter("nope", ledger=ops.ledger, dead_letters=ops.queue) is None
