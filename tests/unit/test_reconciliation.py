import logging
from datetime import timedelta

from shared.domain.commands import FailureRateThresholds, Reconcile
from shared.domain.model import Channel, DeliveryReport, NotificationStatus
from shared.service import handlers
from tests.unit.builders import World, email_command

THRESHOLDS = FailureRateThresholds(warning=0.01, critical=0.02, window_minutes=60, min_sent=50)


def reconcile(world: World, **kwargs):
    now = world.clock.now()
    cmd = Reconcile(report_deadline=now - timedelta(hours=1), requeue_before=now - timedelta(minutes=2), **kwargs)
    return handlers.reconcile(cmd, ledger=world.ledger, publisher=world.publisher, suppressions=world.suppressions, clock=world.clock)


def sent_with_outcomes(world: World, delivered: int, bounced: int) -> None:
    for i in range(delivered + bounced):
        address = f"u{i}@example.com"
        n, _ = world.submit(email_command(address))
        world.dispatch(n.id)
        status = "Delivered" if i < delivered else "Bounced"
        world.reports(DeliveryReport(event_id=f"e{i}", channel=Channel.EMAIL, message_id=n.id, recipient=address, status=status))
    world.clock.advance(1)


def test_a_send_with_no_report_by_the_deadline_becomes_unconfirmed_and_a_late_report_still_wins():
    world = World()
    n, _ = world.submit(email_command("a@example.com"))
    world.dispatch(n.id)
    world.clock.advance(3601)

    assert reconcile(world).unconfirmed == 1
    assert world.ledger.get(n.id).status is NotificationStatus.UNCONFIRMED
    world.reports(DeliveryReport(event_id="late", channel=Channel.EMAIL, message_id=n.id, recipient="a@example.com", status="Delivered"))
    assert world.ledger.get(n.id).status is NotificationStatus.DELIVERED


def test_a_notification_interrupted_between_ledger_and_queue_is_queued_again():
    world = World()
    world.publisher.fail_next = OSError("queue down")
    try:
        world.submit(email_command())
    except OSError:
        pass
    world.clock.advance(180)

    assert reconcile(world).requeued == 1
    assert len(world.publisher.sent) == 1


def test_a_failure_rate_over_the_critical_threshold_raises_a_structured_alert(caplog):
    world = World()
    sent_with_outcomes(world, delivered=97, bounced=3)

    with caplog.at_level(logging.WARNING):
        summary = reconcile(world, thresholds=THRESHOLDS)

    [alert] = summary.alerts
    assert (alert.channel, alert.level, alert.rate, alert.sent) == (Channel.EMAIL, "critical", 0.03, 100)
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "notify.failure_rate"]
    assert record.levelno == logging.ERROR and record.failureRate == 0.03


def test_a_failure_rate_between_the_thresholds_is_a_warning():
    world = World()
    sent_with_outcomes(world, delivered=66, bounced=1)
    [alert] = reconcile(world, thresholds=THRESHOLDS).alerts
    assert alert.level == "warning"


def test_too_few_sends_raise_no_alert_whatever_the_rate():
    world = World()
    sent_with_outcomes(world, delivered=5, bounced=5)
    assert reconcile(world, thresholds=THRESHOLDS).alerts == []


def test_records_older_than_the_retention_are_purged():
    world = World()
    old, _ = world.submit(email_command("old@example.com"))
    world.clock.advance(86400 * 10)
    recent, _ = world.submit(email_command("new@example.com"))

    summary = reconcile(world, purge_before=world.clock.now() - timedelta(days=5))

    assert summary.purged == 1
    assert world.ledger.get(old.id) is None and world.ledger.get(recent.id) is not None


def test_a_parked_report_is_applied_even_behind_hundreds_of_reports_for_other_senders():
    world = World()
    n, _ = world.submit(email_command("a@example.com"))
    world.ledger.park_reports(
        [DeliveryReport(event_id=f"f{i}", channel=Channel.EMAIL, message_id=f"foreign-{i}", status="Delivered") for i in range(600)],
        world.clock.now(),
    )
    world.dispatch(n.id)
    # The bounce was parked in the moment between the dispatcher's send and its ledger write.
    world.ledger.park_reports(
        [DeliveryReport(event_id="mine", channel=Channel.EMAIL, message_id=n.id, recipient="a@example.com", status="Bounced")],
        world.clock.now(),
    )

    assert reconcile(world).parked_applied == 1
    assert world.ledger.get(n.id).status is NotificationStatus.BOUNCED
    assert world.suppressions.find(Channel.EMAIL, ["a@example.com"])
    world.clock.advance(86400 + 1)
    reconcile(world)
    assert world.ledger.parked == {}  # the foreign ones expired


def test_a_notification_suppressed_before_sending_is_neither_sent_nor_a_failure():
    from shared.domain.model import Suppression

    world = World()
    world.suppressions.add(Suppression(channel=Channel.EMAIL, address="gone@example.com", reason="Bounced", created_at=world.clock.now()))
    n, _ = world.submit(email_command("gone@example.com"))
    world.dispatch(n.id)
    world.clock.advance(1)

    report = handlers.reconciliation_report(ledger=world.ledger, start=world.clock.now() - timedelta(hours=1), end=world.clock.now(), channel=None)

    email = report["channels"]["email"]
    assert (email["accepted"], email["suppressed"], email["suppressedBeforeSending"], email["sent"], email["failureRate"]) == (1, 1, 1, 0, 0.0)
