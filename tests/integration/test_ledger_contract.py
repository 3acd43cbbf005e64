"""Contract tests for the ``Ledger`` port (``shared.service.ports.Ledger``).

Every test takes ``ledger`` and runs once per implementation: the in-memory ``FakeLedger`` that
the unit tests rely on, the embedded ``SqliteLedger``, and the ``TableLedger`` against Azurite
(skipped when Azurite is not installed). Each entry of ``LEDGERS`` must hand out a fresh, empty
store, because the window queries (``status_counts``, ``awaiting_reports``, ``unqueued``) count
everything the store holds: the Table one gets tables of its own.

Tests at the bottom are about one adapter only (the SQLite file shared between processes and
threads) and build it themselves.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest

from shared.adapters.sqlite_ledger import SqliteLedger
from shared.adapters.table_ledger import TableLedger
from shared.domain.errors import ConcurrencyConflict
from shared.domain.model import (
    AuditEntry,
    Channel,
    DeliveryReport,
    Notification,
    NotificationStatus,
    Recipient,
)
from shared.service.ports import Ledger
from tests import azurite
from tests.fakes import FakeLedger

# ---------------------------------------------------------------------------- implementations

def table_ledger(request: pytest.FixtureRequest) -> TableLedger:
    service, prefix = azurite.fresh_table_service(request)
    return TableLedger(service, prefix=prefix)


LEDGERS: dict[str, Callable[[pytest.FixtureRequest, Path], Ledger]] = {
    "fake": lambda request, tmp_path: FakeLedger(),
    "sqlite": lambda request, tmp_path: SqliteLedger(tmp_path / "ledger.sqlite3"),
    "table": lambda request, tmp_path: table_ledger(request),
}


@pytest.fixture(params=list(LEDGERS))
def ledger(request, tmp_path) -> Ledger:
    store = LEDGERS[request.param](request, tmp_path)
    yield store
    close = getattr(store, "close", None)
    if close is not None:
        close()


# ---------------------------------------------------------------------------- builders

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    """A fixed, timezone-aware UTC time, ``minutes`` after ``T0``."""
    return T0 + timedelta(minutes=minutes)


def key() -> str:
    """An idempotency key no other test uses, so a shared remote store cannot collide."""
    return f"key-{uuid.uuid4()}"


def email(
    *,
    created: datetime = T0,
    to: tuple[str, ...] = ("ann@example.com",),
    cc: tuple[str, ...] = ("carol@example.com",),
    idempotency_key: str | None = None,
    subject: str = "Your order has shipped",
) -> Notification:
    recipients = [Recipient(address=a, kind="to", display_name=a.split("@")[0].title()) for a in to]
    recipients += [Recipient(address=a, kind="cc") for a in cc]
    return Notification.accept(
        channel=Channel.EMAIL,
        sender="DoNotReply@notify.example.com",
        recipients=recipients,
        content={"subject": subject, "text": "It is on its way.", "html": "<p>It is on its way.</p>"},
        metadata={"orderId": "o-42", "tags": ["shipping", "eu"], "priority": 2},
        at=created,
        idempotency_key=idempotency_key,
        request_hash="0" * 64 if idempotency_key else None,
    )


def sms(
    *,
    created: datetime = T0,
    to: tuple[str, ...] = ("+15550000001", "+15550000002"),
    idempotency_key: str | None = None,
) -> Notification:
    return Notification.accept(
        channel=Channel.SMS,
        sender="+15559999999",
        recipients=[Recipient(address=number) for number in to],
        content={"message": "Your code is 123456"},
        metadata={"purpose": "otp"},
        at=created,
        idempotency_key=idempotency_key,
    )


def sent(notification: Notification, when: datetime, prefix: str | None = None) -> Notification:
    """Record a successful ACS send: email gets one message id for every recipient, SMS one per
    recipient."""
    prefix = prefix or notification.id
    if notification.channel is Channel.EMAIL:
        notification.record_all_sent(when, f"{prefix}-email")
    else:
        for i, recipient in enumerate(notification.recipients):
            notification.record_sent(when, recipient.address, f"{prefix}-sms-{i}")
    return notification


def report(
    message_id: str, *, event_id: str | None = None, status: str = "Delivered", channel: Channel = Channel.EMAIL
) -> DeliveryReport:
    return DeliveryReport(
        event_id=event_id or f"evt-{uuid.uuid4()}",
        channel=channel,
        message_id=message_id,
        recipient="ann@example.com",
        status=status,
        detail="250 OK",
        occurred_at=at(5),
    )


def ids(notifications: list[Notification]) -> set[str]:
    return {n.id for n in notifications}


# ---------------------------------------------------------------------------- add and get


@pytest.mark.parametrize("build", [email, sms], ids=["email", "sms"])
def test_an_added_notification_reads_back_equal_with_version_one(ledger, build):
    original = build(idempotency_key=key())

    returned = ledger.add(original)
    stored = ledger.get(original.id)

    assert returned.id == original.id
    assert returned.version == 1
    assert stored is not None
    assert stored.version == 1
    assert stored.recipients == original.recipients
    assert stored.content == original.content
    assert stored.metadata == original.metadata
    assert stored.history == original.history
    assert stored.status is NotificationStatus.ACCEPTED
    assert stored.created_at == original.created_at and stored.created_at.tzinfo is not None
    assert stored == original


def test_the_trace_a_notification_was_accepted_in_survives_the_ledger(ledger):
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    original = email().model_copy(update={"trace_context": traceparent})

    ledger.add(original)
    stored = ledger.get(original.id)
    ledger.save(stored)

    assert ledger.get(original.id).trace_context == traceparent


def test_getting_an_unknown_id_returns_none(ledger):
    ledger.add(email())
    assert ledger.get(str(uuid.uuid4())) is None


def test_changing_a_read_copy_changes_nothing_until_it_is_saved(ledger):
    original = ledger.add(email())
    original.mark_queued(at(1))
    copy = ledger.get(original.id)
    copy.metadata["changed"] = True

    stored = ledger.get(original.id)

    assert stored.queued_at is None
    assert "changed" not in stored.metadata
    assert [h.event for h in stored.history] == ["accepted"]


# ---------------------------------------------------------------------------- idempotency


def test_adding_with_a_taken_idempotency_key_stores_nothing_and_returns_the_holder(ledger):
    shared_key = key()
    first = ledger.add(email(idempotency_key=shared_key, subject="first"))
    second = email(idempotency_key=shared_key, subject="second")

    returned = ledger.add(second)

    assert returned.id == first.id
    assert returned.content["subject"] == "first"
    assert returned.version == 1
    assert ledger.get(second.id) is None
    assert ledger.get(first.id).content["subject"] == "first"
    assert sum(ledger.status_counts(start=at(-1), end=at(1)).values()) == 1


def test_the_holder_of_a_key_is_returned_in_its_current_saved_state(ledger):
    shared_key = key()
    first = ledger.add(email(idempotency_key=shared_key))
    first.mark_queued(at(1))
    ledger.save(first)

    returned = ledger.add(email(idempotency_key=shared_key))

    assert returned.id == first.id
    assert returned.version == 2
    assert returned.queued_at == at(1)


def test_different_idempotency_keys_are_independent(ledger):
    a = ledger.add(email(idempotency_key=key()))
    b = ledger.add(email(idempotency_key=key()))

    assert a.id != b.id
    assert ledger.get(a.id) is not None
    assert ledger.get(b.id) is not None


def test_notifications_without_an_idempotency_key_never_collide(ledger):
    added = [ledger.add(sms()) for _ in range(3)]

    assert len(ids(added)) == 3
    assert all(ledger.get(n.id) == n for n in added)


# ---------------------------------------------------------------------------- optimistic writes


def test_a_save_stores_the_changes_and_bumps_the_version(ledger):
    notification = ledger.add(email())
    notification.mark_queued(at(1))

    ledger.save(notification)

    assert notification.version == 2
    stored = ledger.get(notification.id)
    assert stored.version == 2
    assert stored.queued_at == at(1)
    assert stored == notification

    stored.start_attempt(at(2), lease_until=at(3))
    ledger.save(stored)
    assert stored.version == 3
    assert ledger.get(notification.id).attempts == 1


def test_a_stale_write_is_refused_with_a_concurrency_conflict(ledger):
    notification = ledger.add(email())
    first_reader = ledger.get(notification.id)
    second_reader = ledger.get(notification.id)
    first_reader.mark_queued(at(1))
    second_reader.start_attempt(at(2), lease_until=at(3))

    ledger.save(first_reader)
    with pytest.raises(ConcurrencyConflict):
        ledger.save(second_reader)

    stored = ledger.get(notification.id)
    assert stored == first_reader
    assert stored.version == 2
    assert stored.attempts == 0
    assert second_reader.version == 1, "a refused save must not bump the caller's version"


def test_a_notification_the_ledger_never_stored_cannot_be_saved(ledger):
    with pytest.raises(ConcurrencyConflict):
        ledger.save(email())
    assert ledger.save_many([sms()]) != []


def test_save_many_saves_the_fresh_ones_and_returns_only_the_stale_ones(ledger):
    fresh_a, stale, fresh_b = (ledger.add(email()) for _ in range(3))
    winner = ledger.get(stale.id)
    winner.mark_queued(at(1))
    ledger.save(winner)
    for n in (fresh_a, stale, fresh_b):
        n.start_attempt(at(2), lease_until=at(3))

    lost = ledger.save_many([fresh_a, stale, fresh_b])

    assert [n.id for n in lost] == [stale.id]
    assert lost[0] is stale
    assert fresh_a.version == fresh_b.version == 2
    assert stale.version == 1
    assert ledger.get(fresh_a.id).attempts == ledger.get(fresh_b.id).attempts == 1
    assert ledger.get(stale.id) == winner


def test_save_many_of_nothing_returns_nothing(ledger):
    assert ledger.save_many([]) == []


def test_marking_queued_stores_the_mark_as_saving_it_would_and_leaves_the_copies_current(ledger):
    email_n, sms_n = ledger.add(email(idempotency_key=key())), ledger.add(sms())
    expected = []
    for n in (email_n, sms_n):
        reference = ledger.get(n.id)
        reference.mark_queued(at(1))
        expected.append(reference.model_copy(update={"version": 2}))

    lost = ledger.mark_queued([email_n, sms_n], at(1))

    assert lost == []
    assert [ledger.get(email_n.id), ledger.get(sms_n.id)] == expected == [email_n, sms_n]
    assert [h.event for h in ledger.get(email_n.id).history] == ["accepted", "queued"]
    assert ledger.get(sms_n.id).queued_at == ledger.get(sms_n.id).updated_at == at(1)
    assert ledger.unqueued(accepted_before=at(5), limit=10) == []
    # The mark is no status change: the outbox holds the two "accepted" events only.
    assert sorted(e.status.value for e in ledger.pending_status_events(limit=10)) == ["accepted", "accepted"]
    # The copies in hand carry the new version: the next change saves without a conflict.
    email_n.start_attempt(at(2), lease_until=at(3))
    ledger.save(email_n)
    assert ledger.get(email_n.id).attempts == 1 and ledger.get(email_n.id).queued_at == at(1)


def test_marking_queued_leaves_a_notification_another_writer_saved_since_and_returns_it(ledger):
    fresh, stale = ledger.add(email()), ledger.add(email())
    dispatcher = ledger.get(stale.id)
    dispatcher.start_attempt(at(1), lease_until=at(2))
    ledger.save(dispatcher)

    lost = ledger.mark_queued([fresh, stale], at(1))

    assert [n.id for n in lost] == [stale.id]
    assert ledger.get(stale.id) == dispatcher and ledger.get(stale.id).queued_at is None
    assert ledger.get(fresh.id).queued_at == at(1)
    assert ids(ledger.unqueued(accepted_before=at(5), limit=10)) == {stale.id}


def test_marking_nothing_queued_returns_nothing(ledger):
    assert ledger.mark_queued([], at(1)) == []


# ---------------------------------------------------------------------------- message ids


def test_an_email_is_found_by_the_one_message_id_all_its_recipients_share(ledger):
    notification = ledger.add(email(to=("ann@example.com", "bob@example.com")))
    sent(notification, at(1), prefix="acs-1")
    ledger.save(notification)

    found = ledger.find_by_message_ids(["acs-1-email"])

    assert list(found) == ["acs-1-email"]
    assert found["acs-1-email"] == notification
    assert found["acs-1-email"].version == 2


def test_an_sms_is_found_by_each_of_its_recipients_message_ids(ledger):
    notification = ledger.add(sms(to=("+15550000001", "+15550000002", "+15550000003")))
    sent(notification, at(1), prefix="acs-2")
    ledger.save(notification)
    message_ids = [r.message_id for r in notification.recipients]

    found = ledger.find_by_message_ids(message_ids)

    assert set(found) == set(message_ids)
    assert all(n.id == notification.id for n in found.values())
    # One copy for all of them: a batch's reports for several recipients all change what is saved.
    assert len({id(n) for n in found.values()}) == 1
    assert ledger.find_by_message_ids([message_ids[1]])[message_ids[1]].id == notification.id


def test_message_ids_of_several_notifications_map_to_their_owners(ledger):
    first = sent(ledger.add(email()), at(1), prefix="one")
    second = sent(ledger.add(sms(to=("+15550000001",))), at(1), prefix="two")
    ledger.save_many([first, second])

    found = ledger.find_by_message_ids(iter(["one-email", "two-sms-0", "nobody"]))

    assert {mid: n.id for mid, n in found.items()} == {"one-email": first.id, "two-sms-0": second.id}


def test_unknown_message_ids_find_nothing(ledger):
    ledger.save(sent(ledger.add(email()), at(1), prefix="known"))

    assert ledger.find_by_message_ids(["unknown-1", "unknown-2"]) == {}
    assert ledger.find_by_message_ids([]) == {}


def test_message_ids_are_not_found_before_a_save_records_them(ledger):
    notification = ledger.add(email())
    sent(notification, at(1), prefix="unsaved")

    assert ledger.find_by_message_ids(["unsaved-email"]) == {}


def test_more_than_a_thousand_message_ids_are_found_in_one_call(ledger):
    notifications = [ledger.add(sms(to=("+15550000001", "+15550000002"))) for _ in range(600)]
    for i, n in enumerate(notifications):
        sent(n, at(1), prefix=f"bulk-{i}")
    assert ledger.save_many(notifications) == []
    wanted = [r.message_id for n in notifications for r in n.recipients]
    assert len(wanted) == 1200

    found = ledger.find_by_message_ids(wanted + [f"missing-{i}" for i in range(300)])

    assert len(found) == 1200
    assert all(found[f"bulk-{i}-sms-{j}"].id == n.id for i, n in enumerate(notifications) for j in (0, 1))


# ---------------------------------------------------------------------------- parked reports


def test_parked_reports_stay_until_discarded_and_are_found_by_message_id(ledger):
    early = [report("m-1", event_id="e-1"), report("m-1", event_id="e-2", status="Bounced")]
    other = report("m-2", event_id="e-3")
    ledger.park_reports(early + [other], at(0))

    assert ledger.parked_reports_for(["m-1"]) == early
    assert ledger.parked_reports_for(["m-1"]) == early  # reading removes nothing
    ledger.discard_parked_reports(["e-1", "e-2"])
    assert ledger.parked_reports_for(["m-1"]) == []
    assert ledger.parked_reports_for(iter(["m-2", "m-unknown"])) == [other]
    assert ledger.parked_reports_for([]) == []


def test_parking_the_same_event_twice_keeps_one(ledger):
    ledger.park_reports([report("m-1", event_id="e-1")], at(0))
    ledger.park_reports([report("m-1", event_id="e-1"), report("m-1", event_id="e-1")], at(1))

    assert [r.event_id for r in ledger.parked_reports_for(["m-1"])] == ["e-1"]


def test_only_parked_reports_for_message_ids_the_ledger_owns_are_claimable_oldest_first(ledger):
    mine = ledger.add(email())
    ledger.save(sent(mine, at(1), prefix="mine"))
    # Reports for other senders' messages on the same ACS resource, parked earlier and in bulk,
    # must not crowd out the ones the ledger can now apply.
    ledger.park_reports([report(f"foreign-{i}", event_id=f"f-{i}") for i in range(5)], at(0))
    ledger.park_reports([report("mine-email", event_id="e-2")], at(3))
    ledger.park_reports([report("mine-email", event_id="e-1")], at(2))

    assert [r.event_id for r in ledger.claimable_parked_reports(limit=1)] == ["e-1"]
    assert [r.event_id for r in ledger.claimable_parked_reports(limit=10)] == ["e-1", "e-2"]


def test_unclaimed_parked_reports_expire(ledger):
    ledger.park_reports([report("m-old", event_id="e-old")], at(0))
    ledger.park_reports([report("m-new", event_id="e-new")], at(60))

    assert ledger.expire_parked_reports(at(30)) == 1
    assert ledger.parked_reports_for(["m-old", "m-new"]) == [report("m-new", event_id="e-new")]


# ---------------------------------------------------------------------------- status counts


def test_status_counts_count_by_channel_and_status_only_inside_the_half_open_window(ledger):
    start, end = at(0), at(60)
    ledger.add(email(created=at(-0.001)))  # just before the window
    ledger.add(email(created=start))  # on the start boundary: counted
    ledger.add(email(created=at(30)))
    ledger.save(sent(ledger.add(email(created=at(31))), at(32)))
    ledger.save(sent(ledger.add(sms(created=at(59.999))), at(60)))  # just inside the end
    ledger.add(sms(created=end))  # on the end boundary: not counted
    delivered = sent(ledger.add(sms(created=at(10), to=("+15550000001",))), at(11))
    ledger.save(delivered)
    delivered.apply_report(report(delivered.recipients[0].message_id, channel=Channel.SMS), at(12))
    ledger.save(delivered)

    counts = ledger.status_counts(start=start, end=end)

    assert counts == {
        (Channel.EMAIL, NotificationStatus.ACCEPTED, False): 2,
        (Channel.EMAIL, NotificationStatus.SENT, True): 1,
        (Channel.SMS, NotificationStatus.SENT, True): 1,
        (Channel.SMS, NotificationStatus.DELIVERED, True): 1,
    }


def test_status_counts_filter_by_channel(ledger):
    ledger.add(email(created=at(1)))
    ledger.add(sms(created=at(2)))
    ledger.add(sms(created=at(3)))

    assert ledger.status_counts(start=at(0), end=at(10), channel=Channel.SMS) == {
        (Channel.SMS, NotificationStatus.ACCEPTED, False): 2
    }
    assert ledger.status_counts(start=at(0), end=at(10), channel=Channel.EMAIL) == {
        (Channel.EMAIL, NotificationStatus.ACCEPTED, False): 1
    }


def test_status_counts_of_an_empty_window_are_empty(ledger):
    ledger.add(email(created=at(1)))
    assert ledger.status_counts(start=at(10), end=at(20)) == {}


def test_status_counts_follow_a_dead_letter(ledger):
    notification = ledger.add(email(created=at(1)))
    notification.mark_dead_lettered(at(2), "ConfigurationError", "fix the key")
    ledger.save(notification)

    assert ledger.status_counts(start=at(0), end=at(10)) == {(Channel.EMAIL, NotificationStatus.DEAD_LETTERED, False): 1}


# ---------------------------------------------------------------------------- reconciliation queries


def test_awaiting_reports_returns_notifications_with_a_recipient_still_sent_at_or_before_the_cutoff(ledger):
    cutoff = at(30)
    sent_early = ledger.add(email(created=at(0)))
    ledger.save(sent(sent_early, at(10)))
    sent_on_cutoff = ledger.add(sms(created=at(0)))
    ledger.save(sent(sent_on_cutoff, cutoff))
    sent_late = ledger.add(email(created=at(0)))
    ledger.save(sent(sent_late, at(31)))
    never_sent = ledger.add(email(created=at(0)))
    delivered = sent(ledger.add(email(created=at(0), cc=())), at(5))
    ledger.save(delivered)
    delivered.apply_report(report(delivered.recipients[0].message_id), at(6))
    ledger.save(delivered)
    half_delivered = sent(ledger.add(sms(created=at(0))), at(5))
    ledger.save(half_delivered)
    half_delivered.apply_report(report(half_delivered.recipients[0].message_id, channel=Channel.SMS), at(6))
    ledger.save(half_delivered)
    unconfirmed = sent(ledger.add(email(created=at(0))), at(5))
    unconfirmed.mark_unconfirmed(at(20), sent_before=at(10))
    ledger.save(unconfirmed)

    awaiting = ledger.awaiting_reports(sent_before=cutoff, limit=100)

    assert ids(awaiting) == {sent_early.id, sent_on_cutoff.id, half_delivered.id}
    assert never_sent.id not in ids(awaiting)
    by_id = {n.id: n for n in awaiting}
    assert by_id[sent_early.id] == sent_early
    assert by_id[half_delivered.id].version == 3


def test_awaiting_reports_respects_the_limit(ledger):
    for minute in range(5):
        ledger.save(sent(ledger.add(email()), at(minute)))

    awaiting = ledger.awaiting_reports(sent_before=at(10), limit=3)

    assert len(awaiting) == 3
    assert len(ids(awaiting)) == 3


def test_unqueued_returns_notifications_never_marked_queued_created_at_or_before_the_cutoff(ledger):
    cutoff = at(10)
    early = ledger.add(email(created=at(0)))
    on_cutoff = ledger.add(sms(created=cutoff))
    late = ledger.add(email(created=at(11)))
    queued = ledger.add(email(created=at(0)))
    queued.mark_queued(at(0.5))
    ledger.save(queued)
    dispatched_but_never_queued = sent(ledger.add(sms(created=at(1))), at(2))
    ledger.save(dispatched_but_never_queued)

    found = ledger.unqueued(accepted_before=cutoff, limit=100)

    assert ids(found) == {early.id, on_cutoff.id, dispatched_but_never_queued.id}
    assert late.id not in ids(found) and queued.id not in ids(found)
    assert {n.id: n for n in found}[early.id] == early


def test_unqueued_respects_the_limit(ledger):
    for minute in range(5):
        ledger.add(email(created=at(minute)))

    found = ledger.unqueued(accepted_before=at(10), limit=2)

    assert len(found) == 2
    assert len(ids(found)) == 2


# ---------------------------------------------------------------------------- the SQLite file


def test_the_sqlite_ledger_persists_across_instances_on_the_same_file(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    writer = SqliteLedger(path)
    notification = sent(writer.add(email(idempotency_key="persisted")), at(1), prefix="p")
    writer.save(notification)
    writer.park_reports([report("early", event_id="e-1")], at(0))
    writer.close()

    reader = SqliteLedger(path)
    try:
        assert reader.get(notification.id) == notification
        assert reader.find_by_message_ids(["p-email"])["p-email"].id == notification.id
        assert reader.add(email(idempotency_key="persisted")).id == notification.id
        assert [r.event_id for r in reader.parked_reports_for(["early"])] == ["e-1"]
    finally:
        reader.close()


def test_two_sqlite_instances_on_one_file_see_each_others_writes_and_races(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    first, second = SqliteLedger(path), SqliteLedger(path)
    try:
        notification = first.add(email())
        other_copy = second.get(notification.id)
        assert other_copy == notification

        notification.mark_queued(at(1))
        first.save(notification)
        other_copy.start_attempt(at(2), lease_until=at(3))
        with pytest.raises(ConcurrencyConflict):
            second.save(other_copy)
        assert second.get(notification.id).queued_at == at(1)
    finally:
        first.close()
        second.close()


def test_the_sqlite_ledger_is_usable_from_several_threads_at_once(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    threads, per_thread = 4, 50
    start = threading.Barrier(threads)
    added: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                notification = ledger.add(email(created=at(n), idempotency_key=f"t{slot}-{n}"))
                added[slot].append(notification.id)
                if n % 10 == 0:
                    notification.mark_queued(at(n))
                    ledger.save(notification)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    try:
        assert errors == []
        all_ids = [nid for slot in added for nid in slot]
        assert len(set(all_ids)) == threads * per_thread
        assert all(ledger.get(nid) is not None for nid in all_ids)
        assert sum(ledger.status_counts(start=at(0), end=at(per_thread)).values()) == threads * per_thread
        assert len(ledger.unqueued(accepted_before=at(per_thread), limit=1000)) == threads * (per_thread - 5)
    finally:
        ledger.close()


# ----------------------------------------------------------------------------------- purge


def test_purge_deletes_only_notifications_accepted_before_the_cutoff_oldest_first(ledger):
    old = [ledger.add(email(created=at(-60 * 24 * i))) for i in (3, 2)]
    recent = ledger.add(email(created=at(0)))

    assert ledger.purge(accepted_before=at(-60), limit=1) == 1
    assert ledger.get(old[0].id) is None and ledger.get(old[1].id) is not None
    assert ledger.purge(accepted_before=at(-60), limit=10) == 1
    assert ledger.get(recent.id) is not None
    assert ledger.purge(accepted_before=at(-60), limit=10) == 0


def test_a_purged_notification_is_no_longer_found_by_its_message_ids(ledger):
    old = ledger.add(email(created=at(-600)))
    ledger.save(sent(old, at(-599)))

    ledger.purge(accepted_before=at(0), limit=10)

    assert ledger.find_by_message_ids([f"{old.id}-email"]) == {}


# ---------------------------------------------------------------------------- add_many


def test_add_many_adds_in_order_and_a_key_used_twice_returns_the_first_holder(ledger):
    shared_key = key()
    first, repeat, other = email(idempotency_key=shared_key), email(idempotency_key=shared_key), sms()

    stored = ledger.add_many([first, repeat, other])

    assert [n.id for n in stored] == [first.id, first.id, other.id]
    assert all(n.version == 1 for n in stored)
    assert ledger.get(first.id) is not None and ledger.get(repeat.id) is None and ledger.get(other.id) is not None


# ---------------------------------------------------------------------------- dead letters


def dead(notification: Notification, when: datetime, reason: str = "MaxAttemptsExceeded") -> Notification:
    notification.mark_dead_lettered(when, reason, f"{reason}: last error HTTP 500")
    return notification


def test_dead_lettered_notifications_are_listed_newest_first(ledger):
    older, newer, alive = ledger.add(email()), ledger.add(sms()), ledger.add(email())
    ledger.save_many([dead(older, at(1)), dead(newer, at(2))])

    listed = ledger.dead_lettered()

    assert [n.id for n in listed] == [newer.id, older.id]
    assert alive.id not in ids(listed)
    assert listed[0].dead_letter.reason == "MaxAttemptsExceeded"
    assert listed[0] == newer


def test_the_dead_letter_listing_filters_by_channel_reason_and_time_and_stops_at_the_limit(ledger):
    first = ledger.add(email())
    second = ledger.add(sms())
    third = ledger.add(email())
    fourth = ledger.add(email())
    ledger.save_many([
        dead(first, at(1)),
        dead(second, at(2)),
        dead(third, at(3), reason="SenderNotAllowed"),
        dead(fourth, at(4)),
    ])

    assert ids(ledger.dead_lettered(channel=Channel.SMS)) == {second.id}
    assert ids(ledger.dead_lettered(reason="SenderNotAllowed")) == {third.id}
    assert [n.id for n in ledger.dead_lettered(channel=Channel.EMAIL, reason="MaxAttemptsExceeded")] == [fourth.id, first.id]
    assert [n.id for n in ledger.dead_lettered(since=at(2))] == [fourth.id, third.id, second.id]
    assert [n.id for n in ledger.dead_lettered(limit=2)] == [fourth.id, third.id]
    assert ledger.dead_lettered(since=at(5)) == []


def test_a_replayed_notification_leaves_the_dead_letter_listing_and_a_second_dead_letter_brings_it_back(ledger):
    notification = ledger.add(email())
    ledger.save(dead(notification, at(1)))
    assert ids(ledger.dead_lettered()) == {notification.id}

    notification.record_replay(at(2), "cli:ops", 1)
    ledger.save(notification)
    assert ledger.dead_lettered() == []

    ledger.save(dead(notification, at(3), reason="RequestRejected"))
    listed = ledger.dead_lettered()
    assert [n.id for n in listed] == [notification.id]
    assert listed[0].dead_letter.reason == "RequestRejected"
    assert ledger.dead_lettered(since=at(2), reason="MaxAttemptsExceeded") == []


def test_a_dead_letter_whose_save_lost_a_race_is_not_listed(ledger):
    notification = ledger.add(email())
    loser, winner = ledger.get(notification.id), ledger.get(notification.id)
    winner.mark_queued(at(1))
    ledger.save(winner)

    with pytest.raises(ConcurrencyConflict):
        ledger.save(dead(loser, at(2)))

    assert ledger.dead_lettered() == []
    assert ledger.dead_lettered(since=at(2)) == []


def test_a_purged_dead_letter_is_no_longer_listed(ledger):
    notification = ledger.add(email())
    ledger.save(dead(notification, at(1)))

    notification.record_purged(at(2), "cli:ops")
    ledger.save(notification)

    assert ledger.dead_lettered() == []
    assert ledger.get(notification.id).status is NotificationStatus.FAILED


# ---------------------------------------------------------------------------- audit


def audit_entry(when: datetime, action: str = "replay", **fields) -> AuditEntry:
    return AuditEntry(id=f"audit-{uuid.uuid4()}", at=when, actor="cli:ops", action=action, **fields)


def test_audit_entries_read_back_newest_first_with_their_outcomes(ledger):
    first = audit_entry(at(1), filter={"channel": "email"}, outcomes=[{"id": "n-1", "outcome": "replayed"}])
    second = audit_entry(at(2), action="purge", outcomes=[{"id": "q-7", "outcome": "purged"}])
    ledger.record_audit(first)
    ledger.record_audit(second)

    entries = ledger.audit_entries()

    assert entries == [second, first]
    assert ledger.audit_entries(since=at(2)) == [second]
    assert ledger.audit_entries(limit=1) == [second]


def test_recording_an_audit_entry_again_replaces_it(ledger):
    entry = audit_entry(at(1), finished=False, outcomes=[{"id": "n-1", "outcome": "replayed"}])
    ledger.record_audit(entry)

    finished = entry.model_copy(update={"finished": True, "outcomes": entry.outcomes + [{"id": "n-2", "outcome": "skipped"}]})
    ledger.record_audit(finished)

    assert ledger.audit_entries() == [finished]


def test_an_audit_entry_for_a_large_replay_fits(ledger):
    outcomes = [{"id": str(uuid.uuid4()), "notificationId": str(uuid.uuid4()), "outcome": "replayed"} for _ in range(3000)]
    entry = audit_entry(at(1), outcomes=outcomes)

    ledger.record_audit(entry)

    assert ledger.audit_entries()[0].outcomes == outcomes


def test_a_sqlite_ledger_from_before_the_dead_letter_listing_lists_its_dead_letters_after_the_upgrade(tmp_path):
    import sqlite3

    path = tmp_path / "ledger.sqlite3"
    old = SqliteLedger(path)
    notification = old.add(email())
    old.save(dead(notification, at(1)))
    old.close()
    with sqlite3.connect(path) as db:  # the schema as it was before the columns existed
        db.execute("DROP INDEX notifications_dead")
        db.execute("ALTER TABLE notifications DROP COLUMN dead_lettered_at")
        db.execute("ALTER TABLE notifications DROP COLUMN dead_letter_reason")

    upgraded = SqliteLedger(path)

    assert [n.id for n in upgraded.dead_lettered(reason="MaxAttemptsExceeded", since=at(1))] == [notification.id]
    upgraded.close()
