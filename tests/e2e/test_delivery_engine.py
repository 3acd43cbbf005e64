"""Exactly once, or dead-lettered with a reason: the delivery engine under crashes and faults."""

import os
import signal
import time
import uuid
from collections import Counter

import pytest

from shared.adapters.embedded_queue import EmbeddedQueue
from tests.e2e.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e


def email(address: str | None = None) -> dict:
    return {"channel": "email", "to": [address or f"u+{uuid.uuid4().hex[:8]}@example.com"], "subject": "Hi", "text": "Hello"}


def test_a_dispatcher_killed_between_the_acs_call_and_the_ledger_write_sends_nothing_twice(tmp_path):
    # Short ACS timeout and queue lock, so the lease and the lock run out within the test.
    with LocalStack(tmp_path, ACS_TIMEOUT_SECONDS="2", QUEUE_LOCK_SECONDS="5") as stack:
        stack.set_faults(latencyMs=1500)
        ids = [stack.send(email()).json()["id"] for _ in range(6)]
        # Given sends that ACS is processing,
        in_flight = lambda: [nid for nid in ids if stack.get(nid)["history"][-1]["event"] == "send_attempt"]  # noqa: E731
        wait_until(lambda: len(in_flight()) == len(ids), timeout=10, what="every send to be in flight")
        [worker] = stack.worker_pids()
        # when the dispatcher dies before it can record them (a real SIGKILL),
        os.kill(worker, signal.SIGKILL)
        time.sleep(1.6)  # the emulator finishes accepting the orphaned sends
        stack.set_faults(latencyMs=0)
        # then the restarted dispatcher finishes every notification,
        for nid in ids:
            stack.wait_for_status(nid, "delivered", timeout=60)
        # and ACS was asked to send each exactly once.
        assert Counter(m["id"] for m in stack.emulator_messages("email")) == Counter(ids)
        retried = [n for n in map(stack.get, ids) if [h["event"] for h in n["history"]].count("send_attempt") > 1]
        assert retried, "the killed attempts should have been made again"
        assert all([h["event"] for h in n["history"]].count("sent") == 1 for n in retried)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    with LocalStack(tmp_path_factory.mktemp("two"), workers=2, report_delay_ms=50) as stack:
        yield stack


def test_two_dispatcher_processes_on_one_queue_send_each_notification_once(two_workers):
    stack = two_workers
    assert len(stack.worker_pids()) == 2
    emails = [stack.send(email()).json()["id"] for _ in range(60)]
    sms = [stack.send({"channel": "sms", "to": [f"+1425555{1000 + i}"], "message": "Hi"}).json()["id"] for i in range(40)]

    for nid in emails + sms:
        stack.wait_for_status(nid, "delivered", timeout=60)

    assert Counter(m["id"] for m in stack.emulator_messages("email") if m["id"] in emails) == Counter(emails)
    sms_ids = {stack.get(nid)["recipients"][0]["messageId"] for nid in sms}
    assert Counter(m["id"] for m in stack.emulator_messages("sms") if m["id"] in sms_ids) == Counter(sms_ids)


# 500 sends with retries through two real worker processes: about a minute on a quiet 2-core
# machine, more when it is shared, so the per-test limit is wider than the suite's.
@pytest.mark.timeout(300)
def test_under_throttling_and_server_errors_500_notifications_are_all_delivered_exactly_once(two_workers):
    stack = two_workers
    stack.set_faults(throttleRate=0.2, serverErrorRate=0.1, retryAfterSeconds=0)
    try:
        ids = [stack.send(email()).json()["id"] for _ in range(500)]
        for nid in ids:
            stack.wait_for_status(nid, "delivered", timeout=240)
    finally:
        stack.set_faults(throttleRate=0.0, serverErrorRate=0.0)

    sent = Counter(m["id"] for m in stack.emulator_messages("email") if m["id"] in set(ids))
    assert sent == Counter(ids)
    attempts = Counter(stack.get(nid)["attempts"] for nid in ids[:100])
    assert max(attempts) > 1, "faults at 30% must have caused retries"


def test_with_acs_down_longer_than_the_retry_budget_every_notification_is_dead_lettered_and_none_lost(tmp_path):
    with LocalStack(tmp_path, MAX_SEND_ATTEMPTS="3", RETRY_BASE_SECONDS="0.1", RETRY_MAX_SECONDS="0.3") as stack:
        stack.set_faults(serverErrorRate=1.0)
        ids = [stack.send(email()).json()["id"] for _ in range(10)]

        notifications = [stack.wait_for_status(nid, "dead_lettered", timeout=30) for nid in ids]

        assert {n["deadLetter"]["reason"] for n in notifications} == {"MaxAttemptsExceeded"}
        assert all("HTTP 500" in n["deadLetter"]["description"] for n in notifications)
        assert all(n["attempts"] == 3 for n in notifications)
        assert stack.emulator_messages("email") == []
        dead = EmbeddedQueue(tmp_path / "queue.sqlite3", "notifications").dead_letters(limit=100)
        assert sorted(d.body["notificationId"] for d in dead) == sorted(ids)
        assert {d.reason for d in dead} == {"MaxAttemptsExceeded"}


def test_the_email_quota_holds_back_what_exceeds_it_without_failing_it(tmp_path):
    with LocalStack(tmp_path, workers=2, EMAIL_RATE_PER_MINUTE="3") as stack:
        ids = [stack.send(email()).json()["id"] for _ in range(5)]

        wait_until(lambda: len(stack.emulator_messages("email")) == 3, timeout=15, what="three sends")
        time.sleep(2)  # the others stay deferred, whatever the dispatchers do meanwhile

        assert len(stack.emulator_messages("email")) == 3
        statuses = Counter(stack.get(nid)["status"] for nid in ids)
        assert statuses["accepted"] == 2 and statuses["dead_lettered"] == 0
