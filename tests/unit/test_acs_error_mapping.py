"""Every failure the ACS SDKs can raise maps into the error tree; nothing from azure.core escapes.

No network: the azure-core exceptions are built around a tiny fake response that offers what
``HttpResponseError.__init__`` reads (``status_code``, ``reason``, ``headers``, ``text()``).
"""

from __future__ import annotations

import inspect
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import azure.core.exceptions as core_exceptions
import pytest
from azure.communication.sms._generated.models import SmsSendResponse, SmsSendResponseItem
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    SerializationError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.utils import CaseInsensitiveDict

from shared.adapters.acs_errors import acs_errors, error_for_status, retry_after_seconds
from shared.adapters.acs_sms import AcsSmsSender
from shared.domain.errors import (
    ConfigurationError,
    PayloadTooLarge,
    PermanentSendError,
    RecipientRefused,
    RequestRejected,
    SenderNotAllowed,
    SendError,
    SendTimeout,
    ServiceUnavailable,
    Throttled,
    TransientSendError,
)
from shared.service.ports import OutgoingSms, SmsRecipientRequest

REASONS = {
    200: "OK", 202: "Accepted", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 409: "Conflict", 412: "Precondition Failed",
    413: "Payload Too Large", 422: "Unprocessable Entity", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class FakeRequest:
    method = "POST"
    url = "https://acs.example.com/emails:send?api-version=2025-09-01"


class FakeResponse:
    """What azure-core's exceptions read from a response, and nothing more."""

    def __init__(self, status: int, *, headers: dict[str, str] | None = None, body: object = None) -> None:
        self.status_code = status
        self.reason = REASONS.get(status, "Unknown")
        self.headers = CaseInsensitiveDict(headers or {})
        self.content_type = "application/json"
        self.request = FakeRequest()
        self._text = body if isinstance(body, str) else json.dumps(body) if body is not None else ""

    def text(self, encoding: str | None = None) -> str:
        return self._text


def acs_body(code: str, message: str = "ACS said no.") -> dict:
    return {"error": {"code": code, "message": message}}


def http_error(status: int, *, cls=HttpResponseError, headers: dict[str, str] | None = None, body: object = None):
    return cls(response=FakeResponse(status, headers=headers, body=body))


def translate(exc: BaseException) -> SendError:
    """Raise ``exc`` inside ``acs_errors`` and return what came out (which must be a SendError)."""
    with pytest.raises(SendError) as caught:
        with acs_errors("x"):
            raise exc
    assert caught.value.__cause__ is exc, "the SDK exception is chained for the logs"
    assert str(caught.value).startswith("x: "), "the message names the operation"
    return caught.value


TRANSIENT, PERMANENT, CONFIGURATION = "transient", "permanent", "configuration"


def kind(error: SendError) -> str:
    if isinstance(error, TransientSendError):
        return TRANSIENT
    if isinstance(error, PermanentSendError):
        return PERMANENT
    assert isinstance(error, ConfigurationError)
    return CONFIGURATION


# -- the table: every azure-core failure the clients raise ----------------------------------------

CASES = [
    # (id, exception factory, class in the tree, kind, ambiguous for transients)
    ("ClientAuthenticationError 401", lambda: http_error(401, cls=ClientAuthenticationError, body=acs_body("Denied")),
     ConfigurationError, CONFIGURATION, None),
    ("ClientAuthenticationError without a response (a token credential failed)",
     lambda: ClientAuthenticationError("no token"), ConfigurationError, CONFIGURATION, None),
    ("ResourceNotFoundError 404", lambda: http_error(404, cls=ResourceNotFoundError, body=acs_body("NotFound")),
     ConfigurationError, CONFIGURATION, None),
    ("ResourceExistsError 409", lambda: http_error(409, cls=ResourceExistsError, body=acs_body("Conflict")),
     RequestRejected, PERMANENT, None),
    ("ResourceModifiedError 412", lambda: http_error(412, cls=ResourceModifiedError), RequestRejected, PERMANENT, None),
    ("ResourceNotModifiedError 304", lambda: http_error(304, cls=ResourceNotModifiedError),
     RequestRejected, PERMANENT, None),
    ("HttpResponseError 400", lambda: http_error(400, body=acs_body("BadRequest")), RequestRejected, PERMANENT, None),
    ("HttpResponseError 401", lambda: http_error(401), ConfigurationError, CONFIGURATION, None),
    ("HttpResponseError 403", lambda: http_error(403, body=acs_body("Forbidden")),
     ConfigurationError, CONFIGURATION, None),
    ("HttpResponseError 404", lambda: http_error(404), ConfigurationError, CONFIGURATION, None),
    ("HttpResponseError 408", lambda: http_error(408), SendTimeout, TRANSIENT, True),
    ("HttpResponseError 409", lambda: http_error(409), RequestRejected, PERMANENT, None),
    ("HttpResponseError 413", lambda: http_error(413, body=acs_body("PayloadTooLarge")),
     PayloadTooLarge, PERMANENT, None),
    ("HttpResponseError 422", lambda: http_error(422), RequestRejected, PERMANENT, None),
    ("HttpResponseError 429", lambda: http_error(429, headers={"Retry-After": "3"}), Throttled, TRANSIENT, False),
    ("HttpResponseError 500", lambda: http_error(500, body=acs_body("InternalServerError")),
     ServiceUnavailable, TRANSIENT, True),
    ("HttpResponseError 502 with an HTML body", lambda: http_error(502, body="<html>Bad Gateway</html>"),
     ServiceUnavailable, TRANSIENT, True),
    ("HttpResponseError 503", lambda: http_error(503), ServiceUnavailable, TRANSIENT, True),
    ("HttpResponseError 504", lambda: http_error(504), ServiceUnavailable, TRANSIENT, True),
    ("HttpResponseError without a response", lambda: HttpResponseError("boom"), ServiceUnavailable, TRANSIENT, True),
    ("ServiceRequestError (never reached ACS)", lambda: ServiceRequestError("connection refused"),
     ServiceUnavailable, TRANSIENT, False),
    ("ServiceRequestTimeoutError (connect timeout)", lambda: ServiceRequestTimeoutError("connect timed out"),
     ServiceUnavailable, TRANSIENT, False),
    ("ServiceResponseError (connection broken after sending)", lambda: ServiceResponseError("connection reset"),
     SendTimeout, TRANSIENT, True),
    ("ServiceResponseTimeoutError (read timeout)", lambda: ServiceResponseTimeoutError("read timed out"),
     SendTimeout, TRANSIENT, True),
    ("plain AzureError", lambda: AzureError("something else"), SendTimeout, TRANSIENT, True),
    ("DecodeError without a response", lambda: DecodeError("JSON is invalid"), ServiceUnavailable, TRANSIENT, True),
    ("DecodeError of a 202 body", lambda: http_error(202, cls=DecodeError, body="not json"),
     SendTimeout, TRANSIENT, True),
    ("IncompleteReadError of a 202 body", lambda: http_error(202, cls=IncompleteReadError),
     SendTimeout, TRANSIENT, True),
    ("DecodeError of a 503 body", lambda: http_error(503, cls=DecodeError, body="<html>"),
     ServiceUnavailable, TRANSIENT, True),
    ("DeserializationError of a 202 body (SMS generated layer)",
     lambda: DeserializationError("Cannot deserialize as [SmsSendResponseItem]"), SendTimeout, TRANSIENT, True),
    ("JSONDecodeError of a 202 body (email poller's response.json())",
     lambda: json.JSONDecodeError("Expecting value", "not json", 0), SendTimeout, TRANSIENT, True),
    ("SerializationError of our request (nothing sent)", lambda: SerializationError("cannot serialize"),
     RequestRejected, PERMANENT, None),
]


@pytest.mark.parametrize(
    "make, expected, expected_kind, ambiguous", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_sdk_failure_becomes_the_right_class_in_the_error_tree(make, expected, expected_kind, ambiguous):
    error = translate(make())

    assert type(error) is expected
    assert kind(error) == expected_kind
    if ambiguous is not None:
        assert error.ambiguous is ambiguous
    assert error.describe().startswith(error.reason)


def test_the_http_status_is_kept_on_the_translated_error():
    for status in (400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504):
        assert translate(http_error(status)).status_code == status


def test_every_exception_class_azure_core_defines_leaves_acs_errors_as_a_send_error():
    """Walks azure.core.exceptions itself, so a class added by a new azure-core is covered too."""
    classes = [
        cls for cls in vars(core_exceptions).values()
        if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == core_exceptions.__name__
    ]
    assert len(classes) >= 20

    def build(cls):
        attempts = (
            lambda: cls(response=FakeResponse(500)),
            lambda: cls(FakeResponse(500)),
            lambda: cls([]),  # TooManyRedirectsError(history)
            lambda: cls("boom"),
        )
        for attempt in attempts:
            try:
                return attempt()
            except Exception:
                continue
        raise AssertionError(f"could not build {cls.__name__}")

    for cls in classes:
        error = translate(build(cls))
        assert kind(error) in (TRANSIENT, PERMANENT, CONFIGURATION), cls.__name__


def test_a_wrong_key_says_what_to_check():
    error = translate(http_error(401, cls=ClientAuthenticationError, body=acs_body("Denied", "Denied by the RP.")))

    assert "ACS_ACCESS_KEY" in error.message and "managed identity" in error.message


def test_a_404_says_to_check_the_endpoint():
    assert "ACS_ENDPOINT" in translate(http_error(404, cls=ResourceNotFoundError)).message


def test_the_acs_error_code_and_message_come_from_the_error_body():
    error = translate(http_error(400, body=acs_body("TooManyRecipients", "The email has 51 recipients.")))

    assert error.code == "TooManyRecipients"
    assert error.message == "x: The email has 51 recipients."


def test_the_acs_error_code_falls_back_to_the_x_ms_error_code_header():
    error = translate(http_error(400, headers={"x-ms-error-code": "InvalidEmailAddress"}, body="not json"))

    assert type(error) is RequestRejected
    assert error.code == "InvalidEmailAddress"


@pytest.mark.parametrize(
    "code", ["DomainNotLinked", "SenderNotAllowed", "InvalidSenderUserName", "DomainNotVerified", "UnauthorizedSender"]
)
def test_a_sender_the_resource_cannot_use_is_sender_not_allowed(code):
    from_body = translate(http_error(400, body=acs_body(code)))
    from_header = translate(http_error(400, headers={"x-ms-error-code": code}))

    assert type(from_body) is type(from_header) is SenderNotAllowed
    assert from_body.code == code and kind(from_body) == PERMANENT


# -- Retry-After --------------------------------------------------------------------------------------


def test_a_429_carries_retry_after_in_seconds():
    error = translate(http_error(429, headers={"Retry-After": "7"}, body=acs_body("TooManyRequests")))

    assert isinstance(error, Throttled) and error.retry_after == 7


def test_a_503_carries_retry_after_too():
    error = translate(http_error(503, headers={"Retry-After": "12"}))

    assert isinstance(error, ServiceUnavailable) and error.retry_after == 12


def test_retry_after_as_an_http_date_becomes_seconds_from_now():
    when = datetime.now(timezone.utc) + timedelta(seconds=30)

    error = translate(http_error(429, headers={"Retry-After": format_datetime(when, usegmt=True)}))

    assert 27 <= error.retry_after <= 30


def test_retry_after_as_an_http_date_with_a_minus_zero_offset_is_read_as_utc():
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    value = format_datetime(when, usegmt=True).replace("GMT", "-0000")

    assert 27 <= retry_after_seconds({"Retry-After": value}) <= 30


def test_retry_after_ms_wins_over_retry_after():
    headers = {"retry-after-ms": "1500", "Retry-After": "9"}

    assert retry_after_seconds(headers) == 1.5
    assert translate(http_error(429, headers=headers)).retry_after == 1.5


def test_x_ms_retry_after_ms_is_read_too():
    assert retry_after_seconds({"x-ms-retry-after-ms": "250"}) == 0.25


@pytest.mark.parametrize(
    "headers, expected",
    [
        (None, None),
        ({}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, 0.0),
        ({"RETRY-AFTER": "4"}, 4.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past: no wait
        ({"retry-after-ms": "not a number", "Retry-After": "2"}, 2.0),
    ],
    ids=["no headers", "empty", "blank", "garbage", "negative", "any case", "past date", "bad ms falls back"],
)
def test_retry_after_edge_cases(headers, expected):
    assert retry_after_seconds(headers) == expected


def test_a_429_without_retry_after_has_none():
    assert translate(http_error(429)).retry_after is None


# -- SMS per-recipient codes inside a 202 ---------------------------------------------------------


@pytest.mark.parametrize(
    "status, expected, expected_kind",
    [
        (400, RequestRejected, PERMANENT),
        (401, ConfigurationError, CONFIGURATION),
        (404, ConfigurationError, CONFIGURATION),
        (408, SendTimeout, TRANSIENT),
        (429, Throttled, TRANSIENT),
        (500, ServiceUnavailable, TRANSIENT),
        (503, ServiceUnavailable, TRANSIENT),
    ],
)
def test_error_for_status_classifies_a_status_on_its_own(status, expected, expected_kind):
    error = error_for_status(status, None, "sms recipient: whatever")

    assert type(error) is expected and kind(error) == expected_kind and error.status_code == status


class FakeSmsOperations:
    def __init__(self, response):
        self.response = response
        self.requests = []

    def send(self, request):
        self.requests.append(request)
        return self.response


class FakeSmsClient:
    """Just the generated layer AcsSmsSender calls: ``client._sms_service_client.sms.send``."""

    def __init__(self, response):
        self.sms = FakeSmsOperations(response)
        self._sms_service_client = self


FIRST_SENT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def send_sms(*items: SmsSendResponseItem):
    sms = OutgoingSms(
        sender="+18005550100",
        message="hi",
        recipients=[SmsRecipientRequest(item.to, f"rid-{i}", FIRST_SENT) for i, item in enumerate(items)],
        tag="n-1",
    )
    client = FakeSmsClient(SmsSendResponse(value=list(items)))
    return AcsSmsSender(client).send(sms), client.sms.requests[0]


def item(to: str, status: int, *, message_id: str | None = None, repeatability: str | None = "accepted",
         error: str | None = None) -> SmsSendResponseItem:
    return SmsSendResponseItem(
        to=to, message_id=message_id, http_status_code=status, repeatability_result=repeatability,
        successful=message_id is not None, error_message=error,
    )


def test_an_sms_recipient_refused_with_400_is_a_permanent_recipient_refused_and_the_others_succeed():
    results, _ = send_sms(
        item("+14255551234", 202, message_id="Outgoing_1"),
        item("12345", 400, error="Invalid To phone number format."),
    )

    ok, refused = results
    assert ok.message_id == "Outgoing_1" and ok.error is None
    assert refused.message_id is None
    assert type(refused.error) is RecipientRefused and isinstance(refused.error, PermanentSendError)
    assert refused.error.status_code == 400
    assert "Invalid To phone number format." in refused.error.message


def test_an_sms_recipient_with_a_rejected_repeatability_id_is_permanent_and_says_why():
    (result,), _ = send_sms(item("+14255551234", 400, repeatability="rejected", error="Invalid DateTime value."))

    assert isinstance(result.error, PermanentSendError)
    assert result.error.code == "repeatability:rejected"


@pytest.mark.parametrize("status, expected", [(500, ServiceUnavailable), (503, ServiceUnavailable), (429, Throttled)])
def test_an_sms_recipient_with_a_5xx_or_429_is_transient(status, expected):
    (result,), _ = send_sms(item("+14255551234", status, error="try later"))

    assert type(result.error) is expected and isinstance(result.error, TransientSendError)


def test_an_sms_recipient_without_a_status_is_treated_as_a_transient_failure():
    (result,), _ = send_sms(item("+14255551234", None, error=None))

    assert isinstance(result.error, TransientSendError)


def test_an_sms_202_without_per_recipient_results_is_an_ambiguous_timeout_not_a_crash():
    sms = OutgoingSms("+18005550100", "hi", [SmsRecipientRequest("+14255551234", "rid", FIRST_SENT)], "n-1")

    for response in (None, SmsSendResponse(value=None)):
        with pytest.raises(SendTimeout) as caught:
            AcsSmsSender(FakeSmsClient(response)).send(sms)
        assert caught.value.ambiguous is True


def test_the_sms_request_carries_our_repeatability_ids_first_sent_as_rfc_1123_and_the_tag():
    _, request = send_sms(item("+14255551234", 202, message_id="Outgoing_1"))

    (recipient,) = request.sms_recipients
    assert recipient.repeatability_request_id == "rid-0"
    assert recipient.repeatability_first_sent == "Thu, 02 Jan 2025 03:04:05 GMT"
    assert request.sms_send_options.enable_delivery_report is True
    assert request.sms_send_options.tag == "n-1"
