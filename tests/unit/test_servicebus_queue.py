"""The Service Bus queue adapter against a fake of the SDK surface it uses. No network.

``FakeServiceBus`` stands in for ``ServiceBusClient``: ``get_queue_sender`` and
``get_queue_receiver`` hand out fakes of ``ServiceBusSender`` and ``ServiceBusReceiver`` over one
queue and its dead-letter sub-queue, with the SDK's peek-lock rules as far as the adapter relies
on them (locks, AMQP delivery counts that start at 0, bytes in received application properties,
``MessageLockLostError`` and ``MessageAlreadySettled``). Every call lands in ``bus.calls``, so
tests can check what was asked and in which order.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    ServiceBusConnectionError,
    ServiceBusError,
)

from shared.adapters.servicebus_queue import MALFORMED_MESSAGE, ServiceBusQueue
from shared.domain.errors import LockLost
from shared.service.ports import OutgoingMessage, ReceivedMessage

LOCK = timedelta(seconds=60)
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------- the fake SDK


@dataclass
class Stored:
    """One message as the broker holds it."""

    body: bytes
    message_id: str
    application_properties: dict
    content_type: str | None
    sequence_number: int
    enqueued_time_utc: datetime
    visible_at: datetime
    deliveries: int = 0
    lock_token: uuid.UUID | None = None
    locked_until: datetime | None = None
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None
    correlation_id: str | None = None


class FakeReceivedMessage:
    """What the adapter reads of a ``ServiceBusReceivedMessage``: one delivery (or peek) of a message."""

    def __init__(self, stored: Stored, *, peeked: bool) -> None:
        self.stored = stored
        self.message_id = stored.message_id
        self.sequence_number = stored.sequence_number
        self.enqueued_time_utc = stored.enqueued_time_utc
        self.content_type = stored.content_type
        self.correlation_id = stored.correlation_id
        self.dead_letter_reason = stored.dead_letter_reason
        self.dead_letter_error_description = stored.dead_letter_error_description
        # AMQP's delivery count: earlier deliveries for a received message, all of them when peeked.
        self.delivery_count = stored.deliveries if peeked else stored.deliveries - 1
        self.lock_token = None if peeked else stored.lock_token
        self.locked_until_utc = None if peeked else stored.locked_until
        self.settled = peeked
        # Like the SDK: string keys and values come back as bytes, the broker's DLQ keys included.
        properties = {k.encode(): v.encode() if isinstance(v, str) else v for k, v in stored.application_properties.items()}
        if stored.dead_letter_reason is not None:
            properties[b"DeadLetterReason"] = stored.dead_letter_reason.encode()
            properties[b"DeadLetterErrorDescription"] = (stored.dead_letter_error_description or "").encode()
        self.application_properties = properties or None

    @property
    def body(self):
        # A data body is a fresh generator of sections on each access, as in the SDK.
        middle = len(self.stored.body) // 2
        return (section for section in (self.stored.body[:middle], self.stored.body[middle:]))


class FakeSender:
    def __init__(self, bus: FakeServiceBus, queue_name: str) -> None:
        self.bus = bus
        self.queue_name = queue_name
        self.closed = False

    def send_messages(self, message) -> None:
        if self.closed:
            raise ValueError("The handler has already been shutdown. Please use ServiceBusClient to create a new instance.")
        if self.bus.send_failures:
            raise self.bus.send_failures.pop(0)
        self.bus.calls.append(("send", message.message_id))
        self.bus.sent.append(message)
        with self.bus.changed:
            self.bus.next_sequence += 1
            body = b"".join(message.body)
            self.bus.active.append(
                Stored(
                    body=body,
                    message_id=message.message_id,
                    application_properties=dict(message.application_properties or {}),
                    content_type=message.content_type,
                    sequence_number=self.bus.next_sequence,
                    enqueued_time_utc=now(),
                    visible_at=message.scheduled_enqueue_time_utc or now(),
                    correlation_id=message.correlation_id,
                )
            )
            self.bus.changed.notify_all()

    def close(self) -> None:
        self.closed = True


class FakeReceiver:
    def __init__(self, bus: FakeServiceBus, sub_queue) -> None:
        self.bus = bus
        self.sub_queue = sub_queue
        self.where = "dlq" if sub_queue == ServiceBusSubQueue.DEAD_LETTER else "queue"
        self.closed = False
        self.entered = False

    @property
    def store(self) -> list[Stored]:
        return self.bus.dead if self.where == "dlq" else self.bus.active

    def __enter__(self) -> FakeReceiver:
        self.entered = True
        return self

    def receive_messages(self, max_message_count=1, max_wait_time=None):
        if max_wait_time is not None and max_wait_time <= 0:
            raise ValueError("The max_wait_time must be greater than 0.")  # as the SDK does
        self.bus.calls.append(("receive", self.where, max_message_count))
        deadline = time.monotonic() + (max_wait_time or 60)
        with self.bus.changed:
            while True:
                visible = [m for m in self.store if m.visible_at <= now() and not (m.locked_until and m.locked_until > now())]
                if visible or time.monotonic() >= deadline:
                    break
                self.bus.changed.wait(deadline - time.monotonic())
            batch = []
            for stored in visible[:max_message_count]:
                stored.deliveries += 1
                stored.lock_token = uuid.uuid4()
                stored.locked_until = now() + LOCK
                batch.append(FakeReceivedMessage(stored, peeked=False))
            return batch

    def peek_messages(self, max_message_count=1, *, sequence_number=0, **kwargs):
        self.bus.calls.append(("peek", self.where, sequence_number, max_message_count))
        ordered = sorted(self.store, key=lambda m: m.sequence_number)
        return [FakeReceivedMessage(m, peeked=True) for m in ordered if m.sequence_number >= sequence_number][:max_message_count]

    def _check(self, message: FakeReceivedMessage, action: str) -> Stored:
        if action in self.bus.settle_failures:
            raise self.bus.settle_failures.pop(action)
        if message.settled:
            raise MessageAlreadySettled(action=action)
        stored = message.stored
        if (stored not in self.store or stored.lock_token != message.lock_token
                or stored.locked_until is None or stored.locked_until <= now()):
            raise MessageLockLostError()
        return stored

    def complete_message(self, message) -> None:
        stored = self._check(message, "complete")
        self.bus.calls.append(("complete", self.where, stored.sequence_number))
        self.store.remove(stored)
        message.settled = True

    def abandon_message(self, message) -> None:
        stored = self._check(message, "abandon")
        self.bus.calls.append(("abandon", self.where, stored.sequence_number))
        stored.lock_token = stored.locked_until = None
        message.settled = True

    def dead_letter_message(self, message, reason=None, error_description=None) -> None:
        stored = self._check(message, "dead_letter")
        self.bus.calls.append(("dead_letter", self.where, stored.sequence_number, reason, error_description))
        self.store.remove(stored)
        stored.lock_token = stored.locked_until = None
        stored.dead_letter_reason, stored.dead_letter_error_description = reason, error_description
        self.bus.dead.append(stored)
        message.settled = True

    def renew_message_lock(self, message) -> datetime:
        stored = self._check(message, "renew_lock")
        self.bus.calls.append(("renew_lock", self.where, stored.sequence_number))
        stored.locked_until = now() + LOCK
        return stored.locked_until

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeServiceBus:
    """The ``ServiceBusClient`` surface the adapter uses, over one queue and its dead letters."""

    calls: list = field(default_factory=list)
    sent: list = field(default_factory=list)
    active: list[Stored] = field(default_factory=list)
    dead: list[Stored] = field(default_factory=list)
    senders: list[FakeSender] = field(default_factory=list)
    receivers: list[FakeReceiver] = field(default_factory=list)
    send_failures: list[Exception] = field(default_factory=list)
    settle_failures: dict[str, Exception] = field(default_factory=dict)
    next_sequence: int = 0
    closed: bool = False
    changed: threading.Condition = field(default_factory=threading.Condition)

    def get_queue_sender(self, queue_name: str, **kwargs) -> FakeSender:
        time.sleep(0.01)  # widens the window in which two threads could both create one
        sender = FakeSender(self, queue_name)
        self.senders.append(sender)
        return sender

    def get_queue_receiver(self, queue_name: str, *, sub_queue=None, receive_mode=None, **kwargs) -> FakeReceiver:
        receiver = FakeReceiver(self, sub_queue)
        self.receivers.append(receiver)
        return receiver

    def close(self) -> None:
        self.closed = True

    def dead_letter_stored(self, n: int, reason: str = "RequestRejected", description: str = "bad") -> Stored:
        """Put a message straight into the dead-letter sub-queue, as if dead-lettered earlier."""
        self.next_sequence += 1
        stored = Stored(
            body=json.dumps({"n": n}).encode(),
            message_id=f"msg-{n}",
            application_properties={"kind": "email", "attempt": 3},
            content_type="application/json",
            sequence_number=self.next_sequence,
            enqueued_time_utc=T0,
            visible_at=T0,
            deliveries=2,
            dead_letter_reason=reason,
            dead_letter_error_description=description,
        )
        self.dead.append(stored)
        return stored


@pytest.fixture
def bus() -> FakeServiceBus:
    return FakeServiceBus()


@pytest.fixture
def queue(bus):
    adapter = ServiceBusQueue(bus, "notifications")
    yield adapter
    adapter.close()


def message(n, **kwargs) -> OutgoingMessage:
    return OutgoingMessage(body={"n": n}, message_id=f"msg-{n}", **kwargs)


def calls(bus, *kinds) -> list:
    return [c for c in bus.calls if c[0] in kinds]


# ---------------------------------------------------------------------------- sending


def test_send_sets_the_message_id_properties_json_body_and_content_type(bus, queue):
    queue.send(OutgoingMessage(body={"notificationId": "n-1", "attempt": 2}, message_id="n-1:2",
                               application_properties={"notificationId": "n-1", "attempt": 2}))

    [sent] = bus.sent
    assert sent.message_id == "n-1:2"
    assert sent.application_properties == {"notificationId": "n-1", "attempt": 2}
    assert sent.content_type == "application/json"
    assert json.loads(b"".join(sent.body)) == {"notificationId": "n-1", "attempt": 2}
    assert sent.scheduled_enqueue_time_utc is None


def test_a_scheduled_message_is_sent_with_its_scheduled_enqueue_time_in_utc(bus, queue):
    at = datetime(2026, 11, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))

    queue.send(message(1, scheduled_at=at))

    [sent] = bus.sent
    assert sent.scheduled_enqueue_time_utc == at
    assert sent.scheduled_enqueue_time_utc.utcoffset() == timedelta(0)


def test_a_naive_scheduled_time_is_refused_rather_than_guessed(bus, queue):
    with pytest.raises(ValueError):
        queue.send(message(1, scheduled_at=datetime(2026, 11, 1, 12, 0)))
    assert bus.sent == []


def test_the_sender_is_created_on_first_send_once_and_reused_across_threads(bus, queue):
    assert bus.senders == []

    threads = [threading.Thread(target=queue.send, args=(message(n),)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.send(message("last"))

    assert len(bus.senders) == 1
    assert len(bus.sent) == 9


def test_a_sender_closed_under_the_adapter_is_replaced_once_and_the_message_still_sent(bus, queue):
    queue.send(message(1))
    bus.senders[0].close()

    queue.send(message(2))

    assert len(bus.senders) == 2
    assert [m.message_id for m in bus.sent] == ["msg-1", "msg-2"]


def test_a_send_failure_that_is_not_a_closed_sender_propagates_without_a_new_sender(bus, queue):
    bus.send_failures.append(ServiceBusConnectionError(message="network down"))

    with pytest.raises(ServiceBusError):
        queue.send(message(1))
    assert len(bus.senders) == 1


# ---------------------------------------------------------------------------- receiving


def test_a_received_message_maps_body_ids_properties_counts_and_times(bus, queue):
    before = now()
    queue.send(OutgoingMessage(body={"notificationId": "n-1", "nested": [1, None]}, message_id="n-1:1",
                               application_properties={"notificationId": "n-1", "attempt": 1}))

    [received] = queue.receive()

    stored = bus.active[0]
    assert received.body == {"notificationId": "n-1", "nested": [1, None]}
    assert received.message_id == "n-1:1"
    assert received.application_properties == {"notificationId": "n-1", "attempt": 1}  # decoded from bytes
    assert received.delivery_count == 1  # AMQP said 0: the port counts this delivery
    assert received.sequence_number == stored.sequence_number
    assert received.lock_token == str(stored.lock_token)
    assert received.locked_until == stored.locked_until
    assert received.enqueued_at >= before


def test_a_correlation_id_is_sent_as_the_messages_and_read_back_from_it(bus, queue):
    queue.send(message(1, correlation_id="order-42"))

    [received] = queue.receive()

    assert bus.sent[0].correlation_id == "order-42"
    assert received.correlation_id == "order-42"


def test_a_redelivered_message_counts_every_delivery(bus, queue):
    queue.send(message(1))
    queue.abandon(queue.receive()[0])

    [again] = queue.receive()

    assert again.delivery_count == 2


def test_receive_without_a_wait_still_asks_the_sdk_for_a_positive_wait(bus, queue):
    # The SDK refuses max_wait_time=0 (the fake does too); a receive is always a round trip.
    assert queue.receive(max_wait=0) == []
    assert calls(bus, "receive")


def test_the_receiver_is_opened_once_and_reused(bus, queue):
    queue.send(message(1))
    queue.send(message(2))
    queue.complete(queue.receive()[0])
    queue.complete(queue.receive()[0])

    [receiver] = bus.receivers
    assert receiver.entered and receiver.where == "queue"


def test_a_message_whose_body_is_not_a_json_object_is_dead_lettered_instead_of_returned(bus, queue):
    bus.next_sequence += 1
    bus.active.append(Stored(body=b"not json", message_id="junk", application_properties={}, content_type=None,
                             sequence_number=bus.next_sequence, enqueued_time_utc=now(), visible_at=now()))
    queue.send(message("fine"))

    assert [m.body for m in queue.receive(max_messages=10)] == [{"n": "fine"}]
    [(_, _, _, reason, description)] = calls(bus, "dead_letter")
    assert reason == MALFORMED_MESSAGE
    assert "not JSON" in description


# ---------------------------------------------------------------------------- settling


def test_complete_settles_through_the_receiver_that_received_the_message(bus, queue):
    queue.send(message(1))
    [received] = queue.receive()

    queue.complete(received)

    assert calls(bus, "complete") == [("complete", "queue", received.sequence_number)]
    assert bus.active == []


def test_dead_letter_passes_the_reason_and_description(bus, queue):
    queue.send(message(1))
    [received] = queue.receive()

    queue.dead_letter(received, "RequestRejected", "ACS found the payload invalid.")

    assert calls(bus, "dead_letter") == [
        ("dead_letter", "queue", received.sequence_number, "RequestRejected", "ACS found the payload invalid.")
    ]
    [dead] = bus.dead
    assert dead.message_id == "msg-1"


def test_renew_lock_returns_the_message_with_the_new_lock_time(bus, queue):
    queue.send(message(1))
    [received] = queue.receive()
    bus.active[0].locked_until = now() + timedelta(seconds=5)  # most of the lock is used up
    received = replace(received, locked_until=bus.active[0].locked_until)

    renewed = queue.renew_lock(received)

    assert renewed.locked_until > received.locked_until
    assert renewed.lock_token == received.lock_token
    queue.complete(renewed)


@pytest.mark.parametrize("settle", ["complete", "abandon", "dead_letter", "renew_lock"])
def test_settling_after_the_sdk_reports_the_lock_lost_raises_lock_lost(bus, queue, settle):
    queue.send(message(1))
    [received] = queue.receive()
    bus.active[0].locked_until = now() - timedelta(seconds=1)  # expired at the broker

    with pytest.raises(LockLost):
        settle_with(queue, settle, received)
    with pytest.raises(LockLost):  # and the adapter has let go of it
        settle_with(queue, settle, received)
    assert len(bus.active) == 1


@pytest.mark.parametrize("settle", ["complete", "abandon", "dead_letter", "renew_lock"])
def test_settling_a_lock_token_the_adapter_never_held_raises_lock_lost(bus, queue, settle):
    made_up = ReceivedMessage(body={}, message_id="m", application_properties={}, delivery_count=1, enqueued_at=T0,
                              sequence_number=1, lock_token=str(uuid.uuid4()), locked_until=T0)
    with pytest.raises(LockLost):
        settle_with(queue, settle, made_up)


@pytest.mark.parametrize("settle", ["complete", "abandon", "dead_letter", "renew_lock"])
def test_settling_a_message_that_was_already_settled_raises_lock_lost(bus, queue, settle):
    queue.send(message(1))
    [received] = queue.receive()
    queue.complete(received)

    with pytest.raises(LockLost):
        settle_with(queue, settle, received)


def test_the_sdks_already_settled_error_is_lock_lost_too(bus, queue):
    queue.send(message(1))
    [received] = queue.receive()
    bus.settle_failures["complete"] = MessageAlreadySettled(action="complete")

    with pytest.raises(LockLost):
        queue.complete(received)


def test_a_connection_failure_while_settling_is_not_lock_lost_and_the_message_can_be_settled_again(bus, queue):
    queue.send(message(1))
    [received] = queue.receive()
    bus.settle_failures["complete"] = ServiceBusConnectionError(message="network down")

    with pytest.raises(ServiceBusError) as raised:
        queue.complete(received)
    assert not isinstance(raised.value, LockLost)

    queue.complete(received)
    assert bus.active == []


def settle_with(queue, settle: str, received) -> None:
    if settle == "dead_letter":
        queue.dead_letter(received, "ProcessingError", "boom")
    else:
        getattr(queue, settle)(received)


# ---------------------------------------------------------------------------- dead letters


def test_dead_letters_are_peeked_from_the_start_with_reason_description_and_times(bus, queue):
    stored = bus.dead_letter_stored(1, "RequestRejected", "ACS found the payload invalid.")

    [dead] = queue.dead_letters()

    assert dead.body == {"n": 1}
    assert dead.message_id == "msg-1"
    assert dead.reason == "RequestRejected"
    assert dead.description == "ACS found the payload invalid."
    assert dead.application_properties == {"kind": "email", "attempt": 3}  # broker keys left out
    assert dead.delivery_count == 2  # peeked: the broker's count as is
    assert dead.sequence_number == stored.sequence_number
    assert dead.enqueued_at == T0
    assert dead.dead_lettered_at == T0  # Service Bus records no dead-lettering time
    assert calls(bus, "receive") == []  # browsed, never locked
    assert calls(bus, "peek")[0][2] == 1  # from the first sequence number, not where the SDK left off


def test_dead_letters_are_paged_through_up_to_the_limit(bus, queue):
    for n in range(250):
        bus.dead_letter_stored(n)

    assert [d.body["n"] for d in queue.dead_letters(limit=230)] == list(range(230))
    assert queue.dead_letter_count() == 250


def test_a_dead_letter_with_a_body_that_is_not_json_is_still_listed(bus, queue):
    bus.dead_letter_stored(1).body = b"not json"

    [dead] = queue.dead_letters()

    assert dead.body == {"raw": "not json"}


def test_replay_sends_the_copy_before_it_completes_the_dead_letter(bus, queue):
    dead = bus.dead_letter_stored(1)

    assert queue.replay_dead_letter(dead.sequence_number, "msg-1:replay-1") is True

    settling = calls(bus, "send", "complete", "abandon")
    assert settling == [("send", "msg-1:replay-1"), ("complete", "dlq", dead.sequence_number)]
    [copy] = bus.sent
    assert json.loads(b"".join(copy.body)) == {"n": 1}
    assert copy.application_properties == {"kind": "email", "attempt": 3, "replayOf": "msg-1"}
    assert copy.content_type == "application/json"
    assert bus.dead == []
    assert [m.message_id for m in bus.active] == ["msg-1:replay-1"]


def test_replay_keeps_the_dead_letter_when_the_send_fails(bus, queue):
    dead = bus.dead_letter_stored(1)
    bus.send_failures.append(ServiceBusConnectionError(message="network down"))

    with pytest.raises(ServiceBusError):
        queue.replay_dead_letter(dead.sequence_number, "msg-1:replay-1")

    assert calls(bus, "complete") == []
    assert bus.dead == [dead] and dead.lock_token is None  # still there, and unlocked again
    assert queue.replay_dead_letter(dead.sequence_number, "msg-1:replay-1") is True


def test_replay_releases_the_dead_letters_it_had_to_lock_on_the_way(bus, queue):
    first, second, wanted, after = (bus.dead_letter_stored(n) for n in range(4))

    assert queue.replay_dead_letter(wanted.sequence_number, "msg-2:replay") is True

    assert bus.dead == [first, second, after]
    assert all(d.lock_token is None for d in bus.dead)
    assert {c[2] for c in calls(bus, "abandon")} == {first.sequence_number, second.sequence_number, after.sequence_number}


def test_replay_of_a_sequence_number_that_is_not_dead_lettered_returns_false_and_locks_nothing(bus, queue):
    bus.dead_letter_stored(1)
    queue.send(message("active"))

    assert queue.replay_dead_letter(bus.active[0].sequence_number, "x") is False
    assert queue.replay_dead_letter(999, "x") is False
    assert calls(bus, "receive") == []
    assert [m.message_id for m in bus.sent] == ["msg-active"]


def test_a_replayed_copy_whose_dead_letter_lock_was_lost_raises_lock_lost(bus, queue):
    dead = bus.dead_letter_stored(1)
    bus.settle_failures["complete"] = MessageLockLostError()

    with pytest.raises(LockLost):
        queue.replay_dead_letter(dead.sequence_number, "msg-1:replay-1")

    assert [m.message_id for m in bus.sent] == ["msg-1:replay-1"]


def test_remove_dead_letter_deletes_only_that_one(bus, queue):
    keep, gone = bus.dead_letter_stored(1), bus.dead_letter_stored(2)

    assert queue.remove_dead_letter(gone.sequence_number) is True
    assert queue.remove_dead_letter(gone.sequence_number) is False
    assert bus.dead == [keep]


# ---------------------------------------------------------------------------- closing


def test_close_closes_the_sender_and_receivers_but_not_the_client(bus, queue):
    queue.send(message(1))
    queue.receive()
    queue.dead_letters()

    queue.close()

    assert all(s.closed for s in bus.senders) and all(r.closed for r in bus.receivers)
    assert len(bus.receivers) == 2
    assert not bus.closed


# ---------------------------------------------------------------------------- operators over Service Bus


def test_an_operator_replays_a_crash_loop_from_the_service_bus_dead_letter_queue_with_a_new_message_id(bus, queue):
    from shared.domain.commands import DeadLetterFilter, ReplayDeadLetters
    from shared.service import operator
    from tests.fakes import FakeClock, FakeSuppressionList
    from tests.unit.builders import World, email_command

    world = World()
    notification, _ = world.submit(email_command())
    stored = bus.dead_letter_stored(1, "MaxDeliveryCountExceeded", "Message could not be consumed after 10 delivery attempts.")
    stored.body = json.dumps({"notificationId": notification.id, "attempt": 1}).encode()
    stored.message_id = f"{notification.id}:1"

    [listed] = operator.list_dead_letters(DeadLetterFilter(), ledger=world.ledger, dead_letters=queue)
    result = operator.replay_dead_letters(
        ReplayDeadLetters(actor="cli:ops", ids=(listed.id,)),
        ledger=world.ledger, dead_letters=queue, publisher=queue, suppressions=FakeSuppressionList(), clock=FakeClock(),
    )

    assert listed.id == f"q-{stored.sequence_number}" and listed.source == "queue"
    assert listed.reason == "MaxDeliveryCountExceeded" and listed.notification_id == notification.id
    # The ledger still has it queued (the dispatcher crashed on it every time): it is queued again
    # under a new id, not recorded as a replay.
    assert result.counts() == {"requeued": 1}
    [copy] = bus.sent
    assert copy.message_id.startswith(f"{notification.id}:1:requeue:") and copy.message_id != stored.message_id
    assert json.loads(b"".join(copy.body)) == {"notificationId": notification.id, "attempt": 1}
    assert calls(bus, "send", "complete")[-2:] == [("send", copy.message_id), ("complete", "dlq", stored.sequence_number)]
    assert bus.dead == []
