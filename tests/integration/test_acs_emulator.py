"""The ACS emulator, driven only by the real SDK clients (and httpx for its control API)."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import uuid
from email.utils import formatdate

import httpx
import pytest
from azure.communication.email import EmailClient
from azure.communication.sms import SmsClient
from azure.communication.sms._generated.models import SendMessageRequest, SmsRecipient, SmsSendOptions
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.core.rest import HttpRequest

from acs_emulator import DEFAULT_ACCESS_KEY, EmulatorConfig
from acs_emulator.config import DEFAULT_RESOURCE_ID
from acs_emulator.reports import FOREIGN_RESOURCE_ID
from acs_emulator.testing import running_emulator, running_webhook_recorder

REPORT_DELAY_MS = 50
SENDER = "DoNotReply@contoso.com"
SMS_SENDER = "+18005550100"
EMAIL_REPORT = "Microsoft.Communication.EmailDeliveryReportReceived"
SMS_REPORT = "Microsoft.Communication.SMSDeliveryReportReceived"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SMS_MESSAGE_ID = re.compile(r"^Outgoing_\d{14}[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


# -- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorder():
    with running_webhook_recorder() as (url, events):
        yield url, events


@pytest.fixture(scope="module")
def emulator(recorder):
    url, _ = recorder
    config = EmulatorConfig(webhook_url=url, webhook_token="test-token", report_delay_ms=REPORT_DELAY_MS,
                            report_retry_interval_ms=50)
    with running_emulator(config) as base_url:
        yield base_url


@pytest.fixture
def events(recorder):
    return recorder[1]


@pytest.fixture(autouse=True)
def clean_slate(emulator, events):
    httpx.delete(emulator + "/emulator/messages").raise_for_status()
    httpx.delete(emulator + "/emulator/faults").raise_for_status()
    events.status_code = 200
    events.clear()
    yield
    events.status_code = 200


def email_client(base_url: str, key: str = DEFAULT_ACCESS_KEY, **kwargs) -> EmailClient:
    return EmailClient(base_url, AzureKeyCredential(key), **kwargs)


def sms_client(base_url: str, key: str = DEFAULT_ACCESS_KEY, **kwargs) -> SmsClient:
    return SmsClient(base_url, AzureKeyCredential(key), **kwargs)


def address(local: str) -> str:
    return f"{local}+{uuid.uuid4().hex[:8]}@example.com"


def email(to: list[str], *, cc: list[str] = (), bcc: list[str] = (), subject: str = "Hello") -> dict:
    return {
        "senderAddress": SENDER,
        "recipients": {
            "to": [{"address": a, "displayName": "Someone"} for a in to],
            "cc": [{"address": a} for a in cc],
            "bcc": [{"address": a} for a in bcc],
        },
        "content": {"subject": subject, "plainText": "Hi there", "html": "<p>Hi there</p>"},
    }


def messages(base_url: str, channel: str | None = None) -> list[dict]:
    params = {"channel": channel} if channel else {}
    return httpx.get(base_url + "/emulator/messages", params=params).json()


def set_faults(base_url: str, **faults) -> None:
    httpx.put(base_url + "/emulator/faults", json=faults).raise_for_status()


def for_message(message_id: str):
    return lambda event: event["data"].get("messageId") == message_id


def wait_for_email_status(base_url: str, operation_id: str, status: str, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{base_url}/emulator/messages/{operation_id}").json().get("status") != status:
        assert time.monotonic() < deadline, f"operation never reached {status}"
        time.sleep(0.01)


def get_operation(client: EmailClient, operation_id: str):
    """GET the email operation through the SDK pipeline (so the SDK signs it): the email SDK 1.1.0
    has no get_send_result, only the poller."""
    return client.send_request(
        HttpRequest("GET", f"/emails/operations/{operation_id}", params={"api-version": "2025-09-01"})
    )


# -- email --------------------------------------------------------------------------------------------


def test_an_accepted_email_answers_202_with_the_given_operation_id_and_a_delivered_report_reaches_the_webhook(
    emulator, events
):
    operation_id = str(uuid.uuid4())
    recipient = address("alice")
    raw = []

    result = email_client(emulator).begin_send(
        email([recipient]), operation_id=operation_id, polling=False, raw_response_hook=raw.append
    ).result()

    assert result == {"id": operation_id, "status": "Running"}
    response = raw[0].http_response
    assert response.status_code == 202
    assert response.headers["Operation-Location"] == (
        f"{emulator}/emails/operations/{operation_id}?api-version=2025-09-01"
    )
    assert int(response.headers["retry-after"]) >= 1

    (event,) = events.wait_for(1, where=for_message(operation_id))
    assert event["eventType"] == EMAIL_REPORT
    assert UUID.match(event["id"])
    assert event["topic"] == DEFAULT_RESOURCE_ID
    assert event["subject"] == f"sender/{SENDER}/message/{operation_id}"
    assert event["dataVersion"] == "1.0"
    assert event["metadataVersion"] == "1"
    assert event["eventTime"].endswith("Z")
    data = event["data"]
    assert data["sender"] == SENDER
    assert data["recipient"] == recipient
    assert data["messageId"] == operation_id
    assert data["internetMessageId"].startswith("<") and data["internetMessageId"].endswith("@contoso.com>")
    assert data["status"] == "Delivered"
    assert data["deliveryStatusDetails"]["statusMessage"]
    assert data["deliveryAttemptTimestamp"].endswith("Z")

    (post,) = [r for r in events.requests if any(e["id"] == event["id"] for e in r.body)]
    assert post.headers["authorization"] == "Bearer test-token"
    assert post.headers["aeg-event-type"] == "Notification"
    assert post.headers["content-type"] == "application/json"
    assert isinstance(post.body, list)

    (recorded,) = messages(emulator, "email")
    assert recorded["id"] == recorded["operationId"] == operation_id
    assert recorded["recipients"] == [recipient]
    assert recorded["subject"] == "Hello"


def test_a_repeated_operation_id_records_one_message_and_one_set_of_reports(emulator, events):
    operation_id = str(uuid.uuid4())
    body = email([address("alice"), address("bob")])
    client = email_client(emulator)

    first = client.begin_send(body, operation_id=operation_id, polling=False).result()
    events.wait_for(2, where=for_message(operation_id))
    wait_for_email_status(emulator, operation_id, "Succeeded")
    second = client.begin_send(body, operation_id=operation_id, polling=False).result()
    time.sleep(5 * REPORT_DELAY_MS / 1000)

    assert first["id"] == second["id"] == operation_id
    assert second["status"] == "Succeeded"
    assert len(messages(emulator)) == 1
    assert len(events.matching(for_message(operation_id))) == 2


def test_the_operation_answers_running_until_its_reports_are_posted_then_succeeded_and_404_when_unknown(
    emulator, events
):
    client = email_client(emulator)
    operation_id = str(uuid.uuid4())
    events.status_code = 503  # the webhook is "down": reports are retried, the operation stays Running

    client.begin_send(email([address("alice")]), operation_id=operation_id, polling=False).result()
    time.sleep(4 * REPORT_DELAY_MS / 1000)
    running = get_operation(client, operation_id)
    assert running.status_code == 200
    assert running.json() == {"id": operation_id, "status": "Running"}
    assert running.headers["retry-after"] == "1"
    assert len(events.requests) >= 2, "the emulator should keep retrying the webhook"

    events.status_code = 200
    events.wait_for(1, where=for_message(operation_id))
    wait_for_email_status(emulator, operation_id, "Succeeded")
    assert get_operation(client, operation_id).json() == {"id": operation_id, "status": "Succeeded"}
    delivery_counts = [int(r.headers["aeg-delivery-count"]) for r in events.requests]
    assert delivery_counts == sorted(delivery_counts) and delivery_counts[-1] >= 1

    unknown = get_operation(client, str(uuid.uuid4()))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "NotFound"
    assert unknown.headers["x-ms-error-code"] == "NotFound"


def test_the_quickstart_full_polling_pattern_completes_with_succeeded(emulator, events):
    poller = email_client(emulator).begin_send(email([address("alice")]))

    result = poller.result()

    assert result["status"] == "Succeeded"
    assert UUID.match(result["id"])
    assert poller.status() == "Succeeded"
    (recorded,) = messages(emulator, "email")
    assert recorded["status"] == "Succeeded"
    assert recorded["reportStatus"][recorded["recipients"][0]] == {"status": "Delivered", "report": "posted"}


def test_a_wrong_access_key_is_refused_with_401_and_nothing_is_recorded(emulator):
    wrong_key = base64.b64encode(b"not-the-emulator-key").decode()

    with pytest.raises(ClientAuthenticationError) as email_error:
        email_client(emulator, wrong_key).begin_send(email([address("alice")]), polling=False).result()
    with pytest.raises(ClientAuthenticationError) as sms_error:
        sms_client(emulator, wrong_key).send(SMS_SENDER, "+14255550123", "Hello")

    assert email_error.value.status_code == 401
    assert email_error.value.error.code == "Denied"
    assert sms_error.value.status_code == 401
    unsigned = httpx.post(emulator + "/emails:send?api-version=2025-09-01", json=email([address("alice")]))
    assert unsigned.status_code == 401
    assert unsigned.headers["x-ms-error-code"] == "Denied"
    assert messages(emulator) == []


def test_each_email_simulator_address_gets_its_status_and_noreport_gets_no_report(emulator, events):
    expected = {
        address("Bounce"): "Bounced",
        address("suppressed"): "Suppressed",
        address("FAILED"): "Failed",
        address("quarantined"): "Quarantined",
        address("filteredspam"): "FilteredSpam",
        address("someone"): "Delivered",
    }
    silent = address("noreport")
    to, cc, bcc = list(expected)[:3], list(expected)[3:5] + [silent], list(expected)[5:]

    result = email_client(emulator).begin_send(email(to, cc=cc, bcc=bcc), polling=False).result()

    reports = events.wait_for(len(expected), where=for_message(result["id"]))
    time.sleep(4 * REPORT_DELAY_MS / 1000)
    reports = events.matching(for_message(result["id"]))
    assert {e["data"]["recipient"]: e["data"]["status"] for e in reports} == expected
    (recorded,) = messages(emulator)
    assert recorded["reportStatus"][silent] == {"status": None, "report": "none"}
    assert recorded["reportStatus"][bcc[0]] == {"status": "Delivered", "report": "posted"}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda m: m.pop("senderAddress"), "BadRequest"),
        (lambda m: m["recipients"].update(to=[]), "BadRequest"),
        (lambda m: m["content"].pop("subject"), "BadRequest"),
        (lambda m: m["recipients"]["to"].append({"address": "not-an-address"}), "InvalidEmailAddress"),
        (
            lambda m: m["recipients"].update(bcc=[{"address": f"r{i}@example.com"} for i in range(50)]),
            "TooManyRecipients",
        ),
    ],
    ids=["no sender", "no to", "no subject", "bad address", "51 recipients"],
)
def test_an_invalid_email_is_refused_with_400_and_an_error_code(emulator, change, code):
    body = email([address("alice")])
    change(body)

    with pytest.raises(HttpResponseError) as error:
        email_client(emulator, retry_total=0).begin_send(body, polling=False).result()

    assert error.value.status_code == 400
    assert error.value.error.code == code
    assert messages(emulator) == []


def test_an_email_over_10_mb_is_refused_with_413(emulator):
    body = email([address("alice")])
    body["attachments"] = [
        {"name": "big.bin", "contentType": "application/octet-stream",
         "contentInBase64": base64.b64encode(b"\0" * (8 * 1024 * 1024)).decode()}
    ]

    with pytest.raises(HttpResponseError) as error:
        email_client(emulator, retry_total=0).begin_send(body, polling=False).result()

    assert error.value.status_code == 413
    assert error.value.error.code == "PayloadTooLarge"


def test_an_email_with_attachments_is_recorded_with_each_attachments_name_type_size_and_sha256(emulator):
    body = email([address("alice")])
    pdf, csv = b"%PDF-1.4 minimal", b"id,total\n1,9.99\n"
    body["attachments"] = [
        {"name": "invoice.pdf", "contentType": "application/pdf", "contentInBase64": base64.b64encode(pdf).decode()},
        {"name": "lines.csv", "contentType": "text/csv", "contentInBase64": base64.b64encode(csv).decode()},
    ]

    email_client(emulator).begin_send(body, polling=False).result()

    [recorded] = messages(emulator, "email")
    assert recorded["attachments"] == [
        {"name": "invoice.pdf", "contentType": "application/pdf", "size": len(pdf), "sha256": hashlib.sha256(pdf).hexdigest()},
        {"name": "lines.csv", "contentType": "text/csv", "size": len(csv), "sha256": hashlib.sha256(csv).hexdigest()},
    ]
    assert "contentInBase64" not in str(recorded)


@pytest.mark.parametrize(
    "attachment",
    [
        {"contentType": "application/pdf", "contentInBase64": "YWI="},
        {"name": "a.pdf", "contentInBase64": "YWI="},
        {"name": "a.pdf", "contentType": "application/pdf"},
        {"name": "a.pdf", "contentType": "pdf", "contentInBase64": "YWI="},
        {"name": "a.pdf", "contentType": "application/pdf", "contentInBase64": "not base64!"},
        "a.pdf",
    ],
    ids=["no name", "no content type", "no content", "content type not type/subtype", "not base64", "not an object"],
)
def test_an_invalid_attachment_is_refused_with_400_invalid_attachment(emulator, attachment):
    body = email([address("alice")])
    body["attachments"] = [attachment]

    with pytest.raises(HttpResponseError) as error:
        email_client(emulator, retry_total=0).begin_send(body, polling=False).result()

    assert (error.value.status_code, error.value.error.code) == (400, "InvalidAttachment")
    assert messages(emulator) == []


def test_a_sender_whose_domain_is_not_linked_is_refused_with_domain_not_linked():
    config = EmulatorConfig(webhook_url="", allowed_sender_domains=("contoso.com",))
    with running_emulator(config) as base_url:
        client = email_client(base_url, retry_total=0)
        body = email([address("alice")])
        body["senderAddress"] = "DoNotReply@fabrikam.com"

        with pytest.raises(HttpResponseError) as error:
            client.begin_send(body, polling=False).result()
        accepted = client.begin_send(email([address("alice")]), polling=False).result()

    assert error.value.status_code == 400
    assert error.value.error.code == "DomainNotLinked"
    assert accepted["status"] == "Running"


# -- sms ----------------------------------------------------------------------------------------------


def test_sms_reports_delivered_failed_for_0001_and_none_for_0002(emulator, events):
    numbers = ["+14255550123", "+14255550001", "+14255550002"]

    results = sms_client(emulator).send(SMS_SENDER, numbers, "Hello", enable_delivery_report=True, tag="n-42")

    assert [r.to for r in results] == numbers
    assert all(r.successful and r.http_status_code == 202 for r in results)
    assert all(SMS_MESSAGE_ID.match(r.message_id) for r in results)
    ids = {r.to: r.message_id for r in results}
    reports = events.wait_for(2, where=lambda e: e["eventType"] == SMS_REPORT)
    time.sleep(4 * REPORT_DELAY_MS / 1000)
    reports = events.matching(lambda e: e["eventType"] == SMS_REPORT)
    by_to = {e["data"]["to"]: e for e in reports}
    assert set(by_to) == {numbers[0], numbers[1]}
    assert by_to[numbers[0]]["data"]["deliveryStatus"] == "Delivered"
    assert by_to[numbers[1]]["data"]["deliveryStatus"] == "Failed"
    delivered = by_to[numbers[0]]
    assert delivered["id"] == delivered["data"]["messageId"] == ids[numbers[0]]
    assert delivered["subject"] == "/phonenumber/14255550123"
    assert delivered["topic"] == DEFAULT_RESOURCE_ID
    assert (delivered["dataVersion"], delivered["metadataVersion"]) == ("1.0", "1")
    assert delivered["data"]["from"] == SMS_SENDER
    assert delivered["data"]["tag"] == "n-42"
    assert delivered["data"]["deliveryStatusDetails"]
    assert delivered["data"]["receivedTimestamp"]
    (attempt,) = delivered["data"]["deliveryAttempts"]
    assert (attempt["segmentsSucceeded"], attempt["segmentsFailed"]) == (1, 0)
    assert len(messages(emulator, "sms")) == 3
    assert messages(emulator, "email") == []


def test_an_invalid_phone_number_fails_inside_a_202(emulator):
    raw = []

    results = sms_client(emulator).send(SMS_SENDER, ["12345", "+14255550123"], "Hello", raw_response_hook=raw.append)

    assert raw[0].http_response.status_code == 202
    invalid, valid = results
    assert (invalid.http_status_code, invalid.successful) == (400, False)
    assert invalid.error_message == "Invalid To phone number format."
    assert invalid.message_id is None
    assert valid.successful
    assert [m["recipients"] for m in messages(emulator, "sms")] == [["+14255550123"]]


def test_a_repeated_repeatability_request_id_returns_the_same_message_id_and_records_one_message(emulator, events):
    generated = sms_client(emulator)._sms_service_client.sms
    request = SendMessageRequest(
        from_property=SMS_SENDER,
        sms_recipients=[
            SmsRecipient(
                to="+14255550123",
                repeatability_request_id=str(uuid.uuid4()),
                repeatability_first_sent=formatdate(usegmt=True),
            )
        ],
        message="Hello",
        sms_send_options=SmsSendOptions(enable_delivery_report=True, tag="n-7"),
    )

    (first,) = generated.send(request).value
    events.wait_for(1, where=for_message(first.message_id))
    (second,) = generated.send(request).value
    time.sleep(4 * REPORT_DELAY_MS / 1000)

    assert first.successful and second.successful
    assert second.message_id == first.message_id
    assert first.repeatability_result == second.repeatability_result == "accepted"
    assert len(messages(emulator, "sms")) == 1
    assert len(events.matching(for_message(first.message_id))) == 1


def test_a_repeatability_request_id_without_first_sent_is_rejected(emulator):
    generated = sms_client(emulator)._sms_service_client.sms
    request = SendMessageRequest(
        from_property=SMS_SENDER,
        sms_recipients=[SmsRecipient(to="+14255550123", repeatability_request_id=str(uuid.uuid4()))],
        message="Hello",
    )

    (item,) = generated.send(request).value

    assert (item.http_status_code, item.successful, item.repeatability_result) == (400, False, "rejected")
    assert item.message_id is None
    assert messages(emulator) == []


# -- faults -------------------------------------------------------------------------------------------


def test_a_throttle_rate_of_1_answers_429_with_retry_after_and_records_nothing(emulator, events):
    set_faults(emulator, throttleRate=1.0, retryAfterSeconds=7)
    raw = []

    with pytest.raises(HttpResponseError) as email_error:
        email_client(emulator, retry_total=0).begin_send(
            email([address("alice")]), polling=False, raw_response_hook=raw.append
        ).result()
    with pytest.raises(HttpResponseError) as sms_error:
        sms_client(emulator, retry_total=0).send(SMS_SENDER, "+14255550123", "Hello")

    assert email_error.value.status_code == 429
    assert email_error.value.error.code == "TooManyRequests"
    assert raw[0].http_response.headers["Retry-After"] == "7"
    assert sms_error.value.status_code == 429
    assert messages(emulator) == []
    assert [r["status"] for r in httpx.get(emulator + "/emulator/requests").json()] == [429, 429]
    assert httpx.get(emulator + "/emulator/faults").json() == {
        "latencyMs": 0, "throttleRate": 1.0, "retryAfterSeconds": 7, "serverErrorRate": 0.0,
        "duplicateReportRate": 0.0, "reportDelayJitterMs": 0, "foreignReportRate": 0.0,
    }


def test_the_sdk_by_default_retries_a_throttled_send_three_times_honouring_retry_after(emulator):
    set_faults(emulator, throttleRate=1.0, retryAfterSeconds=1)
    started = time.monotonic()

    with pytest.raises(HttpResponseError) as error:
        email_client(emulator).begin_send(email([address("alice")]), polling=False).result()

    assert error.value.status_code == 429
    assert time.monotonic() - started >= 3
    attempts = httpx.get(emulator + "/emulator/requests").json()
    assert [(a["method"], a["status"]) for a in attempts] == [("POST", 429)] * 4


def test_a_server_error_rate_of_1_answers_500_and_records_nothing(emulator):
    set_faults(emulator, serverErrorRate=1.0)

    with pytest.raises(HttpResponseError) as email_error:
        email_client(emulator, retry_total=0).begin_send(email([address("alice")]), polling=False).result()
    with pytest.raises(HttpResponseError) as sms_error:
        sms_client(emulator, retry_total=0).send(SMS_SENDER, "+14255550123", "Hello")

    assert email_error.value.status_code == 500
    assert email_error.value.error.code == "InternalServerError"
    assert sms_error.value.status_code == 500
    assert messages(emulator) == []


def test_injected_latency_delays_answers_without_blocking_concurrent_requests(emulator):
    set_faults(emulator, latencyMs=400)
    client = email_client(emulator)
    results = []

    def send() -> None:
        results.append(client.begin_send(email([address("alice")]), polling=False).result())

    threads = [threading.Thread(target=send) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    elapsed = time.monotonic() - started

    assert len(results) == 3
    assert 0.4 <= elapsed < 1.15, "the three sends were not served concurrently"
    assert len(messages(emulator)) == 3


# -- report faults and statistics ---------------------------------------------------------------------


def stats(base_url: str) -> dict:
    return httpx.get(base_url + "/emulator/stats").json()


def wait_for_no_pending_reports(base_url: str, timeout_s: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        current = stats(base_url)
        if all(c["pending"] == 0 for c in current["channels"].values()):
            return current
        assert time.monotonic() < deadline, f"reports still pending: {current}"
        time.sleep(0.02)


def send_mixed(base_url: str) -> tuple[str, dict[str, str]]:
    """An email to a delivered, a bounced and a silent recipient, and SMS to a delivered, a failed and
    a silent number; returns the email operation id and the SMS message ids by number."""
    to = [address("alice"), address("bounce"), address("noreport")]
    operation = email_client(base_url).begin_send(email(to), polling=False).result()
    numbers = ["+14255550123", "+14255550001", "+14255550002"]
    results = sms_client(base_url).send(SMS_SENDER, numbers, "Hello", enable_delivery_report=True)
    return operation["id"], {r.to: r.message_id for r in results}


def test_the_report_faults_are_read_validated_and_reset(emulator):
    changed = httpx.put(
        emulator + "/emulator/faults",
        json={"duplicateReportRate": 0.3, "reportDelayJitterMs": 500, "foreignReportRate": 0.1},
    )

    assert changed.status_code == 200
    assert changed.json() | {} == httpx.get(emulator + "/emulator/faults").json()
    assert {k: changed.json()[k] for k in ("duplicateReportRate", "reportDelayJitterMs", "foreignReportRate")} == {
        "duplicateReportRate": 0.3, "reportDelayJitterMs": 500, "foreignReportRate": 0.1,
    }
    for bad in (
        {"duplicateReportRate": 1.5}, {"foreignReportRate": -0.1}, {"reportDelayJitterMs": -1},
        {"reportDelayJitterMs": 2.5}, {"duplicateReportRate": "0.5"}, {"foreignReportRate": True},
    ):
        answer = httpx.put(emulator + "/emulator/faults", json=bad)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["code"] == "BadRequest"
    reset = httpx.delete(emulator + "/emulator/faults").json()
    assert (reset["duplicateReportRate"], reset["reportDelayJitterMs"], reset["foreignReportRate"]) == (0.0, 0, 0.0)


def test_without_report_faults_each_message_gets_one_post_and_the_stats_count_it(emulator, events):
    events.answer = lambda body: {"received": len(body), "applied": len(body), "rejected": 0, "note": "x"}

    operation_id, sms_ids = send_mixed(emulator)

    current = wait_for_no_pending_reports(emulator)
    time.sleep(2 * REPORT_DELAY_MS / 1000)
    assert len(events) == 4
    email_posts = [r for r in events.requests if r.body[0]["eventType"] == EMAIL_REPORT]
    assert len(email_posts) == 1 and len(email_posts[0].body) == 2, "an email's reports go in one batch"
    assert sorted(e["id"] for e in events) == sorted({e["id"] for e in events}), "no duplicates"
    assert all(e["topic"] == DEFAULT_RESOURCE_ID for e in events)
    assert current["channels"]["email"] == {
        "accepted": 1, "reports": {"Bounced": 1, "Delivered": 1}, "duplicatesPosted": 0, "foreignPosted": 0,
        "pending": 0, "gaveUp": 0,
    }
    assert current["channels"]["sms"] == {
        "accepted": 3, "reports": {"Delivered": 1, "Failed": 1}, "duplicatesPosted": 0, "foreignPosted": 0,
        "pending": 0, "gaveUp": 0,
    }
    assert current["webhook"]["posts"] == len(events.requests)
    assert current["webhook"]["failedAttempts"] == 0
    assert current["webhook"]["responses"] == {"received": 4, "applied": 4, "rejected": 0}
    wait_for_email_status(emulator, operation_id, "Succeeded")


def test_a_duplicate_report_rate_of_1_posts_every_report_twice_with_the_same_id_in_separate_posts(emulator, events):
    set_faults(emulator, duplicateReportRate=1.0)

    operation_id, sms_ids = send_mixed(emulator)

    current = wait_for_no_pending_reports(emulator)
    ids = [e["id"] for e in events]
    assert len(ids) == 8 and all(ids.count(i) == 2 for i in ids), "each of the 4 reports arrives twice"
    for request in events.requests:
        in_post = [e["id"] for e in request.body]
        assert len(in_post) == len(set(in_post)), "a duplicate never shares a POST with its original"
    for event_id in set(ids):
        copies = [e for e in events if e["id"] == event_id]
        assert copies[0] == copies[1], "a redelivery is the same event"
    by_message = {e["data"]["messageId"] for e in events}
    assert by_message == {operation_id, sms_ids["+14255550123"], sms_ids["+14255550001"]}
    assert current["channels"]["email"]["reports"] == {"Bounced": 1, "Delivered": 1}
    assert current["channels"]["email"]["duplicatesPosted"] == 2
    assert current["channels"]["sms"]["reports"] == {"Delivered": 1, "Failed": 1}
    assert current["channels"]["sms"]["duplicatesPosted"] == 2
    (recorded,) = messages(emulator, "email")
    assert recorded["status"] == "Succeeded"
    assert sorted(r["report"] for r in recorded["reportStatus"].values()) == ["none", "posted", "posted"]


def test_a_duplicate_report_rate_of_0_5_duplicates_about_half_each_in_a_later_post(emulator, events):
    set_faults(emulator, duplicateReportRate=0.5)

    results = sms_client(emulator).send(SMS_SENDER, [f"+1425556{i:04d}" for i in range(10, 90)], "Hi",
                                        enable_delivery_report=True)

    current = wait_for_no_pending_reports(emulator)
    assert len(results) == 80
    duplicated = current["channels"]["sms"]["duplicatesPosted"]
    assert current["channels"]["sms"]["reports"] == {"Delivered": 80}
    assert 20 <= duplicated <= 60
    assert len(events) == 80 + duplicated
    posts: dict[str, list[int]] = {}
    for index, request in enumerate(events.requests):
        for event in request.body:
            posts.setdefault(event["id"], []).append(index)
    twice = {event_id: where for event_id, where in posts.items() if len(where) == 2}
    assert len(twice) == duplicated and all(len(where) in (1, 2) for where in posts.values())
    assert all(first < second for first, second in twice.values()), "the copies travel in different POSTs"


def test_report_delay_jitter_delivers_reports_out_of_order_within_delay_plus_jitter(emulator, events):
    jitter_ms = 400
    set_faults(emulator, reportDelayJitterMs=jitter_ms)
    client = sms_client(emulator)
    sent_at = {}
    for i in range(20):
        (result,) = client.send(SMS_SENDER, f"+1425557{i + 10:04d}", "Hi", enable_delivery_report=True)
        sent_at[result.message_id] = time.monotonic()
    to = [address(f"r{i}") for i in range(10)]
    operation = email_client(emulator).begin_send(email(to), polling=False).result()
    sent_at[operation["id"]] = time.monotonic()

    events.wait_for(30)
    wait_for_no_pending_reports(emulator)

    arrived = {
        (event["data"]["messageId"], event["data"].get("recipient")): request.received_at
        for request in events.requests
        for event in request.body
    }
    assert len(arrived) == 30
    sms_order = [e["data"]["messageId"] for e in events if e["eventType"] == SMS_REPORT]
    assert sms_order != list(sent_at)[:20], "with 400 ms of jitter the SMS reports overtake each other"
    assert len(events.requests) > 2, "jittered reports of one email do not all share one POST"
    for (message_id, _recipient), at in arrived.items():
        waited = at - sent_at[message_id]
        assert REPORT_DELAY_MS / 1000 - 0.05 <= waited <= (REPORT_DELAY_MS + jitter_ms) / 1000 + 0.3
    assert {e["data"]["recipient"] for e in events if e["eventType"] == EMAIL_REPORT} == set(to)
    wait_for_email_status(emulator, operation["id"], "Succeeded")


def test_a_foreign_report_rate_of_1_also_posts_each_report_from_another_topic_with_a_new_id(emulator, events):
    set_faults(emulator, foreignReportRate=1.0)
    events.answer = lambda body: {"received": len(body),
                                  "rejected": sum(e["topic"] == FOREIGN_RESOURCE_ID for e in body)}

    operation_id, sms_ids = send_mixed(emulator)

    current = wait_for_no_pending_reports(emulator)
    assert len(events) == 8
    genuine = [e for e in events if e["topic"] == DEFAULT_RESOURCE_ID]
    foreign = [e for e in events if e["topic"] == FOREIGN_RESOURCE_ID]
    assert len(genuine) == len(foreign) == 4
    assert not {e["id"] for e in genuine} & {e["id"] for e in foreign}
    assert len({e["id"] for e in foreign}) == 4
    strip = lambda e: (e["data"]["messageId"], e["data"].get("recipient"), e["data"].get("to"), e["eventType"])  # noqa: E731
    assert sorted(map(strip, foreign)) == sorted(map(strip, genuine)), "each foreign copy mirrors a genuine report"
    for copy_ in foreign:
        original = next(e for e in genuine if strip(e) == strip(copy_))
        assert copy_["data"] == original["data"] and copy_["subject"] == original["subject"]
    assert current["channels"]["email"]["foreignPosted"] == 2
    assert current["channels"]["sms"]["foreignPosted"] == 2
    assert current["channels"]["email"]["reports"] == {"Bounced": 1, "Delivered": 1}
    assert current["webhook"]["responses"] == {"received": 8, "rejected": 4}


def test_stats_count_accepted_messages_pending_and_given_up_reports_and_failed_posts():
    with running_webhook_recorder() as (url, events):
        config = EmulatorConfig(webhook_url=url, report_delay_ms=REPORT_DELAY_MS, report_retry_interval_ms=50,
                                report_give_up_after_s=0.3)
        with running_emulator(config) as base_url:
            events.status_code = 503
            set_faults(base_url, duplicateReportRate=1.0)
            sms_client(base_url).send(SMS_SENDER, ["+14255550123", "+14255550002"], "Hi",
                                      enable_delivery_report=True)
            early = stats(base_url)
            current = wait_for_no_pending_reports(base_url, timeout_s=5)

    assert early["channels"]["sms"]["accepted"] == 2
    assert early["channels"]["sms"]["pending"] == 2, "the report and its duplicate"
    assert current["channels"]["sms"]["gaveUp"] == 2
    assert current["channels"]["sms"]["reports"] == {}
    assert current["webhook"]["posts"] == 0
    assert current["webhook"]["failedAttempts"] >= 2


def test_clearing_the_emulator_forgets_messages_and_drops_reports_not_yet_posted(emulator, events):
    events.status_code = 503
    result = email_client(emulator).begin_send(email([address("alice")]), polling=False).result()
    time.sleep(3 * REPORT_DELAY_MS / 1000)

    cleared = httpx.delete(emulator + "/emulator/messages").json()
    events.status_code = 200
    time.sleep(4 * REPORT_DELAY_MS / 1000)

    assert cleared["clearedMessages"] == 1
    assert messages(emulator) == []
    assert events.matching(for_message(result["id"])) == []


# -- configuration ------------------------------------------------------------------------------------


def test_settings_are_read_from_acs_emulator_environment_variables():
    key = base64.b64encode(b"another-key").decode()
    config = EmulatorConfig.from_env(
        {
            "ACS_EMULATOR_PORT": "9123",
            "ACS_EMULATOR_ACCESS_KEY": key,
            "ACS_EMULATOR_WEBHOOK_URL": "http://127.0.0.1:9999/hook",
            "ACS_EMULATOR_WEBHOOK_TOKEN": "tok",
            "ACS_EMULATOR_REPORT_DELAY_MS": "5",
            "ACS_EMULATOR_ALLOWED_SENDER_DOMAINS": "Contoso.com, fabrikam.com",
        },
        host="0.0.0.0",
    )

    assert (config.host, config.port, config.access_key) == ("0.0.0.0", 9123, key)
    assert config.webhook_url == "http://127.0.0.1:9999/hook"
    assert (config.webhook_token, config.report_delay_ms) == ("tok", 5)
    assert config.allowed_sender_domains == ("contoso.com", "fabrikam.com")
    assert EmulatorConfig().webhook_url == "http://127.0.0.1:7071/api/events"
    with pytest.raises(ValueError):
        EmulatorConfig(access_key="not base64!")
