import time
import uuid

import pytest

from shared.domain.errors import IdempotencyConflict
from shared.domain.model import NotificationStatus
from tests.unit.builders import World, email_command


def test_an_accepted_notification_is_recorded_and_queued_once():
    world = World()
    notification, created = world.submit(email_command("a@example.com"))

    assert created
    stored = world.ledger.get(notification.id)
    assert stored.status is NotificationStatus.ACCEPTED
    assert [h.event for h in stored.history] == ["accepted", "queued"]
    assert [m.body for m in world.publisher.sent] == [{"notificationId": notification.id, "attempt": 1}]


def test_the_same_idempotency_key_and_body_returns_the_first_notification_and_queues_nothing_new():
    world = World()
    first, _ = world.submit(email_command(key="k1"))
    again, created = world.submit(email_command(key="k1"))

    assert not created
    assert again.id == first.id
    assert len(world.publisher.sent) == 1
    assert len(world.ledger.rows) == 1


def test_the_same_idempotency_key_with_a_different_body_is_a_conflict():
    world = World()
    first, _ = world.submit(email_command(key="k1", request_hash="h1"))

    with pytest.raises(IdempotencyConflict) as raised:
        world.submit(email_command(key="k1", request_hash="other"))
    assert raised.value.existing_id == first.id
    assert len(world.publisher.sent) == 1


def test_a_retry_after_a_failed_enqueue_queues_the_notification_that_was_recorded():
    world = World()
    world.publisher.fail_next = OSError("queue unavailable")
    with pytest.raises(OSError):
        world.submit(email_command(key="k1"))
    recorded = next(iter(world.ledger.rows.values()))
    assert recorded.queued_at is None

    again, created = world.submit(email_command(key="k1"))

    assert not created and again.id == recorded.id
    assert [m.body["notificationId"] for m in world.publisher.sent] == [recorded.id]
    assert world.ledger.get(recorded.id).queued_at is not None


def test_notification_ids_say_when_they_were_made_even_when_made_thousands_a_second():
    # The Table Storage ledger partitions notifications by the hour in their id, and reads a
    # batch's notifications by ranges of ids: ids must sort as they were made, and keep to the
    # clock however many are made in one millisecond.
    world = World()
    before = time.time()
    ids = [world.submit(email_command("a@example.com"))[0].id for _ in range(3000)]
    after = time.time()

    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    made = [uuid.UUID(i).int >> 80 for i in ids]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert int(before * 1000) <= made[0] and made[-1] <= int(after * 1000) + 1
