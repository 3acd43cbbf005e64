"""Every input limit is a setting, enforced at its boundary (the limit passes, one more is a 422
naming the field, or a 413 for the body), and header-bound text refuses control characters."""

import json

import pytest


SENDER = {"Authorization": "Bearer test-sender"}
EMAIL = {"channel": "email", "to": ["a@example.com"], "subject": "Receipt", "text": "Thanks"}
SMS = {"channel": "sms", "to": ["+14255551234"], "message": "Code 123456"}


def post(client, body, headers=None):
    return client.post("/api/notifications", json=body, headers=SENDER | (headers or {}))


def refused_fields(response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [e["field"] for e in response.json()["errors"]]


def emails(n: int) -> list[str]:
    return [f"r{i}@example.com" for i in range(n)]


def numbers(n: int) -> list[str]:
    return [f"+1425555{i:04d}" for i in range(n)]


# Each case: the setting, its test value, a request at the limit, the same one past it, the field.
LIMITS = [
    ("EMAIL_MAX_RECIPIENTS", "3", EMAIL | {"to": emails(1), "cc": emails(3)[1:]}, EMAIL | {"to": emails(1), "cc": emails(3)[1:], "bcc": ["z@example.com"]}, "/to"),
    ("SMS_MAX_RECIPIENTS", "2", SMS | {"to": numbers(2)}, SMS | {"to": numbers(3)}, "/to"),
    ("SUBJECT_MAX_CHARS", "10", EMAIL | {"subject": "s" * 10}, EMAIL | {"subject": "s" * 11}, "/subject"),
    # Bytes, not characters: "é" is two bytes in UTF-8.
    ("EMAIL_TEXT_MAX_BYTES", "10", EMAIL | {"text": "é" * 5}, EMAIL | {"text": "é" * 5 + "."}, "/text"),
    ("EMAIL_HTML_MAX_BYTES", "15", EMAIL | {"html": "<p>éééé</p>"}, EMAIL | {"html": "<p>éééé.</p>"}, "/html"),
    ("SMS_MAX_CHARS", "20", SMS | {"message": "m" * 20}, SMS | {"message": "m" * 21}, "/message"),
    (
        "DISPLAY_NAME_MAX_CHARS", "5",
        EMAIL | {"cc": [{"address": "c@example.com", "displayName": "Jane "}]},
        EMAIL | {"cc": [{"address": "c@example.com", "displayName": "Jane D"}]},
        "/cc/0/displayName",
    ),
    ("METADATA_MAX_BYTES", "13", EMAIL | {"metadata": {"k": "vvvvv"}}, EMAIL | {"metadata": {"k": "vvvvvv"}}, "/metadata"),
]


@pytest.mark.parametrize("setting, value, at_limit, past_limit, field", LIMITS, ids=[case[0] for case in LIMITS])
def test_a_request_at_the_limit_is_accepted_and_one_past_it_is_422_naming_the_field(api_client, setting, value, at_limit, past_limit, field):
    client = api_client(**{setting: value})

    assert post(client, at_limit).status_code == 202
    assert field in refused_fields(post(client, past_limit))
    assert len(client.services.queue.sent) == 1


def test_the_default_limits_are_acs_and_rfc_limits(api_client):
    client = api_client()
    assert post(client, EMAIL | {"to": emails(50)}).status_code == 202
    assert "/to" in refused_fields(post(client, EMAIL | {"to": emails(51)}))
    assert post(client, EMAIL | {"subject": "s" * 998}).status_code == 202
    assert "/subject" in refused_fields(post(client, EMAIL | {"subject": "s" * 999}))


def body_of(size: int) -> bytes:
    """A valid email request of exactly ``size`` bytes."""
    bare = json.dumps(EMAIL | {"text": ""}).encode()
    return json.dumps(EMAIL | {"text": "x" * (size - len(bare))}).encode()


def test_a_body_at_max_request_bytes_is_read_and_one_byte_more_is_413(api_client):
    client = api_client(MAX_REQUEST_BYTES="2048")
    headers = SENDER | {"Content-Type": "application/json"}

    assert len(body_of(2048)) == 2048
    assert client.post("/api/notifications", content=body_of(2048), headers=headers).status_code == 202
    response = client.post("/api/notifications", content=body_of(2049), headers=headers)
    assert response.status_code == 413
    assert len(client.services.queue.sent) == 1


def test_an_idempotency_key_at_the_limit_is_accepted_and_one_character_more_is_422(api_client):
    client = api_client(IDEMPOTENCY_KEY_MAX_CHARS="130")

    assert post(client, EMAIL, {"Idempotency-Key": "k" * 130}).status_code == 202
    assert refused_fields(post(client, EMAIL, {"Idempotency-Key": "k" * 131})) == ["Idempotency-Key"]


def test_a_batch_idempotency_key_has_the_same_limit(api_client):
    client = api_client(IDEMPOTENCY_KEY_MAX_CHARS="130")
    batch = {"notifications": [EMAIL | {"idempotencyKey": "k" * 130}, EMAIL | {"idempotencyKey": "k" * 131}]}

    results = client.post("/api/notifications/batch", json=batch, headers=SENDER).json()["results"]

    assert [r["status"] for r in results] == [202, 422]
    assert [e["field"] for e in results[1]["problem"]["errors"]] == ["/idempotencyKey"]


def test_the_openapi_document_states_the_configured_idempotency_key_limit(api_client):
    spec = api_client(IDEMPOTENCY_KEY_MAX_CHARS="130").get("/api/openapi.json").json()
    [header] = [p for p in spec["paths"]["/api/notifications"]["post"]["parameters"] if p["name"] == "Idempotency-Key"]
    assert header["schema"]["maxLength"] == 130


# ------------------------------------------------------------------------------ control characters

CONTROL = ["\r", "\n", "\r\n", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]
CONTROL_IDS = ["CR", "LF", "CRLF", "NUL", "ESC", "DEL", "NEL (C1)", "LINE SEPARATOR", "PARAGRAPH SEPARATOR"]


@pytest.mark.parametrize("char", CONTROL, ids=CONTROL_IDS)
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda c: EMAIL | {"subject": f"Hi{c}Bcc: victim@example.com"}, "/subject"),
        (lambda c: EMAIL | {"to": [{"address": "a@example.com", "displayName": f"Jane{c}Doe"}]}, "/to/0/displayName"),
        (lambda c: EMAIL | {"replyTo": [{"address": "r@example.com", "displayName": f"Desk{c}"}]}, "/replyTo/0/displayName"),
    ],
    ids=["subject", "display name", "reply-to display name"],
)
def test_control_characters_in_header_bound_text_are_422(api_client, make, field, char):
    client = api_client()
    assert field in refused_fields(post(client, make(char)))
    assert client.services.queue.sent == []


@pytest.mark.parametrize("char", CONTROL, ids=CONTROL_IDS)
def test_control_characters_in_a_batch_idempotency_key_are_422(api_client, char):
    client = api_client()
    batch = {"notifications": [EMAIL | {"idempotencyKey": f"order{char}42"}]}
    [result] = client.post("/api/notifications/batch", json=batch, headers=SENDER).json()["results"]
    assert result["status"] == 422
    assert [e["field"] for e in result["problem"]["errors"]] == ["/idempotencyKey"]


@pytest.mark.parametrize("char", ["\x01", "\x1b", "\x7f"], ids=["SOH", "ESC", "DEL"])
def test_control_characters_in_the_idempotency_key_header_are_422(api_client, char):
    # CR and LF cannot travel in an HTTP header at all; these can.
    client = api_client()
    response = post(client, EMAIL, {"Idempotency-Key": f"order{char}42"})
    assert refused_fields(response) == ["Idempotency-Key"]


def test_a_tab_is_allowed_in_a_subject_but_not_in_a_display_name(api_client):
    client = api_client()
    assert post(client, EMAIL | {"subject": "Order\t42"}).status_code == 202
    named = EMAIL | {"to": [{"address": "a@example.com", "displayName": "Jane\tDoe"}]}
    assert "/to/0/displayName" in refused_fields(post(client, named))


def test_a_lone_surrogate_in_the_body_is_400_not_a_crash(api_client):
    client = api_client()
    body = b'{"channel": "email", "to": ["a@example.com"], "subject": "Hi \\ud800", "text": "x"}'
    response = client.post("/api/notifications", content=body, headers=SENDER | {"Content-Type": "application/json"})
    assert response.status_code == 400
    assert client.services.queue.sent == []
