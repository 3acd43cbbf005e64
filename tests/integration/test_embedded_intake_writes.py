"""The intake's three writes on the local stack's own stores (the SQLite ledger and the embedded
queue): ledger entries, then queue messages, then the "queued" marks, which the SQLite ledger
writes into the stored documents without rewriting them. What a crash between the writes leaves
behind, and a dispatcher that gets in between, must still end with every notification queued once
and marked queued once."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.adapters.embedded_queue import EmbeddedQueue
from shared.adapters.sqlite_ledger import SqliteLedger
from shared.domain.commands import Reconcile
from shared.service import handlers
from tests.fakes import FakeAttachmentStore, FakeClock, FakeSuppressionList
from tests.unit.builders import email_command, sms_command


class KilledBeforeTheMarks(SqliteLedger):
    """A process that dies once the queue has the messages, before the marks are written."""

    def mark_queued(self, notifications, at):
        raise SystemExit("killed")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def queue(tmp_path, clock):
    queue = EmbeddedQueue(
        tmp_path / "queue.sqlite3", "notifications", duplicate_detection_window=timedelta(minutes=10), clock=clock
    )
    yield queue
    queue.close()


def submit(cmds, ledger, queue, clock):
    return handlers.submit_notifications(
        cmds, ledger=ledger, publisher=queue, attachments=FakeAttachmentStore(), clock=clock
    )


def reconcile(ledger, queue, clock):
    now = clock.now()
    return handlers.reconcile(
        Reconcile(report_deadline=now - timedelta(hours=1), requeue_before=now),
        ledger=ledger, publisher=queue, suppressions=FakeSuppressionList(), clock=clock,
    )


def queued_ids(queue) -> list[str]:
    return sorted(m["message_id"].split(":")[0] for m in queue.peek())


def test_a_batch_is_marked_queued_in_the_ledger_with_one_message_each(tmp_path, queue, clock):
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")

    outcomes = submit([email_command("a@example.com"), sms_command("+14255551234")], ledger, queue, clock)

    for returned, created in outcomes:
        stored = ledger.get(returned.id)
        assert created and stored == returned  # the copy the caller gets is the stored one
        assert stored.queued_at == clock.now() and [h.event for h in stored.history] == ["accepted", "queued"]
    assert queued_ids(queue) == sorted(n.id for n, _ in outcomes)
    assert ledger.unqueued(accepted_before=clock.now(), limit=10) == []


def test_a_crash_between_the_queue_and_the_marks_is_put_right_by_the_reconciliation_without_a_second_message(
    tmp_path, queue, clock
):
    path = tmp_path / "ledger.sqlite3"
    with pytest.raises(SystemExit):
        submit([email_command(f"user{i}@example.com") for i in range(3)], KilledBeforeTheMarks(path), queue, clock)

    # After the restart: every entry is in the ledger and its message on the queue, none marked.
    ledger = SqliteLedger(path)
    unmarked = ledger.unqueued(accepted_before=clock.now(), limit=10)
    assert len(unmarked) == 3 and queued_ids(queue) == sorted(n.id for n in unmarked)

    clock.advance(120)
    assert reconcile(ledger, queue, clock).requeued == 3

    assert ledger.unqueued(accepted_before=clock.now(), limit=10) == []
    for n in unmarked:
        assert [h.event for h in ledger.get(n.id).history] == ["accepted", "queued"]
    # The reconciliation's messages repeat the first ones' ids: the queue keeps one per notification.
    assert queued_ids(queue) == sorted(n.id for n in unmarked)


def test_a_dispatcher_that_writes_before_the_mark_keeps_its_change_and_the_notification_is_marked_queued(
    tmp_path, queue, clock
):
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")

    class DispatcherTakesTheFirstMessage:
        def send_many(self, messages):
            queue.send_many(messages)
            taken = ledger.get(messages[0].body["notificationId"])
            taken.start_attempt(clock.now(), lease_until=clock.now() + timedelta(seconds=90))
            ledger.save(taken)

    outcomes = handlers.submit_notifications(
        [email_command("a@example.com"), email_command("b@example.com")],
        ledger=ledger, publisher=DispatcherTakesTheFirstMessage(), attachments=FakeAttachmentStore(), clock=clock,
    )

    (raced, _), (plain, _) = outcomes
    stored = ledger.get(raced.id)
    assert stored.attempts == 1 and stored.queued_at is not None
    assert [h.event for h in stored.history] == ["accepted", "send_attempt", "queued"]
    assert stored == raced and ledger.get(plain.id) == plain
    assert ledger.unqueued(accepted_before=clock.now(), limit=10) == []
