"""Contract tests for the status event outbox of the ``Ledger`` port: events are stored by the
write that stores their change, read back in order until published, and never lost or revived.

They run over every ledger of ``test_ledger_contract.LEDGERS`` (the fake, SQLite, and Table
Storage on Azurite).
"""

from __future__ import annotations

import pytest

from shared.domain.errors import ConcurrencyConflict
from shared.domain.model import StatusEventType
from tests.integration.test_ledger_contract import at, email, key, ledger, report, sent, sms  # noqa: F401  (fixture)


def statuses(events) -> list[tuple[str, int, str]]:
    return [(e.notification_id, e.sequence, e.status.value) for e in events]


def test_an_added_notification_has_its_accepted_event_in_the_outbox(ledger):
    n = email()

    ledger.add(n)

    [event] = ledger.pending_status_events(limit=10)
    assert (event.notification_id, event.sequence, event.status) == (n.id, 1, StatusEventType.ACCEPTED)
    assert event.at == at(0) and event.recipient is None


def test_events_read_back_exactly_as_they_were_derived(ledger):
    n = email()
    n.correlation_id = "order-42"
    n.caller_properties = {"tenant": "contoso", "locale": "fr-CA"}
    sent(n, at(1))
    derived = [e.model_copy(deep=True) for e in n.pending_status_events]

    ledger.add(n)

    assert ledger.pending_status_events(limit=10) == derived
    assert derived[-1].correlation_id == "order-42" and derived[-1].recipient == "c***@example.com"


def test_events_of_later_saves_follow_in_sequence_order(ledger):
    n = ledger.add(sms())
    n = ledger.get(n.id)
    ledger.save(sent(n, at(1)))
    n = ledger.get(n.id)
    n.apply_report(report(f"{n.id}-sms-0", channel=n.channel), at(2))
    ledger.save(n)

    assert statuses(ledger.pending_status_events(limit=10)) == [
        (n.id, 1, "accepted"), (n.id, 2, "sent"), (n.id, 3, "sent"), (n.id, 4, "delivered"),
    ]


def test_published_events_leave_the_outbox_and_later_writes_add_only_new_ones(ledger):
    n = ledger.add(email())
    ledger.mark_status_events_published(ledger.pending_status_events(limit=10))
    assert ledger.pending_status_events(limit=10) == []

    fresh = ledger.get(n.id)
    ledger.save(sent(fresh, at(1)))
    fresh = ledger.get(fresh.id)
    fresh.mark_queued(at(2))  # no status change: no event
    ledger.save(fresh)

    assert [e.status.value for e in ledger.pending_status_events(limit=10)] == ["sent", "sent"]


def test_batches_cut_by_the_limit_relay_each_notification_in_sequence_order(ledger):
    first = ledger.add(email(created=at(0)))
    second = ledger.add(sms(created=at(1)))
    first = ledger.get(first.id)
    ledger.save(sent(first, at(2)))

    relayed: list[tuple[str, int, str]] = []
    while batch := ledger.pending_status_events(limit=2):
        assert len(batch) <= 2
        relayed += statuses(batch)
        ledger.mark_status_events_published(batch)

    assert [r for r in relayed if r[0] == first.id] == [(first.id, 1, "accepted"), (first.id, 2, "sent"), (first.id, 3, "sent")]
    assert [r for r in relayed if r[0] == second.id] == [(second.id, 1, "accepted")]
    assert relayed[0] == (first.id, 1, "accepted")


def test_excluded_notifications_are_paged_past_and_stay_pending(ledger):
    held = [ledger.add(email(created=at(i))) for i in range(3)]
    for n in held:
        ledger.save(sent(ledger.get(n.id), at(10)))
    later = ledger.add(sms(created=at(5)))
    last = ledger.add(email(created=at(6)))

    # The oldest events fill a small batch; excluding their notifications reaches the later ones.
    assert {e.notification_id for e in ledger.pending_status_events(limit=2)} <= {n.id for n in held}
    batch = ledger.pending_status_events(limit=2, exclude={n.id for n in held})
    assert statuses(batch) == [(later.id, 1, "accepted"), (last.id, 1, "accepted")]
    assert statuses(ledger.pending_status_events(limit=1, exclude={held[0].id, held[1].id, held[2].id})) == [
        (later.id, 1, "accepted"),
    ]
    assert ledger.pending_status_events(limit=10, exclude=[n.id for n in held] + [later.id, last.id]) == []

    # Excluding reads nothing away: each held notification's events are all still there, in order.
    ledger.mark_status_events_published(batch)
    remaining = statuses(ledger.pending_status_events(limit=100))
    for n in held:
        assert [r for r in remaining if r[0] == n.id] == [(n.id, 1, "accepted"), (n.id, 2, "sent"), (n.id, 3, "sent")]
    assert len(remaining) == 9
    # Excluding one held notification leaves the others whole and in order.
    partial = statuses(ledger.pending_status_events(limit=100, exclude={held[1].id}))
    assert [r for r in partial if r[0] == held[1].id] == []
    assert [r for r in partial if r[0] == held[2].id] == [r for r in remaining if r[0] == held[2].id]


def test_a_write_that_is_refused_stores_no_events(ledger):
    n = ledger.add(email())
    winner, loser = ledger.get(n.id), ledger.get(n.id)
    ledger.save(sent(winner, at(1)))

    loser.mark_dead_lettered(at(1), "MaxAttemptsExceeded", "gave up")
    with pytest.raises(ConcurrencyConflict):
        ledger.save(loser)

    assert [e.status.value for e in ledger.pending_status_events(limit=10)] == ["accepted", "sent", "sent"]


def test_adding_with_a_taken_idempotency_key_adds_no_event(ledger):
    shared_key = key()
    holder = ledger.add(email(idempotency_key=shared_key))
    ledger.add(email(idempotency_key=shared_key))
    _, other = ledger.add_many([email(idempotency_key=shared_key), sms()])

    # Both were accepted at the same moment, so their order between them is not the point.
    events = ledger.pending_status_events(limit=10)
    assert [e.status.value for e in events] == ["accepted", "accepted"]
    assert {e.notification_id for e in events} == {holder.id, other.id}


def test_a_save_racing_the_relay_keeps_its_events(ledger):
    n = ledger.add(email())
    copy = ledger.get(n.id)
    ledger.mark_status_events_published(ledger.pending_status_events(limit=10))

    sent(copy, at(1))
    try:
        ledger.save(copy)
    except ConcurrencyConflict:  # the relay's write came between: read again, as handlers do
        ledger.save(sent(ledger.get(n.id), at(1)))

    assert [e.status.value for e in ledger.pending_status_events(limit=10)] == ["sent", "sent"]


def test_marking_unknown_or_already_published_events_changes_nothing(ledger):
    n = ledger.add(email())
    [accepted] = ledger.pending_status_events(limit=10)
    ledger.mark_status_events_published([accepted])
    ledger.mark_status_events_published([accepted])
    ledger.save(sent(ledger.get(n.id), at(1)))

    assert [e.status.value for e in ledger.pending_status_events(limit=10)] == ["sent", "sent"]


def test_the_outbox_of_a_purged_notification_goes_with_it(ledger):
    old = ledger.add(email(created=at(-600)))
    recent = ledger.add(email(created=at(0)))

    ledger.purge(accepted_before=at(-60), limit=10)

    assert [e.notification_id for e in ledger.pending_status_events(limit=10)] == [recent.id]
    assert ledger.get(old.id) is None


def test_the_relay_over_this_ledger_publishes_every_event_once_in_each_notifications_order(ledger):
    from shared.domain.commands import RelayStatusEvents
    from shared.service.retry import RetryPolicy
    from shared.service.status_events import Destination, relay_status_events
    from tests.fakes import FakeClock, FakeStatusEventPublisher

    notifications = [ledger.add(email(created=at(i))) for i in range(3)] + [ledger.add(sms(created=at(3)))]
    for i, n in enumerate(notifications):
        ledger.save(sent(ledger.get(n.id), at(10 + i)))
    topic = FakeStatusEventPublisher()

    relay_status_events(RelayStatusEvents(batch_size=4), ledger=ledger, destinations=[Destination(topic)],
                        policy=RetryPolicy(), clock=FakeClock())

    published = [(e["data"]["id"], e["data"]["sequence"]) for e in topic.events]
    assert len(published) == len(set(published)) == 3 * 3 + 3
    for n in notifications:
        assert [seq for nid, seq in published if nid == n.id] == sorted(seq for nid, seq in published if nid == n.id)
    assert ledger.pending_status_events(limit=100) == []


# ---------------------------------------------------------------------------- Table Storage only


def test_a_table_save_the_relay_overtakes_after_its_outbox_entry_is_refused_rather_than_hidden(request):
    """The race the Table ledger's module docstring walks through: a save has written its outbox
    entry ahead, and the relay finds the entry before the save's own write lands."""
    from azure.data.tables import TableServiceClient

    from shared.adapters.table_ledger import TableLedger
    from tests import azurite

    service, prefix = azurite.fresh_table_service(request)
    relay_side = TableLedger(service, prefix=prefix)
    n = relay_side.add(email())
    relay_side.mark_status_events_published(relay_side.pending_status_events(limit=10))
    overtaken: list[list] = []

    def relay_first(pipeline_request) -> None:
        http = pipeline_request.http_request
        if http.method == "PUT" and f"{prefix}notifications(" in http.url and not overtaken:
            overtaken.append(relay_side.pending_status_events(limit=10))

    writer_service = TableServiceClient.from_connection_string(
        request.getfixturevalue("azurite_tables"), raw_request_hook=relay_first
    )
    writer = TableLedger(writer_service, prefix=prefix)
    try:
        copy = writer.get(n.id)
        with pytest.raises(ConcurrencyConflict):
            writer.save(sent(copy, at(1)))
        assert overtaken == [[]]  # the relay saw the entry, but no events yet: it settled the entry

        writer.save(sent(writer.get(n.id), at(1)))  # the handler's retry
        assert [e.status.value for e in relay_side.pending_status_events(limit=10)] == ["sent", "sent"]
    finally:
        writer.close()
        relay_side.close()
