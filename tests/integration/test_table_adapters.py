"""What the Table Storage adapters must get right beyond the port contracts, against Azurite:
documents over a string property's 64 KiB, a reconciliation window that reads only its own hour
partitions, keys built from arbitrary text, idempotency keys and quotas shared by several
instances, and index entries left behind by a lost race.

The contract suites (``test_*_contract.py``) run the same adapters through the ports; these tests
look at the tables where the layout is the point (see ``shared/adapters/table_ledger.py``).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pytest

from shared.adapters.table_ledger import TableLedger, encode_key, to_text
from shared.adapters.table_rate_limiter import TableRateLimiter
from shared.adapters.table_suppressions import TableSuppressionList
from shared.domain.errors import ConcurrencyConflict
from shared.domain.model import Channel, NotificationStatus, Suppression
from shared.service.quota import SendQuota
from tests import azurite
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
    return service.get_table_client(f"{prefix}notifications").get_entity(encode_key(notification_id), "")


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
