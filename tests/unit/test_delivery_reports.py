import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.model import Channel, DeliveryReport, NotificationStatus, RecipientStatus
from shared.entrypoints.eventgrid import read_events
from tests.fakes import FakeLedger
from tests.unit.builders import World, email_command, sms_command

FIXTURES = Path(__file__).parents[1] / "fixtures" / "events"
SAMPLE_RESOURCE = (
    "/subscriptions/{subscription-id}/resourceGroups/{group-name}/providers/Microsoft.Communication"
    "/communicationServices/{communication-services-resource-name}"
)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def sent_email(world: World, *to: str):
    n, _ = world.submit(email_command(*to))
    world.dispatch(n.id)
    return n


def report(n_id: str, recipient: str, status: str, event_id: str) -> DeliveryReport:
    return DeliveryReport(event_id=event_id, channel=Channel.EMAIL, message_id=n_id, recipient=recipient, status=status)


@pytest.mark.parametrize(
    "name",
    ["email_delivery_report_eventgrid.json", "email_delivery_report_cloudevent.json"],
)
def test_microsofts_email_report_samples_are_read_in_both_schemas(name):
    parsed = read_events([fixture(name)], trusted_source=SAMPLE_RESOURCE)

    [r] = parsed.reports
    assert (r.channel, r.message_id, r.recipient, r.status) == (
        Channel.EMAIL, "950850f5-bcdf-4315-b77a-6447cf56fac9", "test1@contoso.com", "delivered",
    )
    assert r.occurred_at is not None and r.occurred_at.year == 2023


@pytest.mark.parametrize("name", ["sms_delivery_report_eventgrid.json", "sms_delivery_report_cloudevent.json"])
def test_microsofts_sms_report_samples_are_read_whatever_their_key_casing(name):
    parsed = read_events([fixture(name)], trusted_source=SAMPLE_RESOURCE)

    [r] = parsed.reports
    assert (r.channel, r.recipient, r.status, r.detail) == (Channel.SMS, "+15555555555", "Delivered", "No error.")
    assert r.message_id.startswith("Outgoing_2020")


def test_events_from_another_acs_resource_are_rejected_and_counted():
    event = fixture("email_delivery_report_eventgrid.json") | {"topic": "/subscriptions/evil/providers/x"}
    parsed = read_events([event], trusted_source=SAMPLE_RESOURCE)
    assert parsed.reports == [] and parsed.foreign == 1


def test_a_malformed_event_does_not_stop_the_valid_ones_in_its_batch():
    good = fixture("email_delivery_report_eventgrid.json")
    broken = dict(good, data={"status": "Delivered"})  # no messageId
    parsed = read_events([broken, "nonsense", good], trusted_source=SAMPLE_RESOURCE)
    assert len(parsed.reports) == 1 and parsed.malformed == 2


def test_the_subscription_validation_code_is_found():
    parsed = read_events([fixture("subscription_validation_eventgrid.json")], trusted_source=SAMPLE_RESOURCE)
    assert parsed.validation_code == "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"


@pytest.mark.parametrize(
    "acs_status, recipient_status, notification_status",
    [
        ("Delivered", RecipientStatus.DELIVERED, NotificationStatus.DELIVERED),
        ("delivered", RecipientStatus.DELIVERED, NotificationStatus.DELIVERED),
        ("Bounced", RecipientStatus.BOUNCED, NotificationStatus.BOUNCED),
        ("Suppressed", RecipientStatus.SUPPRESSED, NotificationStatus.SUPPRESSED),
        ("Failed", RecipientStatus.FAILED, NotificationStatus.FAILED),
        ("Quarantined", RecipientStatus.QUARANTINED, NotificationStatus.FAILED),
        ("FilteredSpam", RecipientStatus.FILTERED_SPAM, NotificationStatus.FAILED),
    ],
)
def test_every_acs_email_status_maps_to_a_recipient_and_notification_status(acs_status, recipient_status, notification_status):
    world = World()
    n = sent_email(world, "a@example.com")

    world.reports(report(n.id, "a@example.com", acs_status, "e1"))

    stored = world.ledger.get(n.id)
    assert stored.recipients[0].status is recipient_status
    assert stored.status is notification_status


@pytest.mark.parametrize("status, effect", [("Expanded", "informational"), ("SomethingNew", "unknown_status")])
def test_informational_and_unknown_statuses_are_recorded_but_change_nothing(status, effect):
    world = World()
    n = sent_email(world, "a@example.com")

    world.reports(report(n.id, "a@example.com", status, "e1"))

    stored = world.ledger.get(n.id)
    assert stored.status is NotificationStatus.SENT
    assert stored.history[-1].event == "delivery_report"
    assert stored.history[-1].detail["effect"] == effect
    assert stored.history[-1].detail["status"] == status


def test_a_duplicate_report_is_applied_once():
    world = World()
    n = sent_email(world, "a@example.com")
    delivered = report(n.id, "a@example.com", "Delivered", "e1")

    first = world.reports(delivered)
    second = world.reports(delivered)

    assert (first.applied, second.applied, second.duplicates) == (1, 0, 1)
    assert len([h for h in world.ledger.get(n.id).history if h.event == "delivery_report"]) == 1


def test_a_late_report_wins_over_unconfirmed():
    world = World()
    n = sent_email(world, "a@example.com")
    stored = world.ledger.get(n.id)
    stored.mark_unconfirmed(world.clock.now(), world.clock.now())
    world.ledger.save(stored)

    world.reports(report(n.id, "a@example.com", "Delivered", "late"))

    assert world.ledger.get(n.id).status is NotificationStatus.DELIVERED


def test_each_recipient_of_an_email_gets_its_own_status():
    world = World()
    n = sent_email(world, "a@example.com", "bounce@example.com")

    world.reports(report(n.id, "a@example.com", "Delivered", "e1"), report(n.id, "bounce@example.com", "Bounced", "e2"))

    stored = world.ledger.get(n.id)
    assert [r.status for r in stored.recipients] == [RecipientStatus.DELIVERED, RecipientStatus.BOUNCED]
    assert stored.status is NotificationStatus.BOUNCED


STATUSES = ["Delivered", "Bounced", "Suppressed", "Failed", "Quarantined", "FilteredSpam", "Expanded", "Mystery"]


@settings(max_examples=150, deadline=None)
@given(
    claims=st.lists(st.tuples(st.sampled_from(["a@example.com", "b@example.com"]), st.sampled_from(STATUSES)), min_size=1, max_size=6),
    data=st.data(),
)
def test_reports_converge_on_the_same_state_whatever_their_order_and_duplication(claims, data):
    """Given any set of reports, delivered in any order with any duplicates, in any batches,
    every recipient ends on the same status."""

    def final_state(deliveries: list[list[DeliveryReport]]):
        world = World()
        n, _ = world.submit(email_command("a@example.com", "b@example.com"))
        world.dispatch(n.id)
        for batch in deliveries:
            world.reports(*[r.model_copy(update={"message_id": n.id}) for r in batch])
        stored = world.ledger.get(n.id)
        return [r.status for r in stored.recipients], stored.status

    reports = [report("placeholder", who, status, f"e{i}") for i, (who, status) in enumerate(claims)]
    in_order = final_state([reports])
    shuffled = data.draw(st.permutations(reports + data.draw(st.lists(st.sampled_from(reports), max_size=4))))
    cut = data.draw(st.integers(min_value=0, max_value=len(shuffled)))
    assert final_state([shuffled[:cut], shuffled[cut:]]) == in_order


def test_sms_reports_are_matched_by_message_id():
    world = World()
    n, _ = world.submit(sms_command("+14255551234", "+14255550001"))
    world.dispatch(n.id)
    ids = {r.address: r.message_id for r in world.ledger.get(n.id).recipients}

    world.reports(
        DeliveryReport(event_id=ids["+14255551234"], channel=Channel.SMS, message_id=ids["+14255551234"], status="Delivered"),
        DeliveryReport(event_id=ids["+14255550001"], channel=Channel.SMS, message_id=ids["+14255550001"], status="Failed"),
    )

    stored = world.ledger.get(n.id)
    assert {r.address: r.status for r in stored.recipients} == {
        "+14255551234": RecipientStatus.DELIVERED,
        "+14255550001": RecipientStatus.FAILED,
    }
    assert stored.status is NotificationStatus.FAILED


def test_a_report_time_without_an_offset_is_read_as_utc():
    event = fixture("email_delivery_report_eventgrid.json")
    event["data"]["deliveryAttemptTimeStamp"] = "2023-02-09T19:46:12.248"
    [r] = read_events([event], trusted_source=SAMPLE_RESOURCE).reports
    assert r.occurred_at.utcoffset().total_seconds() == 0


def test_a_failed_recipient_keeps_the_reason_acs_gave_and_a_delivered_one_has_none():
    world = World()
    n = sent_email(world, "a@example.com", "b@example.com")
    world.reports(
        report(n.id, "a@example.com", "Delivered", "e1").model_copy(update={"detail": "No error."}),
        report(n.id, "b@example.com", "Failed", "e2").model_copy(update={"detail": "MailboxFull"}),
    )
    assert [r.reason for r in world.ledger.get(n.id).recipients] == [None, "MailboxFull"]


class LedgerWithARival(FakeLedger):
    """Another writer saves first, once, between a batch's read and its write."""

    def __init__(self) -> None:
        super().__init__()
        self.rival = None

    def save_many(self, notifications):
        rival, self.rival = self.rival, None
        if rival is not None:
            rival(self)
        return super().save_many(notifications)


def test_a_batch_whose_write_loses_a_race_applies_its_reports_to_the_copy_that_won():
    world = World()
    world.ledger = LedgerWithARival()
    n = sent_email(world, "jane@example.com", "bob@example.com")
    untouched = sent_email(world, "ann@example.com")

    def rival(ledger):  # another batch delivers Bob's copy first
        theirs = ledger.get(n.id)
        theirs.apply_report(report(n.id, "bob@example.com", "Delivered", "e0"), world.clock.now())
        ledger.save(theirs)

    world.ledger.rival = rival
    world.reports(
        report(n.id, "jane@example.com", "Bounced", "e1"),
        report(untouched.id, "ann@example.com", "Delivered", "e2"),
        report(n.id, "bob@example.com", "Delivered", "e0"),
    )

    stored = world.ledger.get(n.id)
    assert [r.status for r in stored.recipients] == [RecipientStatus.BOUNCED, RecipientStatus.DELIVERED]
    assert stored.applied_event_ids == ["e0", "e1"]
    assert world.ledger.get(untouched.id).recipients[0].status is RecipientStatus.DELIVERED
    events = [(e.status.value, e.recipient) for e in world.ledger.outbox.values() if e.status.value in ("delivered", "bounced")]
    assert sorted(events) == [("bounced", "j***@example.com"), ("delivered", "a***@example.com"), ("delivered", "b***@example.com")]
    assert list(world.suppressions.find(Channel.EMAIL, ["jane@example.com"])) == ["jane@example.com"]
