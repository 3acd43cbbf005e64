"""The local worker's intake of the requests queue, on a real embedded queue: it settles messages
as the Azure function does."""

import json
from datetime import timedelta

import pytest

from shared.adapters.embedded_queue import EmbeddedQueue
from shared.entrypoints.local import RequestIntake
from shared.service.ports import OutgoingMessage
from tests.fakes import FakeLedger

EMAIL = {"channel": "email", "to": ["a@example.com"], "subject": "Receipt", "text": "Thanks"}


@pytest.fixture
def requests(tmp_path, faked_services):
    queue = EmbeddedQueue(tmp_path / "queue.sqlite3", "notification-requests", max_delivery_count=3,
                          lock_duration=timedelta(seconds=30))
    yield queue
    queue.close()


def test_an_accepted_request_is_completed_and_queued_for_sending(requests, faked_services):
    requests.send(OutgoingMessage(body=EMAIL, message_id="m-1", correlation_id="c-1", application_properties={"app": "shop"}))

    assert RequestIntake(faked_services, requests, poll_seconds=0).run_once() == 1

    assert requests.active_count() == 0 and requests.dead_letter_count() == 0
    [notification] = faked_services.ledger.rows.values()
    assert (notification.correlation_id, notification.caller_properties) == ("c-1", {"app": "shop"})
    assert len(faked_services.queue.sent) == 1


def test_an_invalid_request_is_dead_lettered_with_validation_failed_and_its_field_errors(requests, faked_services):
    requests.send(OutgoingMessage(body=EMAIL | {"to": ["nobody"]}, message_id="m-1"))

    RequestIntake(faked_services, requests, poll_seconds=0).run_once()

    [dead] = requests.dead_letters()
    assert dead.reason == "ValidationFailed"
    assert [e["field"] for e in json.loads(dead.description)["errors"]] == ["/to/0/address"]
    assert faked_services.queue.sent == []


def test_a_transient_failure_abandons_the_request_until_the_delivery_count_dead_letters_it(requests, faked_services):
    class Unreachable(FakeLedger):
        def add(self, notification):
            raise ConnectionError("the ledger cannot be reached")

    faked_services.ledger = Unreachable()
    requests.send(OutgoingMessage(body=EMAIL, message_id="m-1"))
    intake = RequestIntake(faked_services, requests, poll_seconds=0)

    intake.run_once()
    [waiting] = requests.peek()
    assert (waiting["state"], waiting["delivery_count"]) == ("visible", 1)  # abandoned, not dead-lettered

    for _ in range(3):
        intake.run_once()
    [dead] = requests.dead_letters()
    assert dead.reason == "MaxDeliveryCountExceeded"
