"""Recipients in logs: masked or keyed-hashed, and every log line names its notification and trace."""

import io
import json
import logging

import pytest

from shared import telemetry
from shared.adapters.acs_errors import error_for_status
from shared.domain.privacy import mask, recipient_domain, recipient_hash, redact_text
from shared.service import handlers, observability
from tests.unit.builders import World, email_command, sms_command


def test_an_email_address_is_masked_to_its_first_letter_and_domain():
    assert mask("jane.doe@example.com") == "j***@example.com"


@pytest.mark.parametrize("number", ["+14255554567", "+1 (425) 555-4567", "+1-425-555-4567"])
def test_a_phone_number_is_masked_to_its_country_digit_and_last_four(number):
    assert mask(number) == "+1******4567"


def test_the_recipient_hash_is_keyed_and_the_same_for_every_spelling_of_a_recipient():
    assert recipient_hash("Jane@Example.com", "key-one-0123456789") == recipient_hash(" jane@example.com", "key-one-0123456789")
    assert recipient_hash("+1 (425) 555-4567", "key-one-0123456789") == recipient_hash("+14255554567", "key-one-0123456789")
    assert recipient_hash("jane@example.com", "key-one-0123456789") != recipient_hash("jane@example.com", "key-two-0123456789")
    assert recipient_hash("jane@example.com", "key-one-0123456789") != recipient_hash("john@example.com", "key-one-0123456789")


def test_the_domain_of_an_email_is_kept_and_a_phone_number_has_none():
    assert recipient_domain("Jane@Mail.Example.com") == "mail.example.com"
    assert recipient_domain("+14255554567") is None


@pytest.mark.parametrize(
    "text, leaked",
    [
        ("invalid recipient jane.doe@example.com in to", "jane.doe@example.com"),
        ("number +1 425 555 4567 is not a mobile", "425 555 4567"),
        ("call (425) 555-4567", "555-4567"),
        ("or 425-555-4567", "425-555-4567"),
    ],
)
def test_addresses_and_numbers_in_free_text_are_masked(text, leaked):
    assert leaked not in redact_text(text)


def test_timestamps_ids_and_counts_in_free_text_are_left_alone():
    text = "notification 0b1c6f4e-8d52-4c1a-9a57-3f0d2a6b9e11 at 2026-11-22T17:43:34Z: 12345678 sent"
    assert redact_text(text) == text


def test_an_acs_error_that_quotes_the_recipient_is_masked_at_the_adapter():
    error = error_for_status(400, "InvalidRecipient", "email send: the address jane.doe@example.com is not valid")
    assert "jane.doe@example.com" not in error.describe() and "j***@example.com" in error.describe()


@pytest.fixture
def log_lines():
    """A handler formatted and filtered as telemetry.configure_logging sets up every root handler."""

    def capture(log_format: str = "text"):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.addFilter(telemetry.LogContext())
        handler.setFormatter(telemetry._formatter(log_format))
        logger = logging.getLogger("shared")
        logger.addHandler(handler)
        previous = logger.level
        logger.setLevel(logging.INFO)
        captured.append((logger, handler, previous))
        return lambda: stream.getvalue().splitlines()

    captured = []
    yield capture
    for logger, handler, previous in captured:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def test_every_log_line_of_a_handler_names_its_notification_and_trace(log_lines, telemetry):
    lines = log_lines()
    world = World()

    n, _ = world.submit(email_command("jane@example.com"))

    [accepted] = [line for line in lines() if "accepted" in line]
    trace_id = format(telemetry.span("notify.submit").context.trace_id, "032x")
    assert f"notification={n.id}" in accepted and f"trace={trace_id}" in accepted


def test_json_log_lines_carry_the_ids_and_the_event_fields(log_lines, telemetry):
    lines = log_lines("json")
    world = World()

    n, _ = world.submit(email_command("jane@example.com"))

    [accepted] = [json.loads(line) for line in lines() if '"notify.accepted"' in line]
    assert accepted["notification_id"] == n.id
    assert accepted["trace_id"] == format(telemetry.span("notify.submit").context.trace_id, "032x")
    assert (accepted["event"], accepted["channel"], accepted["level"]) == ("notify.accepted", "email", "INFO")


def submit_batch(world, cmds):
    return handlers.submit_notifications(
        cmds, ledger=world.ledger, publisher=world.publisher, attachments=world.attachments, clock=world.clock
    )


def test_a_batch_logs_one_line_that_names_every_notification_it_accepted_and_no_recipient(log_lines, telemetry):
    lines = log_lines("json")
    world = World()
    addresses = [f"jane{i}@example.com" for i in range(3)]

    outcomes = submit_batch(world, [email_command(a) for a in addresses] + [sms_command("+14255551234")])

    ids = [n.id for n, _ in outcomes]
    [accepted] = [json.loads(line) for line in lines() if "notify.batch_accepted" in line]
    assert accepted["notification_ids"] == ids and accepted["channels"] == {"email": 3, "sms": 1}
    assert all(nid in accepted["message"] for nid in ids)
    assert not any(a in line for line in lines() for a in [*addresses, "+14255551234", "4255551234"])
    # The request's trace finds them by id too.
    assert list(telemetry.span("notify.submit_batch").attributes["notify.notification.ids"]) == ids


def test_a_batch_names_only_the_notifications_it_created_not_those_an_idempotency_key_returned(log_lines):
    lines = log_lines()
    world = World()
    [(earlier, _)] = submit_batch(world, [email_command("jane@example.com", key="k1")])

    outcomes = submit_batch(world, [email_command("jane@example.com", key="k1"), email_command("john@example.com")])

    (replayed, created_before), (new, created_now) = outcomes
    assert replayed.id == earlier.id and not created_before and created_now
    last = [line for line in lines() if "accepted in one batch" in line][-1]
    assert "notifications accepted in one batch (1 email)" in last
    assert new.id in last and earlier.id not in last


def test_an_address_in_a_log_message_or_an_exception_is_masked_before_any_handler_writes_it(log_lines):
    lines = log_lines()
    log = logging.getLogger("shared.somewhere")

    log.warning("could not send to %s", "jane.doe@example.com")
    try:
        raise ValueError("recipient +14255554567 refused")
    except ValueError:
        log.exception("send failed")

    text = "\n".join(lines())
    assert "jane.doe@example.com" not in text and "j***@example.com" in text
    assert "+14255554567" not in text and "+1******4567" in text
    assert "ValueError" in text  # the traceback stays, masked


def test_a_delivery_outcome_is_logged_with_the_recipients_hash_and_domain_for_the_operations_queries(log_lines):
    lines = log_lines("json")
    world = World()
    n, _ = world.submit(email_command("jane@example.com"))
    world.dispatch(n.id)
    from shared.domain.model import Channel, DeliveryReport

    world.reports(DeliveryReport(event_id="e1", channel=Channel.EMAIL, message_id=n.id, recipient="jane@example.com", status="Bounced"))

    [line] = [json.loads(x) for x in lines() if '"notify.recipient_status"' in x]
    assert line["status"] == "bounced" and line["recipientDomain"] == "example.com"
    assert line["recipientHash"] == observability.hash_recipient("jane@example.com")
    assert "jane@example.com" not in "\n".join(lines())
