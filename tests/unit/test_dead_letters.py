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


# ---------------------------------------------------------------------------- replay


def sends(ops: Operations, nid: str) -> int:
    return sum(1 for e in ops.email.sent if e.operation_id == nid)


def test_a_replayed_dead_letter_is_sent_once_and_leaves_both_dead_letter_lists(ops):
    nid = ops.dead_lettered_email()
    before = {m.message_id for m in ops.queue.sent}

    result = ops.replay(nid)
    outcome = ops.drive(nid)

    assert result.counts() == {"replayed": 1}
    [message] = [m for m in ops.queue.sent if m.message_id not in before]
    assert message.body == {"notificationId": nid, "attempt": 4, "replayCount": 1}
    assert isinstance(outcome, Completed)
    assert sends(ops, nid) == 1
    stored = ops.ledger.get(nid)
    assert stored.status is NotificationStatus.SENT and stored.dead_letter is None
    assert ops.listing() == [] and ops.queue.dead == {}
    replayed = next(h for h in stored.history if h.event == "replayed")
    assert replayed.detail | {"auditId": None} == {
        "by": OPERATOR, "replayCount": 1, "recipients": 1, "deadLetterReason": "MaxAttemptsExceeded", "auditId": None,
    }


def test_a_replayed_notification_gets_the_whole_retry_budget_again(ops):
    nid = ops.dead_lettered_email()
    ops.replay(nid)
    ops.email.failures = [ServiceUnavailable("still down", status_code=503) for _ in range(2)]

    outcome = ops.drive(nid)

    assert isinstance(outcome, Completed), "two failures after the replay are within a budget of three"
    assert ops.ledger.get(nid).attempts == 6
    assert sends(ops, nid) == 1


def test_a_replay_that_fails_again_is_dead_lettered_again_and_can_be_replayed_again(ops):
    nid = ops.dead_lettered_email()
    ops.replay(nid)
    ops.email.failures = [ServiceUnavailable("still down", status_code=503) for _ in range(3)]
    assert isinstance(ops.drive(nid), DeadLettered)
    [listed] = ops.listing()
    assert listed.replay_count == 1

    ops.replay(nid)
    ops.drive(nid)

    assert ops.ledger.get(nid).replay_count == 2
    assert sends(ops, nid) == 1
    assert len({m.message_id for m in ops.queue.sent}) == len(ops.queue.sent), "every queue message id is new"


def test_a_notification_already_sent_is_skipped_and_nothing_is_queued(ops):
    n, _ = ops.submit(email_command())
    ops.drive(n.id)
    leftover = ops.queue.add_dead_letter({"notificationId": n.id, "attempt": 1}, "MaxDeliveryCountExceeded", ops.clock.now())
    queued = len(ops.queue.sent)

    result = ops.replay(f"q-{leftover.sequence_number}")

    assert result.outcomes == [{"id": f"q-{leftover.sequence_number}", "notificationId": n.id, "outcome": "skipped",
                                "reason": "AlreadySent", "status": "sent"}]
    assert len(ops.queue.sent) == queued
    assert sends(ops, n.id) == 1


def test_a_recipient_who_opted_out_since_is_skipped_with_that_reason(ops):
    n, _ = ops.submit(sms_command("+14255551234"))
    ops.sms.failures = [ServiceUnavailable("down", status_code=503) for _ in range(3)]
    ops.drive(n.id)
    ops.suppressions.add(Suppression(channel=Channel.SMS, address="+14255551234", reason="OptedOut: replied STOP",
                                     created_at=ops.clock.now()))
    queued = len(ops.queue.sent)

    result = ops.replay(n.id)

    assert result.outcomes == [{"id": n.id, "notificationId": n.id, "outcome": "skipped", "reason": "RecipientsSuppressed",
                                "suppressions": ["OptedOut"]}]
    assert len(ops.queue.sent) == queued and ops.sms.sent == []
    stored = ops.ledger.get(n.id)
    assert stored.status is NotificationStatus.SUPPRESSED
    assert stored.recipients[0].reason == "OnSuppressionList: OptedOut: replied STOP"
    assert ops.listing() == []


def test_a_replay_that_sends_nothing_records_no_replay_only_the_suppressions(ops):
    n, _ = ops.submit(sms_command("+14255551234"))
    ops.sms.failures = [ServiceUnavailable("down", status_code=503) for _ in range(3)]
    ops.drive(n.id)
    ops.suppressions.add(Suppression(channel=Channel.SMS, address="+14255551234", reason="OptedOut: replied STOP",
                                     created_at=ops.clock.now()))

    result = ops.replay(n.id)

    assert result.counts() == {"skipped": 1}
    stored = ops.ledger.get(n.id)
    assert "replayed" not in [h.event for h in stored.history]
    assert stored.replay_count == 0
    events = [(e.status.value, e.notification_status) for e in ops.ledger.outbox.values() if e.notification_id == n.id]
    assert events == [("accepted", "accepted"), ("dead_lettered", "dead_lettered"), ("opted_out", "suppressed")]


def test_two_replays_that_read_the_same_dead_letter_record_one_replay_and_send_once(ops):
    nid = ops.dead_lettered_email()
    find = ops.suppressions.find
    inner = []

    def racing_find(channel, addresses):
        # Another operator's replay lands after this one read the dead letter, before it writes.
        ops.suppressions.find = find
        inner.append(ops.replay(nid))
        return find(channel, addresses)

    ops.suppressions.find = racing_find
    outer = ops.replay(nid)
    ops.drive(nid)

    assert inner[0].counts() == {"replayed": 1}
    assert outer.outcomes == [{"id": nid, "notificationId": nid, "outcome": "skipped", "reason": "AlreadyReplayed",
                               "status": "accepted"}]
    stored = ops.ledger.get(nid)
    assert [h.event for h in stored.history].count("replayed") == 1 and stored.replay_count == 1
    assert sum(1 for m in ops.queue.sent if "replay" in m.message_id) == 1
    assert sends(ops, nid) == 1


def test_a_suppressed_recipient_is_left_out_while_the_others_are_replayed(ops):
    nid = ops.dead_lettered_email("ann@example.com", "bob@example.com")
    ops.suppressions.add(Suppression(channel=Channel.EMAIL, address="bob@example.com", reason="Bounced: 550",
                                     created_at=ops.clock.now()))

    result = ops.replay(nid)
    ops.drive(nid)

    assert result.outcomes[0]["outcome"] == "replayed" and result.outcomes[0]["suppressedRecipients"] == 1
    [sent] = [e for e in ops.email.sent if e.operation_id == nid]
    assert [a.address for a in sent.to] == ["ann@example.com"]


def test_a_dry_run_changes_nothing_and_says_what_a_replay_would_do(ops):
    nid = ops.dead_lettered_email()
    before = (ops.ledger.get(nid), list(ops.queue.sent), dict(ops.queue.dead))

    result = ops.replay(dry_run=True)

    assert result.dry_run and result.counts() == {"wouldReplay": 1}
    assert (ops.ledger.get(nid), list(ops.queue.sent), dict(ops.queue.dead)) == before
    [entry] = ops.ledger.audit_entries()
    assert entry.dry_run and entry.finished and entry.outcomes[0]["outcome"] == "wouldReplay"


def test_replays_by_filter_take_only_what_matches(ops):
    rejected = ops.dead_lettered_email(error=RequestRejected("bad", status_code=400))
    down = ops.dead_lettered_email()

    result = ops.replay(reason="MaxAttemptsExceeded")

    assert [o["id"] for o in result.outcomes] == [down]
    assert [d.id for d in ops.listing()] == [rejected]


def test_unknown_ids_and_unreadable_queue_messages_are_skipped_with_a_reason(ops):
    junk = ops.queue.add_dead_letter({"raw": "{"}, "MalformedMessage", ops.clock.now())
    orphan = ops.queue.add_dead_letter({"notificationId": "gone", "attempt": 1}, "NotificationNotFound", ops.clock.now())

    result = ops.replay("nope", f"q-{junk.sequence_number}", f"q-{orphan.sequence_number}")

    assert [(o["id"], o["outcome"], o["reason"]) for o in result.outcomes] == [
        ("nope", "skipped", "NotFound"),
        (f"q-{junk.sequence_number}", "skipped", "NotADispatchMessage"),
        (f"q-{orphan.sequence_number}", "skipped", "NotificationNotFound"),
    ]
    assert len(ops.queue.dead) == 2


def test_an_email_whose_last_attempt_reached_acs_unseen_is_looked_up_not_sent_again(ops):
    n, _ = ops.submit(email_command())
    ops.email.failures = [ServiceUnavailable("down", status_code=503) for _ in range(2)]
    ops.email.lose_response = SendTimeout("read timed out")  # the third attempt reaches ACS, its answer is lost
    assert isinstance(ops.drive(n.id), DeadLettered)
    assert sends(ops, n.id) == 1
    lookups = len(ops.email.lookups)

    ops.replay(n.id)
    ops.drive(n.id)

    assert sends(ops, n.id) == 1
    assert ops.email.lookups[lookups:] == [n.id]
    assert ops.ledger.get(n.id).status is NotificationStatus.SENT


# ---------------------------------------------------------------------------- crashes in the middle of a replay


class Crash(BaseException):
    """The operator's process dies (not an error anyone handles)."""


def test_a_replay_that_dies_before_its_message_is_enqueued_is_finished_by_the_reconciliation(ops):
    nid = ops.dead_lettered_email()
    ops.publisher.fail_next = Crash()

    with pytest.raises(Crash):
        ops.replay(nid)
    assert ops.listing()[0].source == "queue", "only the queue copy is left to show it"
    ops.clock.advance(300)
    from shared.domain.commands import Reconcile

    handlers.reconcile(
        Reconcile(report_deadline=ops.clock.now(), requeue_before=ops.clock.now()),
        ledger=ops.ledger, publisher=ops.publisher, suppressions=ops.suppressions, clock=ops.clock,
    )
    ops.drive(nid)

    assert sends(ops, nid) == 1
    assert ops.ledger.get(nid).status is NotificationStatus.SENT


def test_a_request_sent_again_while_a_replay_is_interrupted_leaves_the_notification_to_be_sent_once(ops):
    n, _ = ops.submit(email_command(key="order-42"))
    ops.email.failures = [ServiceUnavailable("down", status_code=503) for _ in range(3)]
    ops.drive(n.id)
    ops.publisher.fail_next = Crash()
    with pytest.raises(Crash):
        ops.replay(n.id)

    again, created = ops.submit(email_command(key="order-42"))
    ops.drive(n.id)

    assert again.id == n.id and not created
    assert sends(ops, n.id) == 1
    assert ops.ledger.get(n.id).status is NotificationStatus.SENT


def test_a_replay_that_dies_before_removing_the_dead_letter_and_is_run_again_sends_once(ops):
    nid = ops.dead_lettered_email()
    remove = ops.queue.remove_dead_letter

    def die(sequence_number: int) -> bool:
        raise Crash()

    ops.queue.remove_dead_letter = die
    with pytest.raises(Crash):
        ops.replay(nid)
    ops.queue.remove_dead_letter = remove

    [leftover] = ops.listing()
    second = ops.replay(leftover.id)
    outcome = ops.drive(nid)

    # The notification is live again: the leftover copy is removed, no second replay is recorded,
    # and the next-attempt message it leaves behind is absorbed by the dispatcher.
    assert second.outcomes == [{"id": leftover.id, "notificationId": nid, "outcome": "requeued", "reason": "NotDeadLettered",
                                "status": "accepted", "queueCopiesRemoved": 1}]
    assert sum(1 for m in ops.queue.sent if "replay" in m.message_id) == 1
    assert isinstance(outcome, (Completed, Rescheduled))
    assert sends(ops, nid) == 1
    assert ops.listing() == []
    interrupted = [e for e in ops.ledger.audit_entries() if not e.finished]
    assert len(interrupted) == 1 and interrupted[0].actor == OPERATOR


# ---------------------------------------------------------------------------- purge and audit


def test_a_purged_dead_letter_ends_failed_and_leaves_both_lists(ops):
    nid = ops.dead_lettered_email()
    junk = ops.queue.add_dead_letter({"raw": "{"}, "MalformedMessage", ops.clock.now())

    result = ops.purge()

    assert sorted(o["id"] for o in result.outcomes) == sorted([nid, f"q-{junk.sequence_number}"])
    assert ops.listing() == [] and ops.queue.dead == {}
    stored = ops.ledger.get(nid)
    assert stored.status is NotificationStatus.FAILED
    assert stored.recipients[0].reason == "DeadLetterPurged"
    assert stored.history[-1].event == "purged" and stored.history[-1].detail["by"] == OPERATOR


def test_purging_a_leftover_queue_copy_of_a_live_notification_removes_only_the_copy(ops):
    alive, _ = ops.submit(email_command("live@example.com"))
    crash = ops.queue.add_dead_letter({"notificationId": alive.id, "attempt": 1}, "MaxDeliveryCountExceeded", ops.clock.now())
    dead = ops.dead_lettered_email("dead@example.com")

    result = ops.purge()  # by filter: both

    by_id = {o["id"]: o for o in result.outcomes}
    assert by_id[f"q-{crash.sequence_number}"] == {"id": f"q-{crash.sequence_number}", "notificationId": alive.id,
                                                  "outcome": "purged", "reason": "QueueCopyOnly", "status": "accepted"}
    assert by_id[dead] == {"id": dead, "notificationId": dead, "outcome": "purged"}
    assert ops.queue.dead == {} and ops.listing() == []
    live = ops.ledger.get(alive.id)
    assert live.status is NotificationStatus.ACCEPTED and "purged" not in [h.event for h in live.history]
    assert ops.ledger.get(dead).status is NotificationStatus.FAILED
    ops.drive(alive.id)
    assert ops.ledger.get(alive.id).status is NotificationStatus.SENT


def test_replaying_a_crash_looped_copy_of_a_live_notification_requeues_it_without_recording_a_replay(ops):
    # A message that crash-looped into the dead-letter queue leaves the ledger "queued" with
    # nothing queued: the replay is the operator's way to get it going again.
    alive, _ = ops.submit(email_command())
    crash = ops.queue.add_dead_letter({"notificationId": alive.id, "attempt": 1}, "MaxDeliveryCountExceeded", ops.clock.now())
    ops.queue.sent.clear()
    before = ops.ledger.get(alive.id)

    result = ops.replay(reason="MaxDeliveryCountExceeded")

    assert result.outcomes == [{"id": f"q-{crash.sequence_number}", "notificationId": alive.id, "outcome": "requeued",
                                "reason": "NotDeadLettered", "status": "accepted", "queueCopiesRemoved": 1}]
    after = ops.ledger.get(alive.id)
    assert (after.replay_count, [h.event for h in after.history]) == (before.replay_count, [h.event for h in before.history])
    [requeued] = ops.queue.sent
    assert requeued.body["attempt"] == before.attempts + 1 and requeued.message_id != f"{alive.id}:1" and ops.queue.dead == {}
    ops.drive(alive.id)
    assert ops.ledger.get(alive.id).status is NotificationStatus.SENT
    assert sends(ops, alive.id) == 1


def test_every_replay_is_audited_with_who_when_what_filter_and_each_outcome(ops):
    nid = ops.dead_lettered_email()
    ops.clock.advance(60)

    result = ops.replay(channel=Channel.EMAIL, limit=10)

    [entry] = ops.ledger.audit_entries()
    assert entry.id == result.audit_id
    assert (entry.actor, entry.action, entry.at, entry.finished) == (OPERATOR, "dead-letters.replay", ops.clock.now(), True)
    assert entry.filter == {"channel": "email", "limit": 10}
    assert entry.outcomes == result.outcomes == [
        {"id": nid, "notificationId": nid, "outcome": "replayed", "replayCount": 1, "suppressedRecipients": 0}
    ]
    assert ops.ledger.get(nid).history[-2].detail["auditId"] == entry.id
