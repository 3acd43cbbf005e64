"""Contract tests for the queue port (``MessagePublisher`` + ``MessageConsumer``).

Every test takes ``queue_factory`` and runs once per implementation: the embedded SQLite queue,
and Azure Service Bus when a namespace is configured (``SERVICEBUS_FULLY_QUALIFIED_NAMESPACE`` with
``DefaultAzureCredential``, or ``SERVICEBUS_CONNECTION_STRING``; the queue is
``SERVICEBUS_TEST_QUEUE``, default ``notifications-test``, and is purged first). Tests that travel
in time take the ``clock`` fixture, which skips implementations whose time cannot be faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.adapters.embedded_queue import EmbeddedQueue
from shared.adapters.servicebus_queue import ServiceBusQueue
from shared.domain.errors import LockLost
from shared.service.ports import OutgoingMessage

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, start: datetime = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


class EmbeddedQueueFactory:
    """Opens queues on one SQLite file, all sharing one fake clock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock: FakeClock | None = FakeClock()

    def __call__(self, name: str = "notifications", **options) -> EmbeddedQueue:
        return EmbeddedQueue(self.path, name, clock=self.clock, **options)


NO_SERVICEBUS = (
    "no Service Bus namespace configured "
    "(set SERVICEBUS_FULLY_QUALIFIED_NAMESPACE or SERVICEBUS_CONNECTION_STRING)"
)


class ServiceBusQueueFactory:
    """Opens adapters on one real, pre-created Service Bus queue. Real time only: no clock."""

    clock: FakeClock | None = None

    def __init__(self, client, queue_name: str) -> None:
        self.client = client
        self.queue_name = queue_name
        self.opened: list[ServiceBusQueue] = []

    @classmethod
    def from_environment(cls) -> ServiceBusQueueFactory:
        from azure.servicebus import ServiceBusClient

        queue_name = os.environ.get("SERVICEBUS_TEST_QUEUE") or "notifications-test"
        if connection_string := os.environ.get("SERVICEBUS_CONNECTION_STRING"):
            return cls(ServiceBusClient.from_connection_string(connection_string), queue_name)
        if namespace := os.environ.get("SERVICEBUS_FULLY_QUALIFIED_NAMESPACE"):
            from azure.identity import DefaultAzureCredential

            return cls(ServiceBusClient(namespace, DefaultAzureCredential()), queue_name)
        pytest.skip(NO_SERVICEBUS)

    def __call__(self, name: str = "notifications", **options) -> ServiceBusQueue:
        if name != "notifications":
            pytest.skip("Service Bus runs against one pre-created test queue; a second named queue is not provisioned")
        if options:
            pytest.skip(
                f"{', '.join(sorted(options))}: a property of the Service Bus queue itself, set when it is "
                "created, not an option of the client"
            )
        queue = ServiceBusQueue(self.client, self.queue_name)
        self.opened.append(queue)
        return queue

    def purge(self) -> None:
        """Empty the queue and its dead letters, and cancel messages scheduled by earlier runs.

        Messages still locked by an earlier run that died come back only when their locks expire.
        """
        from azure.servicebus import ServiceBusMessageState, ServiceBusReceiveMode, ServiceBusSubQueue

        with self.client.get_queue_receiver(self.queue_name) as browser:
            scheduled = [
                m.sequence_number
                for m in browser.peek_messages(max_message_count=1000, sequence_number=1)
                if m.state == ServiceBusMessageState.SCHEDULED
            ]
        if scheduled:
            with self.client.get_queue_sender(self.queue_name) as sender:
                sender.cancel_scheduled_messages(scheduled)
        for sub_queue in (None, ServiceBusSubQueue.DEAD_LETTER):
            with self.client.get_queue_receiver(
                self.queue_name, sub_queue=sub_queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
            ) as receiver:
                while receiver.receive_messages(max_message_count=100, max_wait_time=1):
                    pass

    def close(self) -> None:
        for queue in self.opened:
            queue.close()
        self.client.close()


@pytest.fixture(params=["embedded", "servicebus"])
def queue_factory(request, tmp_path):
    if request.param == "embedded":
        yield EmbeddedQueueFactory(tmp_path / "queues" / "local.db")
    elif request.param == "servicebus":
        factory = ServiceBusQueueFactory.from_environment()
        try:
            factory.purge()
            yield factory
        finally:
            factory.close()
    else:
        raise AssertionError(request.param)


@pytest.fixture
def clock(queue_factory) -> FakeClock:
    if queue_factory.clock is None:
        pytest.skip("needs a fake clock; this queue runs on real time")
    return queue_factory.clock


def message(n: int | str, **kwargs) -> OutgoingMessage:
    return OutgoingMessage(body={"n": n}, message_id=f"msg-{n}", **kwargs)


def bodies(received) -> list:
    return [m.body["n"] for m in received]


# ---------------------------------------------------------------------------- sending and receiving


def test_a_sent_message_is_received_with_its_body_and_properties_and_gone_once_completed(queue_factory):
    queue = queue_factory()
    body = {"notification_id": "n-1", "recipients": ["a@example.com"], "nested": {"x": [1, 2.5, None]}}
    properties = {"kind": "email", "attempt": 2}
    queue.send(OutgoingMessage(body=body, message_id="m-1", application_properties=properties))

    [received] = queue.receive()
    assert received.body == body
    assert received.message_id == "m-1"
    assert received.application_properties == properties
    assert received.delivery_count == 1
    assert received.enqueued_at.tzinfo is not None
    assert received.locked_until > received.enqueued_at

    queue.complete(received)
    assert queue.receive() == []
    assert queue.active_count() == 0


def test_a_messages_correlation_id_travels_with_it_and_is_none_when_not_set(queue_factory):
    queue = queue_factory()
    queue.send(message(1, correlation_id="order-42"))
    queue.send(message(2))

    first, second = queue.receive(max_messages=2, max_wait=1)

    assert (first.correlation_id, second.correlation_id) == ("order-42", None)


def test_a_queue_file_from_before_correlation_ids_is_opened_and_keeps_its_messages(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    old_schema = """CREATE TABLE queue_messages (
        sequence_number INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, message_id TEXT NOT NULL,
        body TEXT NOT NULL, properties TEXT NOT NULL, enqueued_at INTEGER NOT NULL, visible_at INTEGER NOT NULL,
        delivery_count INTEGER NOT NULL DEFAULT 0, lock_token TEXT, dead_lettered_at INTEGER,
        dead_letter_reason TEXT, dead_letter_description TEXT)"""
    with sqlite3.connect(path) as conn:
        conn.execute(old_schema)
        conn.execute(
            "INSERT INTO queue_messages (queue, message_id, body, properties, enqueued_at, visible_at)"
            " VALUES ('notifications', 'old-1', '{\"n\": 1}', '{}', 0, 0)"
        )
    conn.close()

    queue = EmbeddedQueue(path, "notifications")
    queue.send(message(2, correlation_id="c-2"))

    received = queue.receive(max_messages=2)
    assert [(m.body["n"], m.correlation_id) for m in received] == [(1, None), (2, "c-2")]
    queue.close()


def test_messages_sent_together_are_all_received_in_order(queue_factory):
    queue = queue_factory()
    queue.send_many([message(n) for n in range(4)])

    assert bodies(queue.receive(max_messages=10)) == [0, 1, 2, 3]


def test_messages_are_received_in_the_order_they_were_sent(queue_factory):
    queue = queue_factory()
    for n in range(5):
        queue.send(message(n))

    first = queue.receive(max_messages=3)
    second = queue.receive(max_messages=3)

    assert bodies(first) == [0, 1, 2]
    assert bodies(second) == [3, 4]
    assert [m.sequence_number for m in first + second] == sorted(m.sequence_number for m in first + second)


def test_receive_on_an_empty_queue_returns_nothing_after_waiting_at_most_max_wait(queue_factory):
    queue = queue_factory()
    assert queue.receive(max_wait=0.1) == []


def test_receive_with_max_wait_returns_a_message_sent_while_it_waits(queue_factory):
    queue = queue_factory()
    sender = threading.Timer(0.1, lambda: queue_factory().send(message(1)))
    sender.start()
    try:
        assert bodies(queue.receive(max_wait=3.0)) == [1]
    finally:
        sender.cancel()


def test_a_scheduled_message_stays_invisible_until_its_time(queue_factory, clock):
    queue = queue_factory()
    queue.send(message("later", scheduled_at=clock.now() + timedelta(minutes=5)))
    queue.send(message("now"))

    [now] = queue.receive(max_messages=10)
    assert now.body["n"] == "now"
    assert queue.active_count() == 2
    queue.complete(now)

    clock.advance(5 * 60)
    assert bodies(queue.receive(max_messages=10)) == ["later"]


def test_a_scheduled_retry_reaches_the_dispatcher_with_the_trace_context_it_was_sent_with(queue_factory, clock):
    from shared.service.handlers import dispatch_message

    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    queue = queue_factory()
    queue.send(dispatch_message("n-1", 2, scheduled_at=clock.now() + timedelta(seconds=30), traceparent=traceparent))

    clock.advance(30)
    [retry] = queue.receive()

    assert retry.application_properties["traceparent"] == traceparent
    assert retry.body == {"notificationId": "n-1", "attempt": 2}


def test_a_locked_message_is_not_delivered_to_a_second_receiver(queue_factory):
    first_receiver, second_receiver = queue_factory(), queue_factory()
    first_receiver.send(message(1))

    assert bodies(first_receiver.receive()) == [1]
    assert second_receiver.receive() == []


# ---------------------------------------------------------------------------- locks


def test_a_message_whose_lock_expired_is_delivered_again_with_a_higher_delivery_count(queue_factory, clock):
    queue = queue_factory(lock_duration=timedelta(seconds=30))
    queue.send(message(1))
    [first] = queue.receive()

    clock.advance(29)
    assert queue.receive() == []
    clock.advance(1)
    [second] = queue.receive()

    assert second.message_id == first.message_id
    assert second.delivery_count == first.delivery_count + 1
    assert second.lock_token != first.lock_token


def test_an_abandoned_message_is_delivered_again_at_once_and_keeps_its_delivery_count(queue_factory):
    queue = queue_factory()
    queue.send(message(1))
    [first] = queue.receive()

    queue.abandon(first)
    [second] = queue.receive()

    assert second.message_id == first.message_id
    assert second.delivery_count == 2


def test_a_renewed_lock_keeps_the_message_from_other_receivers_past_the_original_lock(queue_factory, clock):
    queue = queue_factory(lock_duration=timedelta(seconds=30))
    queue.send(message(1))
    [received] = queue.receive()

    clock.advance(20)
    renewed = queue.renew_lock(received)
    assert renewed.locked_until == clock.now() + timedelta(seconds=30)
    assert renewed.lock_token == received.lock_token

    clock.advance(20)
    assert queue.receive() == []
    queue.complete(renewed)
    assert queue.active_count() == 0


@pytest.mark.parametrize("settle", ["complete", "abandon", "dead_letter", "renew_lock"])
def test_settling_a_message_whose_lock_expired_raises_lock_lost(queue_factory, clock, settle):
    queue = queue_factory(lock_duration=timedelta(seconds=30))
    queue.send(message(1))
    [received] = queue.receive()

    clock.advance(31)
    with pytest.raises(LockLost):
        settle_with(queue, settle, received)
    assert queue.active_count() == 1


@pytest.mark.parametrize("settle", ["complete", "abandon", "dead_letter", "renew_lock"])
def test_settling_with_a_lock_that_another_receiver_now_holds_raises_lock_lost(queue_factory, clock, settle):
    queue = queue_factory(lock_duration=timedelta(seconds=30))
    queue.send(message(1))
    [stale] = queue.receive()
    clock.advance(31)
    [current] = queue_factory(lock_duration=timedelta(seconds=30)).receive()

    with pytest.raises(LockLost):
        settle_with(queue, settle, stale)
    queue.complete(current)  # the current holder is unaffected


@pytest.mark.parametrize("settle", ["complete", "abandon", "dead_letter", "renew_lock"])
def test_settling_a_message_that_was_already_completed_raises_lock_lost(queue_factory, settle):
    queue = queue_factory()
    queue.send(message(1))
    [received] = queue.receive()
    queue.complete(received)

    with pytest.raises(LockLost):
        settle_with(queue, settle, received)


def settle_with(queue, settle: str, received) -> None:
    if settle == "dead_letter":
        queue.dead_letter(received, "ProcessingError", "boom")
    else:
        getattr(queue, settle)(received)


# ---------------------------------------------------------------------------- dead letters


def test_a_dead_lettered_message_keeps_its_reason_description_body_and_delivery_count(queue_factory):
    queue = queue_factory()
    queue.send(OutgoingMessage(body={"n": 1}, message_id="m-1", application_properties={"kind": "sms"}))
    queue.abandon(queue.receive()[0])
    [received] = queue.receive()

    queue.dead_letter(received, "RequestRejected", "ACS found the payload invalid.")

    assert queue.receive() == []
    assert (queue.active_count(), queue.dead_letter_count()) == (0, 1)
    [dead] = queue.dead_letters()
    assert dead.reason == "RequestRejected"
    assert dead.description == "ACS found the payload invalid."
    assert dead.body == {"n": 1}
    assert dead.message_id == "m-1"
    assert dead.application_properties == {"kind": "sms"}
    assert dead.delivery_count == 2
    assert dead.enqueued_at == received.enqueued_at
    assert dead.sequence_number == received.sequence_number
    assert dead.dead_lettered_at.tzinfo is not None


def test_a_message_delivered_max_delivery_count_times_is_dead_lettered_instead_of_delivered_again(
    queue_factory,
):
    queue = queue_factory(max_delivery_count=3)
    queue.send(message("poison"))
    queue.send(message("fine"))

    for attempt in range(1, 4):
        [received] = queue.receive()
        assert (received.body["n"], received.delivery_count) == ("poison", attempt)
        queue.abandon(received)

    # The exhausted message is moved aside and the batch is filled from behind it.
    assert bodies(queue.receive()) == ["fine"]
    [dead] = queue.dead_letters()
    assert dead.body == {"n": "poison"}
    assert dead.reason == "MaxDeliveryCountExceeded"
    assert dead.description == "Message could not be consumed after 3 delivery attempts."
    assert dead.delivery_count == 3


def test_dead_letters_are_listed_oldest_first_and_limited(queue_factory, clock):
    queue = queue_factory()
    for n in range(3):
        queue.send(message(n))
    for received in reversed(queue.receive(max_messages=3)):
        queue.dead_letter(received, "ProcessingError", str(received.body["n"]))
        clock.advance(1)

    assert [d.body["n"] for d in queue.dead_letters()] == [2, 1, 0]
    assert [d.body["n"] for d in queue.dead_letters(limit=2)] == [2, 1]


def test_remove_dead_letter_deletes_only_that_dead_letter(queue_factory):
    queue = queue_factory()
    queue.send(message(1))
    queue.send(message(2))
    queue.send(message("active"))
    for received in queue.receive(max_messages=2):
        queue.dead_letter(received, "ProcessingError", "boom")
    first, second = queue.dead_letters()

    assert queue.remove_dead_letter(first.sequence_number) is True
    assert queue.remove_dead_letter(first.sequence_number) is False
    assert [d.sequence_number for d in queue.dead_letters()] == [second.sequence_number]
    assert queue.active_count() == 1


def test_remove_dead_letter_does_not_delete_an_active_message(queue_factory):
    queue = queue_factory()
    queue.send(message(1))
    [received] = queue.receive()

    assert queue.remove_dead_letter(received.sequence_number) is False
    queue.complete(received)


# ---------------------------------------------------------------------------- duplicate detection


def test_a_repeated_message_id_inside_the_duplicate_detection_window_is_accepted_and_dropped(
    queue_factory, clock
):
    queue = queue_factory(duplicate_detection_window=timedelta(minutes=10))
    queue.send(OutgoingMessage(body={"n": "original"}, message_id="same"))
    clock.advance(9 * 60)
    queue.send(OutgoingMessage(body={"n": "duplicate"}, message_id="same"))

    assert bodies(queue.receive(max_messages=10)) == ["original"]
    assert queue.active_count() == 1


def test_a_repeated_message_id_after_the_duplicate_detection_window_is_accepted(queue_factory, clock):
    queue = queue_factory(duplicate_detection_window=timedelta(minutes=10))
    queue.send(OutgoingMessage(body={"n": "original"}, message_id="same"))
    clock.advance(10 * 60 + 1)
    queue.send(OutgoingMessage(body={"n": "again"}, message_id="same"))

    assert bodies(queue.receive(max_messages=10)) == ["original", "again"]


def test_a_scheduled_message_counts_for_duplicate_detection(queue_factory, clock):
    queue = queue_factory(duplicate_detection_window=timedelta(minutes=10))
    queue.send(message(1, scheduled_at=clock.now() + timedelta(minutes=1)))
    queue.send(message(1))

    assert queue.active_count() == 1


def test_without_duplicate_detection_a_repeated_message_id_is_delivered_twice(queue_factory):
    queue = queue_factory()
    queue.send(message(1))
    queue.send(message(1))

    assert bodies(queue.receive(max_messages=10)) == [1, 1]


# ---------------------------------------------------------------------------- durability and isolation


def test_messages_and_dead_letters_survive_reopening_the_queue(queue_factory):
    queue = queue_factory()
    queue.send(message(1))
    queue.send(message(2))
    queue.dead_letter(queue.receive()[0], "ProcessingError", "boom")
    queue.close()

    reopened = queue_factory()
    assert bodies(reopened.receive()) == [2]
    assert [d.body["n"] for d in reopened.dead_letters()] == [1]


def test_two_queues_in_one_file_are_independent(queue_factory):
    emails = queue_factory("emails", duplicate_detection_window=timedelta(minutes=10))
    sms = queue_factory("sms")
    emails.send(message(1))
    sms.send(message(1))  # the same id on another queue is no duplicate
    sms.send(message(2))
    sms.dead_letter(sms.receive()[0], "ProcessingError", "boom")

    assert (emails.active_count(), emails.dead_letter_count()) == (1, 0)
    assert (sms.active_count(), sms.dead_letter_count()) == (1, 1)
    assert bodies(emails.receive(max_messages=10)) == [1]
    assert bodies(sms.receive(max_messages=10)) == [2]


def test_threads_sharing_one_queue_object_receive_each_message_exactly_once(queue_factory):
    queue = queue_factory()
    for n in range(100):
        queue.send(message(n))
    seen: list[int] = []
    seen_lock = threading.Lock()

    def drain() -> None:
        while batch := queue.receive(max_messages=3):
            for received in batch:
                queue.complete(received)
            with seen_lock:
                seen.extend(bodies(batch))

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(seen) == list(range(100))


# ---------------------------------------------------------------------------- processes

# Runs in a separate interpreter: waits for the go file so both receivers start together, then
# drains the queue one message per transaction (maximising interleaving) and prints what it got.
_RECEIVER = """
import json, sys, time
from pathlib import Path
from shared.adapters.embedded_queue import EmbeddedQueue

db, go = sys.argv[1], Path(sys.argv[2])
queue = EmbeddedQueue(db, "notifications")
while not go.exists():
    time.sleep(0.005)
got = []
while batch := queue.receive(max_messages=1, max_wait=0.3):
    for m in batch:
        queue.complete(m)
        got.append(m.message_id)
print(json.dumps(got))
"""


def test_two_processes_receiving_concurrently_get_each_message_exactly_once(tmp_path):
    db = tmp_path / "shared.db"
    go = tmp_path / "go"
    queue = EmbeddedQueue(db, "notifications")
    sent = [f"msg-{n}" for n in range(200)]
    for message_id in sent:
        queue.send(OutgoingMessage(body={"id": message_id}, message_id=message_id))

    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path}
    receivers = [
        subprocess.Popen(
            [sys.executable, "-c", _RECEIVER, str(db), str(go)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    results = []
    for receiver in receivers:
        out, err = receiver.communicate(timeout=60)
        assert receiver.returncode == 0, err
        results.append(json.loads(out))

    everything = results[0] + results[1]
    assert len(everything) == len(set(everything)), "a message was delivered to both processes"
    assert sorted(everything) == sorted(sent)
    assert queue.active_count() == 0
