from datetime import timedelta

from shared.domain.model import NotificationStatus
from shared.service.handlers import Completed, Rescheduled
from shared.service.quota import SendQuota
from tests.fakes import FakeRateLimiter
from tests.unit.builders import World, email_command, sms_command


def world_with_quota(**quotas: SendQuota) -> World:
    world = World()
    world.rate_limiter = FakeRateLimiter(quotas)
    return world


def test_a_notification_over_the_email_quota_is_deferred_not_failed():
    world = world_with_quota(email=SendQuota(per_minute=2, per_hour=None))
    ids = [world.submit(email_command(f"u{i}@example.com"))[0].id for i in range(3)]

    outcomes = [world.dispatch(nid) for nid in ids]

    assert [type(o) for o in outcomes] == [Completed, Completed, Rescheduled]
    assert len(world.email.sent) == 2
    deferred = world.ledger.get(ids[2])
    assert deferred.status is NotificationStatus.ACCEPTED and deferred.attempts == 0
    retry = world.publisher.sent[-1]
    assert retry.body["notificationId"] == ids[2]
    assert timedelta(seconds=60) <= retry.scheduled_at - world.clock.now() <= timedelta(seconds=62)


def test_a_deferred_notification_is_sent_once_the_window_has_room():
    world = world_with_quota(email=SendQuota(per_minute=1, per_hour=None))
    first, second = (world.submit(email_command(f"u{i}@example.com"))[0].id for i in range(2))
    world.dispatch(first)
    deferral = world.dispatch(second)

    world.clock.advance(deferral.delay_seconds)
    assert isinstance(world.dispatch(second), Completed)
    assert [e.operation_id for e in world.email.sent] == [first, second]


def test_an_sms_takes_one_unit_per_recipient():
    world = world_with_quota(sms=SendQuota(per_minute=3, per_hour=None))
    three, _ = world.submit(sms_command("+14255551001", "+14255551002", "+14255551003"))
    one_more, _ = world.submit(sms_command("+14255551004"))

    assert isinstance(world.dispatch(three.id), Completed)
    assert isinstance(world.dispatch(one_more.id), Rescheduled)


def test_a_message_for_a_notification_already_sent_takes_no_quota():
    world = world_with_quota(email=SendQuota(per_minute=1, per_hour=None))
    n, _ = world.submit(email_command())
    world.dispatch(n.id)

    assert isinstance(world.dispatch(n.id), Completed)  # a redelivered message
    assert len(world.rate_limiter.calls) == 1
