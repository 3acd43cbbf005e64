"""No recipient and no message text in anything the running service writes: a whole run of the local
stack (API, dispatcher, reconciler, emulator) with every log line and every span it exports
(TELEMETRY_EXPORTER=console prints spans and metrics as JSON lines) read back from its output."""

import json
import re
import uuid

import httpx
import pytest

from shared.domain.privacy import DEV_PII_HASH_KEY, recipient_hash
from tests.e2e.stack import SENDER, LocalStack, wait_until

pytestmark = pytest.mark.e2e

RUN = uuid.uuid4().hex[:8]
DELIVERED = f"ada.lovelace+{RUN}@analytical.example.org"
BOUNCED = f"bounce+{RUN}@engines.example.net"
COPIED = f"charles.babbage+{RUN}@difference.example.com"
BATCHED = f"grace.hopper+{RUN}@compiler.example.com"
SMS_OK = "+14255557731"
SMS_FAILS = "+14255570001"
SUBJECT = f"Quokka invoice {RUN}"
BODY = f"Zanzibar pelican marmalade {RUN}"
SMS_TEXT = f"Octarine kumquat {RUN}"


def spellings(number: str) -> list[str]:
    """A North American number as people and libraries write it."""
    digits = number.removeprefix("+1")
    area, exchange, line = digits[:3], digits[3:6], digits[6:]
    return [
        number,
        number[1:],
        digits,
        f"{area}-{exchange}-{line}",
        f"({area}) {exchange}-{line}",
        f"{area} {exchange} {line}",
        f"{area}.{exchange}.{line}",
        f"+1 {area} {exchange} {line}",
        f"+1-{area}-{exchange}-{line}",
    ]


FORBIDDEN = [
    *(a.lower() for a in (DELIVERED, BOUNCED, COPIED, BATCHED)),
    f"ada.lovelace+{RUN}",
    f"grace.hopper+{RUN}",
    f"charles.babbage+{RUN}",
    f"bounce+{RUN}",
    *spellings(SMS_OK),
    *spellings(SMS_FAILS),
    SUBJECT.lower(),
    BODY.lower(),
    SMS_TEXT.lower(),
    "zanzibar",
    "octarine",
    "quokka",
]


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """The output of a stack that accepted, retried, sent, failed and reported, once it stopped."""
    stack = LocalStack(
        tmp_path_factory.mktemp("privacy"),
        TELEMETRY_EXPORTER="console",
        RECONCILE_INTERVAL_SECONDS="1",
        OTEL_METRIC_EXPORT_INTERVAL="500",  # metrics while it runs, not only when it stops
    )
    with stack:
        # Two 500s before any success: retries, with the ACS error text in the dispatcher's path.
        stack.set_faults(serverErrorRate=1.0)
        email = stack.send(
            {"channel": "email", "to": [DELIVERED], "cc": [COPIED], "subject": SUBJECT, "text": BODY, "html": f"<p>{BODY}</p>"}
        )
        wait_until(lambda: len(stack.emulator_requests()) >= 2, what="two refused sends")
        stack.set_faults(serverErrorRate=0.0)
        bounce = stack.send({"channel": "email", "to": [BOUNCED], "subject": SUBJECT, "text": BODY})
        sms = stack.send({"channel": "sms", "to": [SMS_OK, SMS_FAILS], "message": SMS_TEXT})
        batch = httpx.post(
            f"{stack.api}/api/notifications/batch",
            json={"notifications": [
                {"channel": "email", "to": [BATCHED], "subject": SUBJECT, "text": BODY},
                {"channel": "sms", "to": [SMS_OK], "message": SMS_TEXT},
            ]},
            headers=SENDER,
            timeout=10,
        )
        assert batch.status_code == 200 and batch.json()["accepted"] == 2
        # Refused at the edge: the address and number are echoed to the caller, never logged.
        refused = [
            stack.send({"channel": "email", "to": [f"{DELIVERED}@@"], "subject": SUBJECT, "text": BODY}),
            stack.send({"channel": "sms", "to": ["+1425555"], "message": SMS_TEXT}),
            stack.send({"channel": "sms", "to": [SMS_OK], "message": SMS_TEXT, "surprise": DELIVERED}),
        ]
        assert [r.status_code for r in (email, bounce, sms)] == [202, 202, 202]
        assert [r.status_code for r in refused] == [422, 422, 422]
        stack.wait_for_status(email.json()["id"], "delivered", timeout=60)
        stack.wait_for_status(bounce.json()["id"], "bounced", timeout=60)
        stack.wait_for_status(sms.json()["id"], "failed", timeout=60)
        ids = {"email": email.json()["id"], "bounce": bounce.json()["id"], "sms": sms.json()["id"]}
        ids["batch"] = [result["id"] for result in batch.json()["results"]]
        stack.wait_for_status(ids["batch"][0], "delivered", timeout=60)
        # Once more after the bounce: the suppression list refuses it before ACS.
        again = stack.send({"channel": "email", "to": [BOUNCED], "subject": SUBJECT, "text": BODY})
        stack.wait_for_status(again.json()["id"], "suppressed", timeout=30)
        wait_until(lambda: METRICS <= exported_metric_names(stack.log_text()), timeout=30, what="every metric exported")
    # Stopped: the metric readers have flushed on the way out.
    return stack.log_text(), ids


METRICS = {
    "notify.notifications.accepted", "notify.messages.sent", "notify.messages.delivered", "notify.messages.bounced",
    "notify.messages.failed", "notify.messages.suppressed", "notify.send.duration", "notify.queue.age",
}


def exported(output: str, key: str) -> list[dict]:
    return [json.loads(line)[key] for line in output.splitlines() if line.startswith('{"' + key + '"')]


def exported_metric_names(output: str) -> set[str]:
    return {m["name"] for batch in exported(output, "otel.metrics") for r in batch["resource_metrics"]
            for s in r["scope_metrics"] for m in s["metrics"]}


def test_no_recipient_address_phone_number_or_message_text_appears_in_any_log_line_span_or_metric(run_output):
    output, _ = run_output
    lowered = output.lower()

    leaks = [s for s in FORBIDDEN if s.lower() in lowered]

    assert not leaks, f"found {leaks} in the run's output: " + next(
        line for line in output.splitlines() if any(s.lower() in line.lower() for s in leaks)
    )[:500]


def test_the_run_exported_the_spans_and_metrics_the_privacy_check_read(run_output):
    output, ids = run_output

    names = {span["name"] for span in exported(output, "otel.span")}
    assert {"POST /api/notifications", "notify.submit", "notifications process", "notify.dispatch",
            "acs.email.send", "acs.sms.send", "notify.delivery_report"} <= names
    assert METRICS <= exported_metric_names(output)
    # The retries really happened, with their failures on the ACS spans.
    failed_sends = [s for s in exported(output, "otel.span") if s["name"] == "acs.email.send" and s["status"]["status_code"] == "ERROR"]
    assert failed_sends and all(s["attributes"]["notify.notification.id"] == ids["email"] for s in failed_sends)


def test_an_operator_finds_a_recipient_in_the_spans_by_its_keyed_hash(run_output):
    output, ids = run_output

    wanted = recipient_hash(DELIVERED, DEV_PII_HASH_KEY)
    spans = [s for s in exported(output, "otel.span") if wanted in s["attributes"].get("notify.recipient.hashes", [])]

    assert {s["name"] for s in spans} >= {"notify.submit", "acs.email.send", "notify.delivery_report"}
    assert {s["attributes"]["notify.notification.id"] for s in spans} == {ids["email"]}


def test_a_batch_logs_one_accepted_line_naming_each_of_its_notifications_and_its_span_lists_them(run_output):
    output, ids = run_output

    [line] = [line for line in output.splitlines() if "accepted in one batch" in line]
    [span] = [s for s in exported(output, "otel.span") if s["name"] == "notify.submit_batch"]

    assert all(nid in line for nid in ids["batch"])
    assert list(span["attributes"]["notify.notification.ids"]) == ids["batch"]


def test_the_services_log_lines_carry_the_notification_and_the_trace(run_output):
    output, ids = run_output

    lines = [line for line in output.splitlines() if f"notification={ids['bounce']}" in line]

    assert any("accepted" in line for line in lines) and any("bounced" in line for line in lines)
    assert all(re.search(r"trace=[0-9a-f]{32}", line) for line in lines)
