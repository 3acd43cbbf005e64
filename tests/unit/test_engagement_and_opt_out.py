import json
from datetime import timedelta
from pathlib import Path

import pytest

from shared.domain.commands import ApplyInboundSms
from shared.domain.model import Channel, DeliveryReport, InboundSms, NotificationStatus, RecipientStatus, Suppression
from shared.entrypoints.eventgrid import read_events
from shared.service import handlers
from tests.unit.builders import World, email_command, sms_command

FIXTURES = Path(__file__).parents[1] / "fixtures" / "events"
EMAIL_SAMPLE_RESOURCE = (
    "/subscriptions/{subscription-id}/resourceGroups/{group-name}/providers/Microsoft.Communication"
    "/communicationServices/{communication-services-resource-name}"
)
SMS_RECEIVED_RESOURCE = (
    "/subscriptions/50ad1522-5c2c-4d9a-a6c8-67c11ecb75b8/resourceGroups/acse2e/providers/Microsoft.Communication"
    "/communicationServices/{communication-services-resource-name}"
)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("name", ["email_engagement_eventgrid.json", "email_engagement_cloudevent.json"])
def test_microsofts_engagement_samples_are_read_as_engagement_in_both_schemas(name):
    [report] = read_events([fixture(name)], trusted_source=EMAIL_SAMPLE_RESOURCE).reports
    assert (report.kind, report.status, report.detail) == ("engagement", "click", "www.example.com")
    assert report.message_id == "fe26a737-6941-410c-b126-7eacbe4035d1"


@pytest.mark.parametrize("name", ["sms_received_eventgrid.json", "sms_received_cloudevent.json"])
def test_microsofts_sms_received_samples_are_read_with_e164_numbers(name):
    parsed = read_events([fixture(name)], trusted_source=SMS_RECEIVED_RESOURCE)
    [inbound] = parsed.inbound
    assert (inbound.sender, inbound.to, inbound.message) == ("+15555555555", "+15555555555", "Great to connect with ACS events")
    assert inbound.keyword is None


def test_an_open_or_click_is_recorded_in_the_history_and_changes_no_status():
    world = World()
    n, _ = world.submit(email_command("a@example.com"))
    world.dispatch(n.id)
    world.reports(DeliveryReport(event_id="d", channel=Channel.EMAIL, message_id=n.id, recipient="a@example.com", status="Delivered"))

    world.reports(
        DeliveryReport(event_id="v", channel=Channel.EMAIL, message_id=n.id, status="view", kind="engagement"),
        DeliveryReport(event_id="c", channel=Channel.EMAIL, message_id=n.id, status="Click", detail="https://example.com/x", kind="engagement"),
        DeliveryReport(event_id="c", channel=Channel.EMAIL, message_id=n.id, status="Click", kind="engagement"),
    )

    stored = world.ledger.get(n.id)
    assert stored.status is NotificationStatus.DELIVERED
    engagements = [h.detail for h in stored.history if h.event == "engagement"]
    assert [(e["type"], e.get("context")) for e in engagements] == [("view", None), ("click", "https://example.com/x")]


def inbound(text: str, sender: str = "+14255551234", minutes: int = 0, world: World | None = None) -> InboundSms:
    at = (world.clock.now() if world else None)
    return InboundSms(event_id=f"in-{text}-{minutes}", sender=sender, to="+18005550100", message=text,
                      received_at=at + timedelta(minutes=minutes) if at else None)


def apply(world: World, *messages: InboundSms):
    return handlers.apply_inbound_sms(ApplyInboundSms(list(messages)), suppressions=world.suppressions, clock=world.clock)


@pytest.mark.parametrize("text", ["STOP", "stop", " Stop. ", "UNSUBSCRIBE", "opt out", "Quit"])
def test_a_stop_keyword_opts_the_number_out_and_it_is_not_sent_to_again(text):
    world = World()
    assert apply(world, inbound(text, world=world)).opted_out == 1

    n, _ = world.submit(sms_command("+14255551234", "+14255559999"))
    world.dispatch(n.id)

    [sent] = world.sms.sent
    assert [r.to for r in sent.recipients] == ["+14255559999"]
    recipient = world.ledger.get(n.id).recipients[0]
    assert recipient.status is RecipientStatus.SUPPRESSED
    assert recipient.reason.startswith("OnSuppressionList: OptedOut")


@pytest.mark.parametrize("text", ["stop sending me these", "Thanks!", "STOPP"])
def test_an_ordinary_reply_opts_nobody_out(text):
    world = World()
    assert apply(world, inbound(text, world=world)).other == 1
    assert world.suppressions.list() == []


def test_start_lifts_the_numbers_own_opt_out():
    world = World()
    apply(world, inbound("STOP", world=world))
    summary = apply(world, inbound("START", minutes=1, world=world))

    assert summary.opted_in == 1
    assert world.suppressions.list() == []


def test_start_never_lifts_an_operators_entry():
    world = World()
    world.suppressions.add(Suppression(channel=Channel.SMS, address="+14255551234", reason="Operator: fraud", created_at=world.clock.now()))

    assert apply(world, inbound("START", minutes=1, world=world)).opted_in == 0
    assert world.suppressions.find(Channel.SMS, ["+14255551234"])


def test_a_start_older_than_the_stop_it_meets_does_not_lift_it():
    world = World()
    apply(world, inbound("STOP", minutes=5, world=world))
    apply(world, inbound("START", minutes=1, world=world))  # sent before the STOP, delivered after it
    assert world.suppressions.find(Channel.SMS, ["+14255551234"])
