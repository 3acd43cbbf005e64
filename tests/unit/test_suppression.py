from shared.domain.model import Channel, DeliveryReport, NotificationStatus, RecipientStatus, Suppression
from tests.unit.builders import World, email_command


def deliver_report(world: World, n_id: str, address: str, status: str, event_id: str) -> None:
    world.reports(DeliveryReport(event_id=event_id, channel=Channel.EMAIL, message_id=n_id, recipient=address, status=status, detail="550 5.1.1"))


def test_a_bounced_address_is_not_sent_to_again():
    world = World()
    first, _ = world.submit(email_command("gone@example.com"))
    world.dispatch(first.id)
    deliver_report(world, first.id, "gone@example.com", "Bounced", "e1")

    second, _ = world.submit(email_command("Gone@Example.com"))
    world.dispatch(second.id)

    assert len(world.email.sent) == 1
    stored = world.ledger.get(second.id)
    assert stored.status is NotificationStatus.SUPPRESSED
    assert stored.recipients[0].reason.startswith("OnSuppressionList: Bounced")
    assert stored.history[-1].event == "suppressed"


def test_an_acs_suppressed_report_also_suppresses_the_address():
    world = World()
    first, _ = world.submit(email_command("quiet@example.com"))
    world.dispatch(first.id)
    deliver_report(world, first.id, "quiet@example.com", "Suppressed", "e1")

    assert world.suppressions.find(Channel.EMAIL, ["quiet@example.com"])


def test_the_other_recipients_of_a_notification_are_still_sent_to():
    world = World()
    world.suppressions.add(Suppression(channel=Channel.EMAIL, address="gone@example.com", reason="Bounced", created_at=world.clock.now()))
    n, _ = world.submit(email_command("gone@example.com", "here@example.com"))

    world.dispatch(n.id)

    [sent] = world.email.sent
    assert [a.address for a in sent.to] == ["here@example.com"]
    stored = world.ledger.get(n.id)
    assert {r.address: r.status for r in stored.recipients} == {
        "gone@example.com": RecipientStatus.SUPPRESSED,
        "here@example.com": RecipientStatus.SENT,
    }


def test_a_delivered_report_suppresses_nothing_and_removal_lets_sending_resume():
    world = World()
    first, _ = world.submit(email_command("back@example.com"))
    world.dispatch(first.id)
    deliver_report(world, first.id, "back@example.com", "Bounced", "e1")
    assert world.suppressions.remove(Channel.EMAIL, "back@example.com")

    second, _ = world.submit(email_command("back@example.com"))
    world.dispatch(second.id)
    deliver_report(world, second.id, "back@example.com", "Delivered", "e2")

    assert len(world.email.sent) == 2
    assert world.suppressions.list() == []
