import pytest

from datetime import timedelta

from shared.domain.errors import (
    ConfigurationError,
    RecipientRefused,
    RequestRejected,
    SendTimeout,
    ServiceUnavailable,
    Throttled,
)
from shared.domain.model import DeliveryReport, Channel, NotificationStatus, RecipientStatus
from shared.service.handlers import Completed, DeadLettered, Rescheduled
from tests.unit.builders import World, email_command, sms_command


def test_an_email_is_sent_with_the_notification_id_as_operation_id_and_recorded_as_sent():
    world = World()
    n, _ = world.submit(email_command("a@example.com", "b@example.com"))

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, Completed)
    assert [e.operation_id for e in world.email.sent] == [n.id]
    stored = world.ledger.get(n.id)
    assert stored.status is NotificationStatus.SENT
    assert {r.message_id for r in stored.recipients} == {n.id}
    assert [h.event for h in stored.history][-2:] == ["send_attempt", "sent"]


def test_a_queue_message_delivered_twice_sends_once():
    world = World()
    n, _ = world.submit(email_command())

    world.dispatch(n.id)
    second = world.dispatch(n.id)

    assert isinstance(second, Completed)
    assert len(world.email.sent) == 1


def test_a_throttled_send_is_retried_later_by_a_scheduled_message_honouring_retry_after():
    world = World()
    world.email.failures = [Throttled("slow down", status_code=429, retry_after=30)]
    n, _ = world.submit(email_command())

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, Rescheduled)
    retry = world.publisher.sent[-1]
    assert retry.body == {"notificationId": n.id, "attempt": 2}
    assert retry.scheduled_at - world.clock.now() >= timedelta(seconds=30)
    assert world.email.sent == []
    stored = world.ledger.get(n.id)
    assert stored.status is NotificationStatus.ACCEPTED
    assert stored.history[-1].event == "send_failed"
    assert stored.history[-1].detail["reason"] == "Throttled"


def test_backoff_grows_with_each_attempt_and_stays_under_the_cap():
    world = World(max_attempts=10)
    world.email.failures = [ServiceUnavailable("down", status_code=503) for _ in range(7)]
    n, _ = world.submit(email_command())
    delays = []
    for attempt in range(1, 8):
        outcome = world.dispatch(n.id, attempt)
        delays.append(outcome.delay_seconds)
        world.clock.advance(outcome.delay_seconds)

    assert delays == [2, 4, 8, 16, 32, 60, 60]


def test_a_notification_that_keeps_failing_is_dead_lettered_with_max_attempts_exceeded():
    world = World(max_attempts=3)
    world.email.failures = [ServiceUnavailable("down", status_code=503) for _ in range(3)]
    n, _ = world.submit(email_command())

    outcomes = []
    for attempt in (1, 2, 3):
        outcomes.append(world.dispatch(n.id, attempt))
        world.clock.advance(120)

    assert isinstance(outcomes[-1], DeadLettered)
    assert outcomes[-1].reason == "MaxAttemptsExceeded"
    assert "HTTP 503" in outcomes[-1].description
    stored = world.ledger.get(n.id)
    assert stored.status is NotificationStatus.DEAD_LETTERED
    assert stored.attempts == 3
    assert len([h for h in stored.history if h.event == "send_failed"]) == 2


def test_a_request_acs_rejects_is_dead_lettered_at_once_with_its_own_reason():
    world = World()
    world.email.failures = [RequestRejected("bad payload", status_code=400, code="InvalidRequest")]
    n, _ = world.submit(email_command())

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, DeadLettered) and outcome.reason == "RequestRejected"
    assert len(world.publisher.sent) == 1  # only the original message: no retry scheduled


def test_a_wrong_key_is_dead_lettered_as_a_configuration_error_not_retried():
    world = World()
    world.email.failures = [ConfigurationError("auth failed", status_code=401)]
    n, _ = world.submit(email_command())

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, DeadLettered) and outcome.reason == "ConfigurationError"
    assert world.ledger.get(n.id).dead_letter.reason == "ConfigurationError"


def test_after_an_ambiguous_failure_the_retry_finds_the_email_acs_already_accepted_and_does_not_send_again():
    world = World()
    world.email.lose_response = SendTimeout("read timed out")
    n, _ = world.submit(email_command())

    first = world.dispatch(n.id)
    world.clock.advance(first.delay_seconds)
    second = world.dispatch(n.id, 2)

    assert isinstance(first, Rescheduled) and isinstance(second, Completed)
    assert len(world.email.sent) == 1
    assert world.email.lookups == [n.id]
    assert world.ledger.get(n.id).status is NotificationStatus.SENT


def test_a_dispatcher_that_finds_another_one_sending_looks_again_after_its_lease():
    world = World()
    n, _ = world.submit(email_command())
    stored = world.ledger.get(n.id)
    stored.start_attempt(world.clock.now(), lease_until=world.clock.now() + timedelta(seconds=90))
    world.ledger.save(stored)  # another worker claimed it and is mid-send (or died)

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, Rescheduled)
    assert world.email.sent == []
    assert world.publisher.sent[-1].scheduled_at > world.clock.now() + timedelta(seconds=89)
    world.clock.advance(91)
    assert isinstance(world.dispatch(n.id), Completed)
    assert len(world.email.sent) == 1
    assert world.email.lookups == [n.id]  # the dead worker might have reached ACS


def test_sms_retries_reuse_the_same_repeatability_ids_and_first_sent_time():
    world = World()
    world.sms.failures = [ServiceUnavailable("down", status_code=503)]
    n, _ = world.submit(sms_command("+14255551234"))

    first = world.dispatch(n.id)
    world.clock.advance(first.delay_seconds)
    world.dispatch(n.id, 2)

    [sent] = world.sms.sent
    recipient = sent.recipients[0]
    assert recipient.repeatability_request_id == world.ledger.get(n.id).sms_repeatability_id("+14255551234")
    assert recipient.repeatability_first_sent == world.ledger.get(n.id).first_attempt_at
    assert recipient.repeatability_first_sent < world.clock.now()
    assert sent.tag == n.id


def test_an_sms_recipient_that_failed_transiently_inside_a_202_is_retried_alone():
    world = World()
    world.sms.outcomes = {"+14255550009": [ServiceUnavailable("busy", status_code=503)]}
    n, _ = world.submit(sms_command("+14255551234", "+14255550009"))

    first = world.dispatch(n.id)
    world.clock.advance(first.delay_seconds)
    second = world.dispatch(n.id, 2)

    assert isinstance(first, Rescheduled) and isinstance(second, Completed)
    assert [[r.to for r in s.recipients] for s in world.sms.sent] == [
        ["+14255551234", "+14255550009"],
        ["+14255550009"],
    ]
    assert world.ledger.get(n.id).status is NotificationStatus.SENT


def test_an_sms_recipient_refused_by_acs_fails_without_holding_back_the_others():
    world = World()
    world.sms.outcomes = {"+14255550009": [RecipientRefused("Invalid To phone number format.", status_code=400)]}
    n, _ = world.submit(sms_command("+14255551234", "+14255550009"))

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, Completed)
    stored = world.ledger.get(n.id)
    assert {r.address: r.status for r in stored.recipients} == {
        "+14255551234": RecipientStatus.SENT,
        "+14255550009": RecipientStatus.FAILED,
    }


def test_a_report_that_arrives_before_the_dispatcher_recorded_sent_is_applied_afterwards():
    world = World()
    n, _ = world.submit(email_command("a@example.com"))
    early = DeliveryReport(event_id="e1", channel=Channel.EMAIL, message_id=n.id, recipient="a@example.com", status="Delivered")

    summary = world.reports(early)
    world.dispatch(n.id)

    assert summary.parked == 1
    assert world.ledger.get(n.id).status is NotificationStatus.DELIVERED
    assert world.ledger.parked == {}


def test_a_queue_message_for_an_unknown_notification_is_dead_lettered():
    world = World()
    outcome = world.dispatch("00000000-0000-0000-0000-000000000000")
    assert isinstance(outcome, DeadLettered) and outcome.reason == "NotificationNotFound"


def test_after_a_clean_refusal_the_retry_sends_without_asking_acs_first():
    world = World()
    world.email.failures = [Throttled("slow down", status_code=429, retry_after=1)]
    n, _ = world.submit(email_command())

    first = world.dispatch(n.id)
    world.clock.advance(first.delay_seconds)
    world.dispatch(n.id, 2)

    assert world.email.lookups == []  # a 429 means ACS did nothing; asking would spend quota
    assert len(world.email.sent) == 1


def test_a_stale_copy_of_an_earlier_attempts_message_sends_nothing_and_starts_no_second_chain():
    world = World()
    world.email.failures = [Throttled("slow down", status_code=429, retry_after=300)]
    n, _ = world.submit(email_command())
    world.dispatch(n.id, 1)
    queued = len(world.publisher.sent)

    # A duplicate of attempt 1's message (redelivered, or a leftover lease wait) turns up.
    outcome = world.dispatch(n.id, 1)

    assert isinstance(outcome, Completed) and outcome.detail == "stale"
    assert world.email.sent == [] and len(world.publisher.sent) == queued
    assert world.ledger.get(n.id).attempts == 1


def test_the_message_of_an_attempt_whose_worker_died_takes_over_once_its_lease_has_run_out():
    world = World()
    n, _ = world.submit(email_command())
    stored = world.ledger.get(n.id)
    stored.start_attempt(world.clock.now(), lease_until=world.clock.now() + timedelta(seconds=90))
    world.ledger.save(stored)  # attempt 1 started; its worker died
    world.clock.advance(91)

    assert isinstance(world.dispatch(n.id, 1), Completed)  # attempt 1's own message, redelivered
    assert len(world.email.sent) == 1
    assert world.ledger.get(n.id).attempts == 2


def test_two_waits_for_the_same_notification_never_share_a_message_id():
    world = World()
    n, _ = world.submit(email_command())
    stored = world.ledger.get(n.id)
    stored.start_attempt(world.clock.now(), lease_until=world.clock.now() + timedelta(seconds=90))
    world.ledger.save(stored)

    world.dispatch(n.id, 1)
    world.dispatch(n.id, 1)

    waits = [m.message_id for m in world.publisher.sent if "lease" in m.message_id]
    assert len(waits) == 2 and len(set(waits)) == 2


def test_an_unknown_outcome_stays_unknown_until_a_lookup_settles_it():
    world = World()
    world.email.lose_response = SendTimeout("read timed out")  # attempt 1 reached ACS
    world.email.lookup_failures = [Throttled("slow down", status_code=429)]  # attempt 2 cannot look
    n, _ = world.submit(email_command())

    for attempt in (1, 2, 3):
        outcome = world.dispatch(n.id, attempt)
        if isinstance(outcome, Rescheduled):
            world.clock.advance(outcome.delay_seconds)

    assert len(world.email.sent) == 1  # attempt 3 looked and found attempt 1's send
    assert world.email.lookups == [n.id, n.id]
    assert world.ledger.get(n.id).status is NotificationStatus.SENT


def test_blind_copies_stay_blind_when_every_visible_recipient_is_suppressed():
    from shared.domain.commands import SubmitNotification
    from shared.domain.model import Recipient, Suppression

    world = World()
    world.suppressions.add(Suppression(channel=Channel.EMAIL, address="boss@example.com", reason="Bounced", created_at=world.clock.now()))
    cmd = SubmitNotification(
        channel=Channel.EMAIL,
        sender="DoNotReply@notify.example.com",
        recipients=[Recipient(address="boss@example.com"), Recipient(address="alice@example.com", kind="bcc"),
                    Recipient(address="bob@example.com", kind="bcc")],
        content={"subject": "s", "text": "t"},
    )
    n, _ = world.submit(cmd)

    world.dispatch(n.id)

    [sent] = world.email.sent
    assert [a.address for a in sent.to] == ["DoNotReply@notify.example.com"]
    assert [a.address for a in sent.bcc] == ["alice@example.com", "bob@example.com"]


def test_an_sms_result_without_the_plus_still_matches_its_recipient():
    from shared.service.ports import SmsRecipientResult

    world = World()
    n, _ = world.submit(sms_command("+14255551234"))
    world.sms.send = lambda sms: [SmsRecipientResult(to="14255551234", message_id="Outgoing_1")]

    assert isinstance(world.dispatch(n.id), Completed)
    assert world.ledger.get(n.id).recipients[0].message_id == "Outgoing_1"


def test_an_sms_recipient_missing_from_the_acs_results_is_retried_not_stranded():
    world = World()
    n, _ = world.submit(sms_command("+14255551234", "+14255559999"))
    real_send = world.sms.send
    world.sms.send = lambda sms: real_send(sms)[:1]  # ACS answered for the first recipient only

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, Rescheduled)
    assert {r.address: r.status for r in world.ledger.get(n.id).recipients} == {
        "+14255551234": RecipientStatus.SENT,
        "+14255559999": RecipientStatus.PENDING,
    }


class WorkerDied(BaseException):
    """Stands for the process being killed: not an error the dispatcher could handle."""


def test_a_notification_whose_workers_die_twice_in_a_row_is_still_sent_once():
    world = World()
    n, _ = world.submit(email_command())
    world.email.die_next = WorkerDied()
    with pytest.raises(WorkerDied):
        world.dispatch(n.id, 1)  # the first worker dies mid-send
    world.clock.advance(91)
    world.email.die_next = WorkerDied()
    with pytest.raises(WorkerDied):
        world.dispatch(n.id, 1)  # attempt 1's message takes over, and that worker dies too
    world.clock.advance(91)

    outcome = world.dispatch(n.id, 1)  # the same message, redelivered once more

    assert isinstance(outcome, Completed)
    assert len(world.email.sent) == 1
    assert world.ledger.get(n.id).status is NotificationStatus.SENT


def test_an_older_message_never_takes_over_an_attempt_a_newer_one_started():
    world = World()
    world.email.failures = [ServiceUnavailable("down", status_code=503)]
    n, _ = world.submit(email_command())
    first = world.dispatch(n.id, 1)
    world.clock.advance(first.delay_seconds)
    world.email.die_next = WorkerDied()
    with pytest.raises(WorkerDied):
        world.dispatch(n.id, 2)  # the retry's worker dies mid-send
    world.clock.advance(91)

    assert world.dispatch(n.id, 1).detail == "stale"  # a leftover copy of attempt 1's message
    assert isinstance(world.dispatch(n.id, 2), Completed)  # the retry's message takes over
    assert len(world.email.sent) == 1
