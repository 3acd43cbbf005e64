from datetime import datetime, timedelta, timezone

import pytest

from shared.adapters.sqlite_suppressions import SqliteSuppressionList
from shared.adapters.table_suppressions import TableSuppressionList
from shared.domain.model import Channel, Suppression
from tests import azurite
from tests.fakes import FakeSuppressionList

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def table_suppressions(request) -> TableSuppressionList:
    service, prefix = azurite.fresh_table_service(request)
    return TableSuppressionList(service, prefix=prefix)


SUPPRESSION_LISTS = {
    "fake": lambda request, tmp_path: FakeSuppressionList(),
    "sqlite": lambda request, tmp_path: SqliteSuppressionList(tmp_path / "ledger.sqlite3"),
    "table": lambda request, tmp_path: table_suppressions(request),
}


@pytest.fixture(params=list(SUPPRESSION_LISTS))
def suppressions(request, tmp_path):
    return SUPPRESSION_LISTS[request.param](request, tmp_path)


def entry(address: str, channel: Channel = Channel.EMAIL, minutes: int = 0) -> Suppression:
    return Suppression(channel=channel, address=address, reason="Bounced", created_at=T0 + timedelta(minutes=minutes))


def test_an_email_address_is_found_whatever_its_case(suppressions):
    assert suppressions.add(entry("Someone@Example.com"))
    found = suppressions.find(Channel.EMAIL, ["someone@example.com", "other@example.com"])
    assert list(found) == ["someone@example.com"]
    assert found["someone@example.com"].reason == "Bounced"


def test_adding_a_listed_recipient_again_changes_nothing(suppressions):
    assert suppressions.add(entry("a@example.com", minutes=1))
    assert not suppressions.add(entry("A@example.com", minutes=5))
    [only] = suppressions.list()
    assert only.created_at == T0 + timedelta(minutes=1)


def test_several_recipients_are_added_at_once_and_only_the_new_ones_count(suppressions):
    suppressions.add(entry("listed@example.com", minutes=1))

    added = suppressions.add_many(
        [entry("a@example.com", minutes=2), entry("LISTED@example.com", minutes=3), entry("b@example.com", minutes=4),
         entry("A@example.com", minutes=5)]
    )

    assert added == 2
    assert [(e.address, e.created_at) for e in suppressions.list()] == [
        ("b@example.com", T0 + timedelta(minutes=4)),
        ("a@example.com", T0 + timedelta(minutes=2)),
        ("listed@example.com", T0 + timedelta(minutes=1)),
    ]
    assert suppressions.add_many([]) == 0


def test_a_batch_of_bounces_larger_than_a_transaction_is_listed_whole(suppressions):
    # 150 email recipients (one of them listed already) and 30 SMS numbers: more than one
    # hundred-entity transaction on one channel, and a second channel beside it.
    suppressions.add(entry("user120@example.com", minutes=1))
    emails = [entry(f"user{i}@example.com", minutes=2) for i in range(150)]
    numbers = [entry(f"+1425555{i:04d}", Channel.SMS, minutes=2) for i in range(30)]

    assert suppressions.add_many(emails + numbers) == 179
    assert len(suppressions.find(Channel.EMAIL, [e.address for e in emails])) == 150
    assert len(suppressions.find(Channel.SMS, [e.address for e in numbers])) == 30
    assert suppressions.find(Channel.EMAIL, ["user120@example.com"])["user120@example.com"].created_at == T0 + timedelta(minutes=1)


def test_channels_are_separate_lists(suppressions):
    suppressions.add(entry("+14255551234", Channel.SMS))
    assert suppressions.find(Channel.EMAIL, ["+14255551234"]) == {}
    assert list(suppressions.find(Channel.SMS, ["+14255551234"])) == ["+14255551234"]


def test_removal_takes_an_entry_off_and_says_whether_there_was_one(suppressions):
    suppressions.add(entry("a@example.com"))
    assert suppressions.remove(Channel.EMAIL, "A@EXAMPLE.COM")
    assert not suppressions.remove(Channel.EMAIL, "a@example.com")
    assert suppressions.find(Channel.EMAIL, ["a@example.com"]) == {}


def test_the_list_is_newest_first_filtered_by_channel_and_limited(suppressions):
    for i in range(5):
        suppressions.add(entry(f"u{i}@example.com", minutes=i))
    suppressions.add(entry("+14255551234", Channel.SMS, minutes=10))

    assert [e.address for e in suppressions.list(channel=Channel.EMAIL, limit=3)] == ["u4@example.com", "u3@example.com", "u2@example.com"]
    assert suppressions.list()[0].channel is Channel.SMS
