"""The ACS adapters against a running emulator, through the real SDK clients built the way
``shared.bootstrap`` builds them (``retry_total=0``, connection and read timeouts).

Each test reads the emulator's control API (``/emulator/messages``, ``/emulator/requests``) to see
what really reached "ACS", so a retry hidden inside the SDK would show up as an extra request.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx
import pytest
from azure.communication.email import EmailClient
from azure.communication.sms import SmsClient
from azure.core.credentials import AzureKeyCredential
from fastapi import FastAPI
from fastapi.responses import Response

from acs_emulator import DEFAULT_ACCESS_KEY, EmulatorConfig
from acs_emulator.testing import running_emulator, running_webhook_recorder, serve_in_thread
from shared.adapters.acs_email import AcsEmailSender
from shared.adapters.acs_sms import AcsSmsSender
from shared.bootstrap import Services
from shared.config import Settings
from shared.domain.errors import (
    ConfigurationError,
    PayloadTooLarge,
    PermanentSendError,
    RecipientRefused,
    RequestRejected,
    SenderNotAllowed,
    SendTimeout,
    ServiceUnavailable,
    Throttled,
    TransientSendError,
)
from shared.service.ports import EmailAddress, EmailAttachment, OutgoingEmail, OutgoingSms, SmsRecipientRequest
from tests.conftest import SETTINGS

SENDER = "DoNotReply@contoso.com"
SMS_SENDER = "+18005550100"
WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="  # base64, but not the emulator's key
SMS_REPORT = "Microsoft.Communication.SMSDeliveryReportReceived"


# -- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorder():
    with running_webhook_recorder() as (url, events):
        yield url, events


@pytest.fixture(scope="module")
def emulator(recorder):
    config = EmulatorConfig(webhook_url=recorder[0], report_delay_ms=20, report_retry_interval_ms=50)
    with running_emulator(config) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def contoso_only_emulator():
    """A second emulator whose ACS resource has only contoso.com linked as a sender domain."""
    with running_emulator(EmulatorConfig(webhook_url="", allowed_sender_domains=("contoso.com",))) as base_url:
        yield base_url


@pytest.fixture
def events(recorder):
    return recorder[1]


@pytest.fixture(autouse=True)
def clean_slate(emulator, events):
    httpx.delete(emulator + "/emulator/faults").raise_for_status()
    httpx.delete(emulator + "/emulator/messages").raise_for_status()  # also clears the request log
    events.clear()
    yield
    httpx.delete(emulator + "/emulator/faults").raise_for_status()


def client_options(timeout_s: float = 5.0) -> dict:
    """The SDK client options exactly as the composition root computes them."""
    options = Services(Settings(**{**SETTINGS, "ACS_TIMEOUT_SECONDS": str(timeout_s)}))._acs_client_options()
    assert options["retry_total"] == 0
    return options


def email_sender(base_url: str, *, key: str = DEFAULT_ACCESS_KEY, timeout_s: float = 5.0) -> AcsEmailSender:
    return AcsEmailSender(EmailClient(base_url, AzureKeyCredential(key), **client_options(timeout_s)))


def sms_sender(base_url: str, *, key: str = DEFAULT_ACCESS_KEY, timeout_s: float = 5.0, **extra) -> AcsSmsSender:
    return AcsSmsSender(SmsClient(base_url, AzureKeyCredential(key), **client_options(timeout_s), **extra))


def address(local: str) -> str:
    return f"{local}+{uuid.uuid4().hex[:8]}@example.com"


def outgoing_email(
    *,
    operation_id: str | None = None,
    sender: str = SENDER,
    to: list[str] | None = None,
    cc: list[str] = (),
    bcc: list[str] = (),
    subject: str = "Your order shipped",
    html: str | None = "<p>It is on its way.</p>",
) -> OutgoingEmail:
    return OutgoingEmail(
        operation_id=operation_id or str(uuid.uuid4()),
        sender=sender,
        to=[EmailAddress(a, "Someone") for a in (to or [address("alice")])],
        cc=[EmailAddress(a) for a in cc],
        bcc=[EmailAddress(a) for a in bcc],
        subject=subject,
        text="It is on its way.",
        html=html,
    )


def first_sent() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def outgoing_sms(*numbers: str, tag: str = "n-1", ids: list[str] | None = None, at: datetime | None = None):
    at = at or first_sent()
    ids = ids or [str(uuid.uuid4()) for _ in numbers]
    return OutgoingSms(
        sender=SMS_SENDER,
        message="Your code is 123456",
        recipients=[SmsRecipientRequest(n, rid, at) for n, rid in zip(numbers, ids)],
        tag=tag,
    )


def messages(base_url: str, channel: str | None = None) -> list[dict]:
    return httpx.get(base_url + "/emulator/messages", params={"channel": channel} if channel else {}).json()


def acs_requests(base_url: str) -> list[dict]:
    return httpx.get(base_url + "/emulator/requests").json()


def set_faults(base_url: str, **faults) -> None:
    httpx.put(base_url + "/emulator/faults", json=faults).raise_for_status()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


# -- email ------------------------------------------------------------------------------------------


def test_an_email_send_returns_the_operation_id_given_and_the_emulator_records_it_with_its_recipients(emulator):
    to, cc, bcc = address("alice"), address("carol"), address("dave")
    email = outgoing_email(to=[to], cc=[cc], bcc=[bcc], subject="Your order shipped")

    message_id = email_sender(emulator).send(email)

    assert message_id == email.operation_id
    (recorded,) = messages(emulator, "email")
    assert recorded["operationId"] == email.operation_id
    assert (recorded["to"], recorded["cc"], recorded["bcc"]) == ([to], [cc], [bcc])
    assert recorded["subject"] == "Your order shipped"
    assert recorded["sender"] == SENDER


def test_sending_again_with_the_same_operation_id_records_nothing_new(emulator):
    sender = email_sender(emulator)
    email = outgoing_email()

    first = sender.send(email)
    second = sender.send(email)

    assert first == second == email.operation_id
    assert len(messages(emulator, "email")) == 1
    assert [r["status"] for r in acs_requests(emulator)] == [202, 202]


def test_find_operation_returns_the_message_id_of_a_known_operation(emulator):
    sender = email_sender(emulator)
    email = outgoing_email()
    sender.send(email)

    assert sender.find_operation(email.operation_id) == email.operation_id


def test_find_operation_returns_none_for_an_operation_acs_never_saw(emulator):
    assert email_sender(emulator).find_operation(str(uuid.uuid4())) is None
    (request,) = acs_requests(emulator)
    assert request["status"] == 404


def test_a_wrong_access_key_raises_a_configuration_error_that_says_what_to_check(emulator):
    sender = email_sender(emulator, key=WRONG_KEY)

    with pytest.raises(ConfigurationError) as send_error:
        sender.send(outgoing_email())
    with pytest.raises(ConfigurationError) as lookup_error:
        sender.find_operation(str(uuid.uuid4()))

    assert send_error.value.status_code == 401
    assert "ACS_ACCESS_KEY" in send_error.value.message
    assert "ACS_ACCESS_KEY" in lookup_error.value.message
    assert messages(emulator) == []


def test_throttling_raises_throttled_with_the_retry_after_and_the_sdk_does_not_retry_on_its_own(emulator):
    set_faults(emulator, throttleRate=1, retryAfterSeconds=7)

    with pytest.raises(Throttled) as error:
        email_sender(emulator).send(outgoing_email())

    assert error.value.retry_after == 7
    assert error.value.status_code == 429
    (request,) = acs_requests(emulator)  # exactly one: no hidden SDK retry sleeping 7 s
    assert request["status"] == 429
    assert messages(emulator) == []


def test_a_server_error_raises_service_unavailable_after_exactly_one_request(emulator):
    set_faults(emulator, serverErrorRate=1)

    with pytest.raises(ServiceUnavailable) as error:
        email_sender(emulator).send(outgoing_email())

    assert isinstance(error.value, TransientSendError)
    assert error.value.status_code == 500
    assert len(acs_requests(emulator)) == 1


def test_find_operation_under_throttling_raises_throttled_instead_of_answering_unknown(emulator):
    set_faults(emulator, throttleRate=1, retryAfterSeconds=3)

    with pytest.raises(Throttled) as error:
        email_sender(emulator).find_operation(str(uuid.uuid4()))

    assert error.value.retry_after == 3


def test_an_email_with_51_recipients_is_rejected_permanently(emulator):
    email = outgoing_email(to=[address(f"r{i}") for i in range(51)])

    with pytest.raises(RequestRejected) as error:
        email_sender(emulator).send(email)

    assert isinstance(error.value, PermanentSendError)
    assert (error.value.status_code, error.value.code) == (400, "TooManyRecipients")
    assert "51" in error.value.message
    assert messages(emulator) == []


def test_an_invalid_recipient_address_is_rejected_permanently(emulator):
    with pytest.raises(RequestRejected) as error:
        email_sender(emulator).send(outgoing_email(to=["not-an-address"]))

    assert (error.value.status_code, error.value.code) == (400, "InvalidEmailAddress")


def test_an_email_over_the_10_mb_limit_raises_payload_too_large(emulator):
    email = outgoing_email(html="<p>" + "x" * (10 * 1024 * 1024 + 1) + "</p>")

    with pytest.raises(PayloadTooLarge) as error:
        email_sender(emulator).send(email)

    assert isinstance(error.value, PermanentSendError)
    assert error.value.status_code == 413


def test_an_email_with_an_attachment_reaches_acs_with_its_bytes_intact(emulator):
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"
    email = replace(outgoing_email(), attachments=[EmailAttachment("invoice.pdf", "application/pdf", pdf)])

    message_id = email_sender(emulator).send(email)

    (recorded,) = messages(emulator, "email")
    assert recorded["operationId"] == message_id == email.operation_id
    assert recorded["attachments"] == [
        {"name": "invoice.pdf", "contentType": "application/pdf", "size": len(pdf), "sha256": hashlib.sha256(pdf).hexdigest()}
    ]


def test_an_attachment_acs_refuses_raises_request_rejected(emulator):
    email = replace(outgoing_email(), attachments=[EmailAttachment("invoice.pdf", "pdf", b"%PDF")])

    with pytest.raises(RequestRejected) as error:
        email_sender(emulator).send(email)

    assert (error.value.status_code, error.value.code) == (400, "InvalidAttachment")
    assert messages(emulator, "email") == []


def test_a_sender_whose_domain_is_not_linked_raises_sender_not_allowed(contoso_only_emulator):
    sender = email_sender(contoso_only_emulator)

    with pytest.raises(SenderNotAllowed) as error:
        sender.send(outgoing_email(sender="DoNotReply@fabrikam.com"))
    accepted = sender.send(outgoing_email(sender="DoNotReply@contoso.com"))

    assert isinstance(error.value, PermanentSendError)
    assert error.value.code == "DomainNotLinked"
    assert accepted


def test_an_unreachable_endpoint_raises_a_transient_error_that_is_not_ambiguous():
    url = closed_port_url()

    with pytest.raises(TransientSendError) as email_error:
        email_sender(url).send(outgoing_email())
    with pytest.raises(TransientSendError) as sms_error:
        sms_sender(url).send(outgoing_sms("+14255551234"))

    assert email_error.value.ambiguous is False, "the request never reached ACS: safe to send again blindly"
    assert sms_error.value.ambiguous is False


def test_latency_beyond_the_read_timeout_raises_send_timeout_which_is_ambiguous(emulator):
    set_faults(emulator, latencyMs=1000)
    email = outgoing_email()

    started = time.monotonic()
    with pytest.raises(SendTimeout) as error:
        email_sender(emulator, timeout_s=0.3).send(email)
    elapsed = time.monotonic() - started

    assert error.value.ambiguous is True
    assert elapsed < 0.9, "the read timeout, not the emulator, ended the call"
    set_faults(emulator, latencyMs=0)
    # ... and ambiguous it is: the emulator goes on and accepts the email after the client gave up.
    deadline = time.monotonic() + 3
    while not acs_requests(emulator):
        assert time.monotonic() < deadline, "the emulator never finished the timed-out request"
        time.sleep(0.02)
    assert [m["operationId"] for m in messages(emulator, "email")] == [email.operation_id]
    assert email_sender(emulator).find_operation(email.operation_id) == email.operation_id


# -- sms --------------------------------------------------------------------------------------------


def test_an_sms_send_returns_a_message_id_for_each_recipient(emulator):
    numbers = ["+14255551234", "+14255555678"]

    results = sms_sender(emulator).send(outgoing_sms(*numbers))

    assert [r.to for r in results] == numbers
    assert all(r.error is None and r.message_id.startswith("Outgoing_") for r in results)
    recorded = messages(emulator, "sms")
    assert sorted(m["id"] for m in recorded) == sorted(r.message_id for r in results)


def test_the_same_repeatability_id_sent_twice_returns_the_same_message_id_and_records_one_message(emulator):
    sender = sms_sender(emulator)
    sms = outgoing_sms("+14255551234")

    (first,) = sender.send(sms)
    (second,) = sender.send(sms)

    assert first.message_id == second.message_id and second.error is None
    assert len(messages(emulator, "sms")) == 1


def test_an_invalid_number_comes_back_refused_permanently_while_the_valid_recipient_succeeds(emulator):
    valid, invalid = sms_sender(emulator).send(outgoing_sms("+14255551234", "12345"))

    assert valid.error is None and valid.message_id
    assert invalid.to == "12345" and invalid.message_id is None
    assert isinstance(invalid.error, RecipientRefused) and isinstance(invalid.error, PermanentSendError)
    assert invalid.error.status_code == 400
    assert "Invalid To phone number format." in invalid.error.message
    (recorded,) = messages(emulator, "sms")
    assert recorded["id"] == valid.message_id


def test_a_server_error_on_sms_raises_service_unavailable_after_exactly_one_request(emulator):
    set_faults(emulator, serverErrorRate=1)

    with pytest.raises(ServiceUnavailable):
        sms_sender(emulator).send(outgoing_sms("+14255551234"))

    (request,) = acs_requests(emulator)
    assert (request["path"], request["status"]) == ("/sms", 500)
    assert messages(emulator) == []


def test_throttling_on_sms_raises_throttled_with_the_retry_after_after_exactly_one_request(emulator):
    set_faults(emulator, throttleRate=1, retryAfterSeconds=7)

    with pytest.raises(Throttled) as error:
        sms_sender(emulator).send(outgoing_sms("+14255551234"))

    assert error.value.retry_after == 7
    assert len(acs_requests(emulator)) == 1


def test_a_wrong_access_key_on_sms_raises_a_configuration_error(emulator):
    with pytest.raises(ConfigurationError) as error:
        sms_sender(emulator, key=WRONG_KEY).send(outgoing_sms("+14255551234"))

    assert "ACS_ACCESS_KEY" in error.value.message


def test_the_sms_request_carries_our_repeatability_id_and_an_rfc_1123_first_sent_equal_to_ours(emulator):
    sent: list = []
    at = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    request_id = str(uuid.uuid4())
    sender = sms_sender(emulator, raw_request_hook=lambda pipeline_request: sent.append(pipeline_request.http_request))

    (result,) = sender.send(outgoing_sms("+14255551234", ids=[request_id], at=at))

    assert result.error is None
    (request,) = sent
    (recipient,) = json.loads(request.body)["smsRecipients"]
    assert recipient["repeatabilityRequestId"] == request_id
    assert recipient["repeatabilityFirstSent"] == "Tue, 04 Mar 2025 05:06:07 GMT"
    assert parsedate_to_datetime(recipient["repeatabilityFirstSent"]) == at
    (recorded,) = messages(emulator, "sms")
    assert recorded["repeatabilityRequestId"] == request_id


def test_the_tag_is_passed_through_to_the_delivery_report(emulator, events):
    tag = f"notification-{uuid.uuid4()}"

    (result,) = sms_sender(emulator).send(outgoing_sms("+14255551234", tag=tag))

    (report,) = events.wait_for(1, where=lambda e: e["data"].get("messageId") == result.message_id)
    assert report["eventType"] == SMS_REPORT
    assert report["data"]["tag"] == tag
    (recorded,) = messages(emulator, "sms")
    assert recorded["tag"] == tag and recorded["enableDeliveryReport"] is True


# -- an answer that cannot be read ------------------------------------------------------------------


@pytest.fixture(scope="module")
def garbled_acs():
    """Answers every send with 202 and a body set by the test: ACS took the request, the answer is lost."""
    app = FastAPI()
    app.state.body = b""

    @app.post("/emails:send")
    @app.post("/sms")
    def accept() -> Response:
        return Response(app.state.body, status_code=202, media_type="application/json")

    with serve_in_thread(app) as base_url:
        yield base_url, app


@pytest.mark.parametrize("body", [b"<html>proxy error</html>", b'{"value": 5}'], ids=["not json", "wrong shape"])
def test_a_202_whose_body_cannot_be_read_is_an_ambiguous_send_timeout_for_sms(garbled_acs, body):
    base_url, app = garbled_acs
    app.state.body = body

    with pytest.raises(SendTimeout) as error:
        sms_sender(base_url).send(outgoing_sms("+14255551234"))

    assert error.value.ambiguous is True


def test_a_202_whose_body_is_not_json_is_an_ambiguous_send_timeout_for_email(garbled_acs):
    base_url, app = garbled_acs
    app.state.body = b"<html>proxy error</html>"

    with pytest.raises(SendTimeout) as error:
        email_sender(base_url).send(outgoing_email())

    assert error.value.ambiguous is True


def test_an_email_202_with_an_empty_body_still_returns_the_operation_id(garbled_acs):
    base_url, app = garbled_acs
    app.state.body = b""
    email = outgoing_email()

    assert email_sender(base_url).send(email) == email.operation_id
