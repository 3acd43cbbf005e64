"""What the Table Storage adapters must get right beyond the port contracts, against Azurite:
documents over a string property's 64 KiB, a reconciliation window that reads only its own hour
partitions, keys built from arbitrary text, idempotency keys and quotas shared by several
instances, and index entries left behind by a lost race.

The contract suites (``test_*_contract.py``) run the same adapters through the ports; these tests
look at the tables where the layout is the point (see ``shared/adapters/table_ledger.py``).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pytest

from shared.adapters.table_ledger import (
    TableLedger,
    TableStore,
    TransactionRefused,
    _address,
    _transactions,
    encode_key,
    submit_transaction,
    to_text,
)
from shared.adapters.table_rate_limiter import TableRateLimiter
from shared.adapters.table_suppressions import TableSuppressionList
from shared.domain.commands import ApplyDeliveryReports
from shared.domain.errors import ConcurrencyConflict
from shared.domain.model import Channel, DeliveryReport, NotificationStatus, Suppression, new_notification_id
from shared.service.handlers import apply_delivery_reports
from shared.service.quota import SendQuota
from tests import azurite
from tests.fakes import FakeClock, FakeSuppressionList
from tests.integration.test_ledger_contract import at, email, report, sent, sms

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
STRING_PROPERTY_UNITS = 32 * 1024  # 64 KiB of UTF-16
ENTITY_BYTES = 1024 * 1024


@pytest.fixture
def tables(request):
    """(service client, table prefix) of this test's own, with every request's method and URL
    recorded in ``requests_made``."""
    requests_made: list[tuple[str, str]] = []
    service, prefix = azurite.fresh_table_service(
        request, raw_request_hook=lambda r: requests_made.append((r.http_request.method, unquote(r.http_request.url)))
    )
    return service, prefix, requests_made


@pytest.fixture
def ledger(tables):
    service, prefix, _ = tables
    store = TableLedger(service, prefix=prefix)
    yield store
    store.close()


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def stored_notification(tables, notification_id: str):
    service, prefix, _ = tables
    return service.get_table_client(f"{prefix}notifications").get_entity(*_address(notification_id))


# ---------------------------------------------------------------------------- documents


def test_a_history_over_64_kib_is_split_across_properties_and_reads_back_whole(ledger, tables):
    # Given a notification whose history (with non-ASCII text) outgrows one string property
    notification = ledger.add(email(subject="Ihre Bestellung wurde versandt – Grüße"))
    for i in range(400):
        notification.apply_report(report(f"m-{i}", status="Expanded", event_id=f"e-{i}-ü€😀"), at(1))
    assert utf16_units(notification.model_dump_json()) > 2 * STRING_PROPERTY_UNITS

    # When it is saved and read back
    ledger.save(notification)
    stored = ledger.get(notification.id)

    # Then it is whole, and no property of the entity is over the limit
    assert stored == notification
    entity = stored_notification(tables, notification.id)
    parts = [entity[f"doc{i}"] for i in range(entity["doc_parts"])]
    assert len(parts) >= 3
    assert all(utf16_units(part) <= STRING_PROPERTY_UNITS for part in parts)


def test_a_document_too_big_for_one_entity_is_stored_compressed(ledger, tables):
    notification = ledger.add(sms())
    for i in range(6000):
        notification.apply_report(report(f"m-{i}", status="Expanded", event_id=f"e-{i}"), at(1))
    assert 2 * len(notification.model_dump_json()) > ENTITY_BYTES

    ledger.save(notification)

    assert ledger.get(notification.id) == notification
    entity = stored_notification(tables, notification.id)
    assert entity["doc_encoding"] == "zlib"
    assert sum(2 * len(v) for v in entity.values() if isinstance(v, str)) < ENTITY_BYTES


# ---------------------------------------------------------------------------- reconciliation window


def test_the_reconciliation_window_reads_only_the_hour_partitions_it_touches(ledger, tables):
    _, prefix, requests_made = tables
    # Given notifications accepted over five hours, two of them sent
    for minutes in (-150, -75, -45, -15, 15, 45, 75, 105, 150):
        ledger.add(email(created=at(minutes)))
    for minutes in (-45, 75):
        ledger.save(sent(ledger.add(sms(created=at(minutes))), at(minutes + 1)))

    # When the window 11:30-13:30 is counted
    requests_made.clear()
    counts = ledger.status_counts(start=at(-30), end=at(90))

    # Then it counts the notifications inside it, reading the 11:00, 12:00 and 13:00 partitions only
    assert counts == {
        (Channel.EMAIL, NotificationStatus.ACCEPTED, False): 4,
        (Channel.SMS, NotificationStatus.SENT, True): 1,
    }
    assert all(method == "GET" and f"/{prefix}window()" in url for method, url in requests_made)
    partitions = sorted(url.split("PartitionKey eq '")[1][:10] for _, url in requests_made)
    assert partitions == ["2026110111", "2026110112", "2026110113"]


def test_a_window_across_midnight_and_an_empty_window(ledger):
    midnight = datetime(2026, 11, 2, tzinfo=timezone.utc)
    ledger.add(email(created=midnight - timedelta(microseconds=1)))
    ledger.add(email(created=midnight))

    window = ledger.status_counts(start=midnight - timedelta(minutes=30), end=midnight + timedelta(minutes=30))

    assert window == {(Channel.EMAIL, NotificationStatus.ACCEPTED, False): 2}
    assert ledger.status_counts(start=at(10), end=at(10)) == {}


# ---------------------------------------------------------------------------- keys


AWKWARD = [
    "slash/in@example.com",
    "back\\slash@example.com",
    "hash#tag@example.com",
    "what?@example.com",
    "per%cent@example.com",
    "slash%2Fin@example.com",  # what "slash/in" percent-encodes to: must stay a separate entry
    "o'brien@example.com",
    "tab\there@example.com",
    "ünïcødé@exämple.com",
    "plus+tag@example.com",
    "x" * 600 + "@example.com",  # longer than a key once encoded: hashed
]


def test_suppressions_keep_awkward_addresses_apart_and_find_them_whatever_their_case(tables):
    service, prefix, _ = tables
    suppressions = TableSuppressionList(service, prefix=prefix)
    for i, address in enumerate(AWKWARD):
        created = T0 + timedelta(minutes=i)
        assert suppressions.add(Suppression(channel=Channel.EMAIL, address=address, reason="Bounced", created_at=created))

    found = suppressions.find(Channel.EMAIL, [a.upper() for a in AWKWARD] + ["other@example.com"])

    assert sorted(found) == sorted(a.upper() for a in AWKWARD)
    assert [s.address for s in suppressions.list(limit=100)] == list(reversed(AWKWARD))
    again = Suppression(channel=Channel.EMAIL, address=AWKWARD[0].upper(), reason="Again", created_at=T0)
    assert not suppressions.add(again)
    for address in AWKWARD:
        assert suppressions.remove(Channel.EMAIL, address)
    assert suppressions.list() == []


def test_message_and_event_ids_with_awkward_characters_are_found_parked_and_discarded(ledger):
    notification = ledger.add(email())
    notification.record_all_sent(at(1), "acs/42?#x")
    ledger.save(notification)
    early = report("acs/42?#x", event_id="evt/1#?")
    ledger.park_reports([early], at(0))

    assert ledger.find_by_message_ids(["acs/42?#x"])["acs/42?#x"].id == notification.id
    assert ledger.claimable_parked_reports(limit=10) == [early]
    ledger.discard_parked_reports(["evt/1#?"])
    assert ledger.parked_reports_for(["acs/42?#x"]) == []


def test_keys_are_percent_encoded_injectively_and_time_text_sorts_as_time():
    assert encode_key("a/b") != encode_key("a%2Fb")
    assert not any(c in encode_key("/\\#?\t\x7f") for c in "/\\#?\t\x7f")
    assert encode_key("ann@example.com") == "ann@example.com"
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    times = [start + timedelta(microseconds=n) for n in (0, 1, 999_999, 10**6, 10**11)]
    texts = [to_text(t) for t in times]
    assert len({len(t) for t in texts}) == 1
    assert sorted(texts) == texts
    assert to_text(datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == "2026-01-01T00:00:00.000000Z"


# ---------------------------------------------------------------------------- idempotency keys


def test_an_idempotency_key_left_by_a_crashed_add_is_taken_over(ledger, tables):
    service, prefix, _ = tables
    # Given a key whose add crashed after claiming it and before storing the notification
    key = f"key-{uuid.uuid4()}"
    service.create_table_if_not_exists(f"{prefix}idempotencykeys").create_entity(
        {"PartitionKey": hashlib.sha256(key.encode()).hexdigest(), "RowKey": "", "notification_id": str(uuid.uuid4())}
    )

    # When the request is retried
    stored = ledger.add(email(idempotency_key=key))

    # Then it stores its own notification, which holds the key from then on
    assert stored.version == 1 and ledger.get(stored.id) == stored
    assert ledger.add(email(idempotency_key=key)).id == stored.id


def test_two_instances_adding_with_one_key_at_once_store_one_notification(tables):
    service, prefix, _ = tables
    instances = [TableLedger(service, prefix=prefix) for _ in range(2)]
    try:
        for round_ in range(4):
            key = f"key-{uuid.uuid4()}"
            start = threading.Barrier(2)
            results: list = [None, None]

            def add(slot: int) -> None:
                start.wait()
                results[slot] = instances[slot].add(email(created=at(round_), idempotency_key=key))

            threads = [threading.Thread(target=add, args=(slot,)) for slot in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)

            assert results[0].id == results[1].id
        assert sum(instances[0].status_counts(start=at(0), end=at(10)).values()) == 4
    finally:
        for instance in instances:
            instance.close()


def test_purging_frees_the_idempotency_key_and_leaves_no_index_entries(ledger, tables):
    service, prefix, _ = tables
    key = f"key-{uuid.uuid4()}"
    old = sent(ledger.add(sms(created=at(-600), idempotency_key=key)), at(-599))
    ledger.save(old)

    assert ledger.purge(accepted_before=at(0), limit=10) == 1

    for table in ("notifications", "idempotencykeys", "messageids", "window", "followups"):
        assert list(service.get_table_client(f"{prefix}{table}").list_entities()) == [], table
    assert ledger.add(sms(created=at(1), idempotency_key=key)).id != old.id


# ---------------------------------------------------------------------------- lost races


def test_a_save_that_lost_its_race_leaves_nothing_a_reader_believes(ledger):
    # Given two copies of one notification, sent by two dispatchers with different message ids
    notification = ledger.add(sms(to=("+15550000001",)))
    winner, loser = ledger.get(notification.id), ledger.get(notification.id)
    ledger.save(sent(winner, at(10), prefix="winner"))
    with pytest.raises(ConcurrencyConflict):
        ledger.save(sent(loser, at(20), prefix="loser"))  # wrote its index entries ahead, then lost

    # Then the loser's message id finds nothing, and the notification waits once, from the winner's send
    assert ledger.find_by_message_ids(["loser-sms-0"]) == {}
    assert [n.id for n in ledger.awaiting_reports(sent_before=at(30), limit=10)] == [notification.id]

    # And once its report arrives it waits for nothing, whatever the loser left behind
    winner.apply_report(report("winner-sms-0", channel=Channel.SMS), at(11))
    ledger.save(winner)
    assert ledger.awaiting_reports(sent_before=at(30), limit=10) == []


class Killed(BaseException):
    """The process dying: not an error any code path catches."""


class DiesBeforeItsWindowWrite(TableLedger):
    """A ledger whose process is killed right after a notification is written, before the
    window entry that reconciliation counts is."""

    def _write_behind(self, items):
        raise Killed()


def relay_with_no_destination(ledger) -> None:
    from shared.domain.commands import RelayStatusEvents
    from shared.service.retry import RetryPolicy
    from shared.service.status_events import relay_status_events

    relay_status_events(RelayStatusEvents(), ledger=ledger, destinations=[], policy=RetryPolicy(), clock=FakeClock())


def counted(ledger) -> dict:
    return {
        (channel.value, status.value): count
        for (channel, status, _), count in ledger.status_counts(start=at(-60), end=at(600)).items()
    }


def test_a_save_cut_short_before_its_window_write_is_counted_right_once_the_relay_has_run(tables):
    service, prefix, _ = tables
    ledger, dying = TableLedger(service, prefix=prefix), DiesBeforeItsWindowWrite(service, prefix=prefix)
    # Given a sent email whose delivery report was saved by a process killed before its window write
    notification = ledger.add(email(to=("ann@example.com",), cc=()))
    ledger.save(sent(ledger.get(notification.id), at(1)))
    delivered = dying.get(notification.id)
    delivered.apply_report(report(f"{notification.id}-email"), at(2))
    with pytest.raises(Killed):
        dying.save(delivered)
    # and one accepted by a process killed the same way, which the window does not know at all
    unseen = email(to=("bob@example.com",), cc=(), created=at(3))
    with pytest.raises(Killed):
        dying.add(unseen)
    assert ledger.get(notification.id).status is NotificationStatus.DELIVERED
    assert counted(ledger) == {("email", "sent"): 1}

    # When the status event relay runs (with nowhere to publish, as in a bare deployment)
    relay_with_no_destination(ledger)

    # Then reconciliation counts both notifications as they are
    assert counted(ledger) == {("email", "delivered"): 1, ("email", "accepted"): 1}
    assert ledger.pending_status_events(limit=10) == []


def test_a_late_window_write_from_an_older_save_is_mended_by_the_relay(ledger, tables):
    service, prefix, _ = tables
    # Given a delivered email whose earlier "sent" save wrote its window entry last (the writes crossed)
    notification = ledger.add(email(to=("ann@example.com",), cc=()))
    ledger.save(sent(ledger.get(notification.id), at(1)))
    stale = ledger._window_entry(ledger.get(notification.id))
    delivered = ledger.get(notification.id)
    delivered.apply_report(report(f"{notification.id}-email"), at(2))
    ledger.save(delivered)
    service.get_table_client(f"{prefix}window").upsert_entity(stale)
    assert counted(ledger) == {("email", "sent"): 1}

    relay_with_no_destination(ledger)

    assert counted(ledger) == {("email", "delivered"): 1}


def test_a_save_that_lands_while_the_relay_mends_the_window_is_counted_once_the_relay_is_done(tables):
    service, prefix, _ = tables
    ledger = TableLedger(service, prefix=prefix)
    notification = ledger.add(email(to=("ann@example.com",), cc=()))
    ledger.save(sent(ledger.get(notification.id), at(1)))

    class ReportLandsMidRelay(TableLedger):
        """Another instance saves the delivery report after this relay wrote the notification and
        before it writes the window entry and deletes the outbox entry."""

        landed = False

        def _settle_outbox(self, settled):
            settled = [item for item in settled if item is not None]
            if settled and not self.landed:
                self.landed = True
                delivered = ledger.get(notification.id)
                delivered.apply_report(report(f"{notification.id}-email"), at(2))
                ledger.save(delivered)
            super()._settle_outbox(settled)

    relay_with_no_destination(ReportLandsMidRelay(service, prefix=prefix))

    assert ledger.get(notification.id).status is NotificationStatus.DELIVERED
    assert counted(ledger) == {("email", "delivered"): 1}
    assert ledger.pending_status_events(limit=10) == []


def test_applying_an_email_report_costs_one_read_and_one_write_of_the_notification(ledger, tables):
    # Given an email sent with its operation id, which ACS reports as its message id
    _, prefix, requests_made = tables
    notification = ledger.add(email(to=("ann@example.com",), cc=()))
    notification = ledger.get(notification.id)
    notification.record_all_sent(at(1), notification.id)
    ledger.save(notification)
    requests_made.clear()

    # When its delivery report is applied the way the report handler does it
    found = ledger.find_by_message_ids([notification.id])
    owner = found[notification.id]
    owner.apply_report(report(notification.id), at(2))
    assert ledger.save_many([owner]) == []

    # Then the notification was read once and written once, and the index was not consulted
    notifications = f"/{prefix}notifications("
    assert [m for m, url in requests_made if notifications in url] == ["GET", "PUT"]
    assert not [url for _, url in requests_made if f"/{prefix}messageids" in url]
    assert ledger.get(notification.id).recipients[0].status.value == "delivered"


def test_a_save_from_a_copy_another_instance_has_since_changed_is_a_lost_race(tables):
    service, prefix, _ = tables
    first, second = TableLedger(service, prefix=prefix), TableLedger(service, prefix=prefix)
    try:
        notification = first.add(sms(to=("+15550000001",)))
        stale = first.get(notification.id)
        second.save(sent(second.get(notification.id), at(10), prefix="second"))

        with pytest.raises(ConcurrencyConflict):
            first.save(sent(stale, at(20), prefix="first"))

        fresh = first.get(notification.id)
        assert fresh.message_ids == {"second-sms-0"}
        fresh.apply_report(report("second-sms-0", channel=Channel.SMS), at(11))
        first.save(fresh)
        assert second.get(notification.id).recipients[0].status.value == "delivered"
    finally:
        first.close()
        second.close()


# ---------------------------------------------------------------------------- shared partitions


def notification_requests(requests_made: list[tuple[str, str]], prefix: str) -> list[str]:
    """The methods of the requests that read or wrote notifications: single ones, and transactions
    (``$batch``, which this adapter sends for nothing else in these tests)."""
    table = f"/{prefix}notifications"
    return [m for m, url in requests_made if table in url or url.endswith("/$batch")]


def test_a_batch_of_notifications_made_in_one_hour_is_read_and_saved_a_shard_at_a_time(ledger, tables):
    # Given fifty emails made within the same hour, sent, and their reports
    _, prefix, requests_made = tables
    notifications = [ledger.add(email(to=("ann@example.com",), cc=())) for _ in range(50)]
    for n in notifications:
        n.record_all_sent(at(1), n.id)
    assert ledger.save_many(notifications) == []
    partitions = {_address(n.id)[0] for n in notifications}
    requests_made.clear()

    # When the reports are applied as the report handler applies a batch
    found = ledger.find_by_message_ids(n.id for n in notifications)
    for n in found.values():
        n.apply_report(report(n.id), at(2))
    read_requests = len(requests_made)
    assert ledger.save_many(list(found.values())) == []

    # Then every notification was read and written, with a request or two a shard rather than
    # one a notification
    assert set(found) == {n.id for n in notifications}
    reads = notification_requests(requests_made[:read_requests], prefix)
    writes = notification_requests(requests_made[read_requests:], prefix)
    assert len(reads) <= len(partitions) and len(writes) <= 4 * len(partitions), (len(reads), len(writes))
    assert len(writes) < len(notifications)
    assert {ledger.get(n.id).recipients[0].status.value for n in notifications} == {"delivered"}


def test_a_batch_of_notifications_without_idempotency_keys_is_added_a_shard_at_a_time(ledger, tables):
    # Given a hundred emails accepted together, and one more with an idempotency key
    _, prefix, requests_made = tables
    batch = [email(cc=()) for _ in range(100)] + [email(cc=(), idempotency_key=f"key-{uuid.uuid4()}")]
    requests_made.clear()

    # When they are added in one call, as batch intake adds them
    stored = ledger.add_many(batch)

    # Then each is stored, counted by the reconciliation window and found as not yet queued, with
    # a few dozen requests in all rather than several for each notification
    assert [n.id for n in stored] == [n.id for n in batch] and {n.version for n in stored} == {1}
    assert len(requests_made) < 60, len(requests_made)
    assert all(ledger.get(n.id) is not None for n in batch)
    counts = ledger.status_counts(start=at(-1), end=at(1))
    assert sum(counts.values()) == 101
    assert {n.id for n in ledger.unqueued(accepted_before=at(1), limit=200)} == {n.id for n in batch}


def test_a_batch_read_returns_only_the_notifications_asked_for(ledger):
    # Given a hundred emails made one after another, so that they sit side by side in their 16 shards,
    # each sent with its own id as its message id (the ACS operation id)
    notifications = [ledger.add(email(cc=())) for _ in range(100)]
    for n in notifications:
        n.record_all_sent(at(1), n.id)
    assert ledger.save_many(notifications) == []

    # When every third is looked up by its message id
    wanted = {n.id for n in notifications[::3]}
    found = ledger.find_by_message_ids(wanted)

    # Then exactly those are found, each under its own message id
    assert {mid: n.id for mid, n in found.items()} == {nid: nid for nid in wanted}


def test_a_save_in_a_transaction_that_another_writer_got_to_first_loses_only_that_notification(tables):
    # Given thirty emails in one shard that two instances have read, and a rival that has since
    # saved three of them
    service, prefix, requests_made = tables
    handler, rival = TableLedger(service, prefix=prefix), TableLedger(service, prefix=prefix)
    try:
        notifications = []
        for nid in ids_in_one_shard(30):
            n = email(to=("ann@example.com",), cc=())
            n.id = nid
            notifications.append(handler.get(handler.add(n).id))
        victims = {n.id for n in notifications[::10]}
        for nid in victims:
            rival.save(sent(rival.get(nid), at(1), prefix="rival"))
        requests_made.clear()

        # When the handler saves all thirty in one batch
        for n in notifications:
            sent(n, at(2), prefix="handler")
        lost = handler.save_many(notifications)

        # Then it lost exactly the three the rival changed, which keep the rival's change, and
        # every other one carries the handler's, written in transactions that left out each
        # loser the service named rather than one at a time
        assert {n.id for n in lost} == victims
        for n in notifications:
            stored = rival.get(n.id)
            expected = "rival" if n.id in victims else "handler"
            assert stored.message_ids == {f"{expected}-email"}, n.id
        single_writes = [url for m, url in requests_made if m == "PUT" and f"/{prefix}notifications(" in url]
        assert single_writes == []
    finally:
        handler.close()
        rival.close()


def test_notifications_too_big_to_share_one_transaction_request_are_saved_in_several(ledger):
    # Given twelve emails in one shard whose texts are 200,000 characters, half of them quotes
    # (escaped once in the stored document and again in the request): about 4.8 MB of request in
    # all, over a transaction's 4 MiB
    notifications = []
    for nid in ids_in_one_shard(12):
        n = email()
        n.id = nid
        n.content["text"] = 'q"' * 100_000
        notifications.append(ledger.add(n))
    assert len({_address(n.id)[0] for n in notifications}) == 1

    # When they are saved in one batch
    for n in notifications:
        sent(n, at(1))
    assert ledger.save_many(notifications) == []

    # Then every one was written whole
    for n in notifications:
        stored = ledger.get(n.id)
        assert stored.content["text"] == 'q"' * 100_000 and stored.message_ids == {f"{n.id}-email"}


def test_a_range_read_spans_a_few_seconds_however_many_wanted_ids_chain_together(ledger, tables):
    # Given forty emails in one shard made 0.9 s apart (ids chained by gaps under a second), with
    # another email made between each two, all sent with their ids as message ids
    _, prefix, requests_made = tables
    start = int(T0.timestamp() * 1000)
    wanted, others = [], []
    for i in range(40):
        for made, into in ((start + 900 * i, wanted), (start + 900 * i + 450, others)):
            n = email(cc=())
            n.id = id_made_at(made)
            n.record_all_sent(at(1), n.id)
            into.append(ledger.add(n).id)
    requests_made.clear()

    # When the wanted ones are looked up together
    found = ledger.find_by_message_ids(wanted)

    # Then they are all found, with several range reads of a few seconds each rather than one
    # read of all 36 seconds (and every email between them)
    assert set(found) == set(wanted)
    reads = [url for m, url in requests_made if m == "GET" and f"/{prefix}notifications" in url]
    assert len(reads) >= 36 // 5


def id_made_at(millis: int) -> str:
    """A UUIDv7 made at ``millis``, in shard 0 (its last hex digit)."""
    value = (millis << 80) | (7 << 76) | (uuid.uuid4().int & ((1 << 76) - 1))
    value = (value & ~(0b11 << 62)) | (0b10 << 62)  # the RFC 4122 variant
    return str(uuid.UUID(int=value & ~0xF))


def ids_in_one_shard(count: int) -> list[str]:
    """``count`` new notification ids that share a shard (their last hex digit), in order."""
    ids: list[str] = []
    while len(ids) < count:
        candidate = new_notification_id()
        if candidate.endswith("0"):
            ids.append(candidate)
    return ids


def test_transactions_hold_one_partition_at_most_a_hundred_entities_and_each_entity_once():
    big = "y" * (1024 * 1024)
    entities = (
        [{"PartitionKey": "a", "RowKey": f"{i:03d}"} for i in range(250)]
        + [{"PartitionKey": "b", "RowKey": "1"}, {"PartitionKey": "b", "RowKey": "1"}]
        + [{"PartitionKey": "c", "RowKey": str(i), "doc0": big} for i in range(5)]
    )

    chunks = list(_transactions(entities))

    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(entities)))
    for chunk in chunks:
        assert len({entities[i]["PartitionKey"] for i in chunk}) == 1
        assert len({entities[i]["RowKey"] for i in chunk}) == len(chunk)
        assert len(chunk) <= 100
        assert sum(len(entities[i].get("doc0", "")) for i in chunk) <= 3 * 1024 * 1024
    assert sorted(len(c) for c in chunks if entities[c[0]]["PartitionKey"] == "a") == [50, 100, 100]


def test_an_id_made_before_ids_were_time_ordered_is_still_stored_found_saved_and_purged(ledger, tables):
    # Given a notification whose id is a random UUID, as every id was before they were time-ordered
    service, prefix, _ = tables
    old_id = str(uuid.uuid4())
    n = email(created=at(-600), cc=())
    n.id = old_id
    ledger.add(n)
    assert _address(old_id) == (old_id, "")

    # When its report comes in and is applied
    n = sent(ledger.get(old_id), at(-599), prefix=old_id)
    ledger.save(n)
    found = ledger.find_by_message_ids([f"{old_id}-email"])
    found[f"{old_id}-email"].apply_report(report(f"{old_id}-email"), at(-598))
    assert ledger.save_many(list(found.values())) == []

    # Then it is stored in a partition of its own, reads back delivered, and a purge removes it
    stored = service.get_table_client(f"{prefix}notifications").get_entity(old_id, "")
    assert stored["status"] == "delivered"
    assert ledger.get(old_id).recipients[0].status.value == "delivered"
    assert ledger.purge(accepted_before=at(0), limit=10) == 1
    assert ledger.get(old_id) is None


def test_deleting_many_where_some_are_gone_already_deletes_the_rest_in_transactions(tables):
    service, prefix, requests_made = tables
    store = TableStore(service, prefix, ["things"])
    store.upsert_many("things", [{"PartitionKey": "p", "RowKey": f"{i:02d}"} for i in range(10)])
    store.delete("things", "p", "03")
    store.delete("things", "p", "07")
    requests_made.clear()

    store.delete_many("things", [("p", f"{i:02d}") for i in range(10)])

    assert len(requests_made) <= 3  # the transaction, and again without each one that was gone
    assert list(store.scan("things")) == []
    store.close()


def test_a_transaction_keeps_awkward_keys_whole_and_names_the_operation_it_was_refused_on(tables):
    service, prefix, _ = tables
    client = service.create_table_if_not_exists(f"{prefix}awkward")
    keys = ["2026-11-01T12:00:00.000000Z|a%2Fb", "ann@example.com", "it's", "a|b:c"]

    submit_transaction(client, [("upsert", {"PartitionKey": "p:1", "RowKey": k, "n": i}, None) for i, k in enumerate(keys)])
    assert sorted((e["RowKey"], e["n"]) for e in client.list_entities()) == sorted((k, i) for i, k in enumerate(keys))

    with pytest.raises(TransactionRefused) as refused:
        submit_transaction(client, [("create", {"PartitionKey": "p:1", "RowKey": "new"}, None),
                                    ("create", {"PartitionKey": "p:1", "RowKey": keys[2]}, None)])
    assert (refused.value.status_code, refused.value.index) == (409, 1)
    assert "new" not in {e["RowKey"] for e in client.list_entities()}, "a refused transaction wrote nothing"

    stale = client.get_entity("p:1", keys[0]).metadata["etag"]
    client.upsert_entity({"PartitionKey": "p:1", "RowKey": keys[0], "n": 9})
    with pytest.raises(TransactionRefused) as refused:
        submit_transaction(client, [("delete", {"PartitionKey": "p:1", "RowKey": keys[1]}, None),
                                    ("update", {"PartitionKey": "p:1", "RowKey": keys[0], "n": 10}, stale)])
    assert (refused.value.status_code, refused.value.index) == (412, 1)
    assert client.get_entity("p:1", keys[0])["n"] == 9


# ---------------------------------------------------------------------------- concurrent batches


def sent_emails(ledger: TableLedger, count: int) -> list:
    """``count`` emails to ann with carol in cc, sent with their notification id as the message id
    (the ACS operation id, as the dispatcher records it)."""
    notifications = []
    for _ in range(count):
        n = ledger.get(ledger.add(email(to=("ann@example.com",), cc=("carol@example.com",))).id)
        n.record_all_sent(at(1), n.id)
        ledger.save(n)
        notifications.append(n)
    return notifications


def test_a_batch_whose_writes_partly_lose_their_etag_race_applies_every_report_exactly_once(request):
    # Given twelve sent emails, a report handler's ledger writing four notifications at a time, and
    # another instance that records carol's delivery on every third email after the handler read
    # them and before any of its writes goes out
    racing = {}
    lock = threading.Lock()

    def race_before_the_first_write(pipeline_request) -> None:
        http = pipeline_request.http_request
        notifications = f"/{racing.get('prefix')}notifications("
        single = http.method == "PUT" and notifications in unquote(http.url)
        transaction = http.url.endswith("/$batch") and notifications.encode() in (http.body or b"")
        if not (single or transaction):
            return
        with lock:  # every write waits here until the rival is done
            for n in racing.pop("victims", []):
                rival_copy = racing["rival"].get(n.id)
                rival_copy.apply_report(carol_delivered(n.id), at(3))
                racing["rival"].save(rival_copy)

    service, prefix = azurite.fresh_table_service(request, raw_request_hook=race_before_the_first_write)
    rival_service, _ = azurite.fresh_table_service(request)
    handler_side = TableLedger(service, prefix=prefix, concurrency=4)
    rival = TableLedger(rival_service, prefix=prefix)
    notifications = sent_emails(rival, 12)
    victims = notifications[::3]
    racing.update(prefix=prefix, rival=rival)
    reports = [report(n.id) for n in notifications]

    # When the handler applies one report per email in one batch (the rival strikes on its first write)
    racing["victims"] = victims
    summary = apply_delivery_reports(
        ApplyDeliveryReports(reports), ledger=handler_side, suppressions=FakeSuppressionList(), clock=FakeClock(at(4))
    )

    # Then every report was applied, the rival's change survived, and each delivery to ann is
    # recorded once, with one status event, on the raced notifications as on the others
    assert "victims" not in racing, "the rival never got between the read and the write"
    assert summary.applied == 12 and summary.notifications == {n.id for n in notifications}
    victim_ids = {n.id for n in victims}
    for n in notifications:
        stored = TableLedger(rival_service, prefix=prefix).get(n.id)
        statuses = {r.address: r.status.value for r in stored.recipients}
        carol = "delivered" if n.id in victim_ids else "sent"
        assert statuses == {"ann@example.com": "delivered", "carol@example.com": carol}, n.id
        ann_events = [e for e in stored.pending_status_events if e.status == "delivered" and e.recipient.startswith("a")]
        assert len(ann_events) == 1, (n.id, ann_events)
        assert stored.version == (4 if n.id in victim_ids else 3)
    # And the relay finds each of those deliveries once through the outbox
    relayed = TableLedger(rival_service, prefix=prefix).pending_status_events(1000)
    ann_delivered = [e.notification_id for e in relayed if e.status == "delivered" and e.recipient.startswith("a")]
    assert sorted(ann_delivered) == sorted(n.id for n in notifications)
    handler_side.close()
    rival.close()


def carol_delivered(message_id: str) -> DeliveryReport:
    return DeliveryReport(
        event_id=f"evt-{uuid.uuid4()}", channel=Channel.EMAIL, message_id=message_id, recipient="carol@example.com",
        status="Delivered", detail="250 OK", occurred_at=at(3),
    )


def test_a_batch_never_has_more_requests_in_flight_than_the_ledgers_concurrency(request):
    # Given a ledger allowed three requests at once, and requests slow enough to overlap
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def started(_) -> None:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.02)

    def finished(_) -> None:
        with lock:
            in_flight[0] -= 1

    service, prefix = azurite.fresh_table_service(request, raw_request_hook=started, raw_response_hook=finished)
    ledger = TableLedger(service, prefix=prefix, concurrency=3)
    ledger.get(str(uuid.uuid4()))  # the table exists before the batch
    most[0] = 0

    # When it looks up twenty message ids, each a point read of its own partition
    assert ledger.find_by_message_ids([str(uuid.uuid4()) for _ in range(20)]) == {}

    # Then the reads overlapped, three at a time and never more
    assert most[0] == 3
    ledger.close()


class _SlowTableService(http.server.ThreadingHTTPServer):
    """Answers every Table request slowly with "no such entity" (tables "exist" already) and
    counts the connections clients open to it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowTableHandler)
        self.connections = 0
        self.authorizations: list[str | None] = []
        self.count_lock = threading.Lock()


class _SlowTableHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Table Storage

    def setup(self) -> None:
        super().setup()
        with self.server.count_lock:
            self.server.connections += 1

    def _answer(self, status: int, code: str) -> None:
        self.server.authorizations.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(0.05)
        body = json.dumps({"odata.error": {"code": code, "message": {"lang": "en-US", "value": code}}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;odata=minimalmetadata")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self._answer(409, "TableAlreadyExists")

    def do_GET(self) -> None:
        self._answer(404, "ResourceNotFound")

    def log_message(self, *args) -> None:
        pass


def test_a_client_built_for_more_requests_than_requests_default_pool_keeps_its_connections():
    # Given a slow Table service, and the client bootstrap builds for sixteen requests in flight
    # (requests' default pool keeps ten connections and drops any more after each use)
    from shared.bootstrap import table_service_client

    server = _SlowTableService()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = azurite.connection_string(server.server_address[1])
        ledger = TableLedger(table_service_client(connection_string=endpoint, concurrency=16), concurrency=16)

        # When a batch reads sixty-four partitions, sixteen at a time
        assert ledger.find_by_message_ids([str(uuid.uuid4()) for _ in range(64)]) == {}
        ledger.close()
    finally:
        server.shutdown()
        server.server_close()

    # Then it opened one connection per request in flight, not one per read
    assert server.connections <= 16


def test_a_netrc_login_for_the_storage_host_does_not_replace_the_clients_signature(tmp_path, monkeypatch):
    # Given a .netrc with a login for the storage host, and no proxy configured
    from shared.bootstrap import table_service_client

    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    server = _SlowTableService()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # When the client bootstrap builds reads a notification
        endpoint = azurite.connection_string(server.server_address[1])
        ledger = TableLedger(table_service_client(connection_string=endpoint, concurrency=2))
        assert ledger.get(str(uuid.uuid4())) is None
        ledger.close()
    finally:
        server.shutdown()
        server.server_close()

    # Then every request carried the account's signature, not the .netrc's basic login (requests
    # looks for one on every request while it trusts the environment)
    assert server.authorizations and all(a.startswith("SharedKey ") for a in server.authorizations)


# ---------------------------------------------------------------------------- tables and quotas


def test_nothing_is_created_or_read_until_first_use(tables):
    service, prefix, requests_made = tables

    TableLedger(service, prefix=prefix)
    TableSuppressionList(service, prefix=prefix)
    TableRateLimiter(service, {"email": SendQuota(per_minute=1, per_hour=None)}, prefix=prefix)

    assert requests_made == []
    with pytest.raises(ValueError):
        TableLedger(service, prefix="not-a-table-name")


def test_two_limiter_instances_never_grant_more_than_the_limit_together(tables):
    service, prefix, _ = tables
    quota = {"email": SendQuota(per_minute=15, per_hour=None)}
    instances = [TableRateLimiter(service, quota, prefix=prefix) for _ in range(2)]
    for minute in range(2):
        now = T0 + timedelta(minutes=minute)
        start = threading.Barrier(2)
        granted = [0, 0]

        def hammer(slot: int) -> None:
            start.wait()
            granted[slot] = sum(instances[slot].acquire("email", 1, now) is None for _ in range(20))

        threads = [threading.Thread(target=hammer, args=(slot,)) for slot in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert sum(granted) == 15


def test_the_limiter_prunes_rows_that_can_no_longer_matter(tables):
    service, prefix, _ = tables
    limiter = TableRateLimiter(service, {"sms": SendQuota(per_minute=100, per_hour=None)}, prefix=prefix)
    for second in range(5):
        assert limiter.acquire("sms", 10, T0 + timedelta(seconds=second)) is None

    assert limiter.acquire("sms", 10, T0 + timedelta(minutes=3)) is None

    rows = [e["RowKey"] for e in service.get_table_client(f"{prefix}ratelog").list_entities()]
    assert len(rows) == 2 and rows[0] == "head"
