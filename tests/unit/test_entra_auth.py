"""Entra ID access tokens at the HTTP edge: real RS256 tokens minted with a test key pair, checked
against the test tenant's JWKS served over HTTP (tests/entra.py)."""

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization

from tests.entra import CLIENT_ID, ISSUER_V1, SigningKey, Tenant

EMAIL = {"channel": "email", "to": ["a@example.com"], "subject": "Receipt", "text": "Thanks"}
VALIDATION_EVENT = {
    "id": "1", "topic": "t", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
    "data": {"validationCode": "abc-123"}, "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1",
}
WEBHOOK_SECRET = "s" * 16 + "-webhook-secret-for-tests"


@pytest.fixture
def tenant():
    tenant = Tenant()
    yield tenant
    tenant.close()


@pytest.fixture
def app(tenant, api_client):
    """A client factory: the API over faked ports, trusting the test tenant (plus ``settings``)."""
    return lambda **settings: api_client(**tenant.settings(**settings))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, claims: dict) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."


def send(client, token: str):
    return client.post("/api/notifications", json=EMAIL, headers=bearer(token))


def test_a_token_from_the_tenant_with_the_send_role_can_send_and_owns_the_notification(app, tenant):
    client = app()
    response = send(client, tenant.token())

    assert response.status_code == 202, response.text
    [stored] = client.services.ledger.rows.values()
    assert stored.owner == "entra-aaaaaaaa-0000-0000-0000-000000000001"


def test_the_client_id_is_an_accepted_audience_too(app, tenant):
    assert send(app(), tenant.token(aud=CLIENT_ID)).status_code == 202


def forged_tokens(tenant: Tenant) -> dict[str, str]:
    """Tokens that must not get in, each wrong in exactly one way."""
    now = int(time.time())
    valid = tenant.token()
    header, payload, signature = valid.split(".")
    elevated = b64url(json.dumps(tenant.claims(roles=["Notify.Send", "Notify.Operate"])).encode())
    public_pem = tenant.key.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": tenant.key.kid}).encode())
    hs_signature = b64url(hmac.new(public_pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest())
    flipped = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    return {
        "wrong audience": tenant.token(aud="api://some-other-api"),
        "wrong issuer": tenant.token(iss="https://login.microsoftonline.com/99999999-2222-3333-4444-555555555555/v2.0"),
        "v1 issuer while only v2 is configured": tenant.token(iss=ISSUER_V1),
        "expired": tenant.token(iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not yet valid": tenant.token(nbf=now + 3600),
        "no expiry": tenant.token(exp=None),
        "no object id": tenant.token(oid=None),
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": tenant.key.kid}, tenant.claims()),
        "alg none without a kid": unsigned({"alg": "none", "typ": "JWT"}, tenant.claims()),
        "claims changed after signing": f"{header}.{elevated}.{signature}",
        "signature tampered": f"{header}.{payload}.{flipped}",
        "HS256 keyed with the tenant's public key": f"{hs_header}.{payload}.{hs_signature}",
        "signed by a key the tenant never published": tenant.token(key=SigningKey(kid=tenant.key.kid)),
        "not a JWT": "not-a-token",
    }


FORGED = [
    "wrong audience", "wrong issuer", "v1 issuer while only v2 is configured", "expired", "not yet valid", "no expiry",
    "no object id", "alg none", "alg none without a kid", "claims changed after signing", "signature tampered",
    "HS256 keyed with the tenant's public key", "signed by a key the tenant never published", "not a JWT",
]


@pytest.mark.parametrize("case", FORGED)
def test_a_forged_or_foreign_token_is_401_and_sends_nothing(app, tenant, case):
    client = app()
    response = send(client, forged_tokens(tenant)[case])

    assert response.status_code == 401, (case, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.services.queue.sent == [] and client.services.ledger.rows == {}


def test_every_forged_token_case_is_tested(tenant):
    # The parametrisation above names the cases by hand; this keeps it in step with the builder.
    assert set(forged_tokens(tenant)) == set(FORGED)


def test_a_v1_token_is_accepted_when_version_1_is_configured(app, tenant):
    client = app(ENTRA_TOKEN_VERSIONS="1,2")
    v1 = tenant.token(iss=ISSUER_V1, ver="1.0", azp=None, appid="bbbbbbbb-0000-0000-0000-000000000001")
    assert send(client, v1).status_code == 202
    assert send(client, tenant.token()).status_code == 202


@pytest.mark.parametrize(
    "roles",
    [None, [], ["Notify.Operate"], ["Notify.EventGrid"], ["Some.Other.Role"], "Notify.Send"],
    ids=["no roles claim", "empty roles", "operator only", "eventgrid only", "unknown role", "roles not a list"],
)
def test_a_valid_token_without_the_send_role_is_403(app, tenant, roles):
    client = app()
    response = send(client, tenant.token(roles=roles))
    assert response.status_code == 403
    assert client.services.queue.sent == []


def test_app_roles_map_to_service_roles_as_configured(app, tenant):
    client = app(ENTRA_ROLE_MAP="Mail.Sender=sender,Ops=operator")
    assert send(client, tenant.token(roles=["Mail.Sender"])).status_code == 202
    assert send(client, tenant.token(roles=["Notify.Send"])).status_code == 403
    assert client.get("/api/reconciliation", headers=bearer(tenant.token(roles=["Ops"]))).status_code == 200


def test_another_caller_cannot_read_a_notification_but_an_operator_can(app, tenant):
    client = app()
    location = send(client, tenant.token()).json()["location"]

    assert client.get(location, headers=bearer(tenant.token())).status_code == 200
    other_app = tenant.token(oid="aaaaaaaa-0000-0000-0000-000000000002", sub="aaaaaaaa-0000-0000-0000-000000000002")
    assert client.get(location, headers=bearer(other_app)).status_code == 404
    operator = tenant.token(oid="cccccccc-0000-0000-0000-000000000003", roles=["Notify.Operate"])
    assert client.get(location, headers=bearer(operator)).status_code == 200


def test_the_signing_keys_are_fetched_once_and_cached(app, tenant):
    client = app()
    for _ in range(3):
        assert send(client, tenant.token()).status_code == 202
    assert tenant.fetches == 1


def test_a_rotated_key_is_picked_up_by_one_refetch(app, tenant):
    client = app(ENTRA_JWKS_REFRESH_COOLDOWN_SECONDS="0")
    assert send(client, tenant.token()).status_code == 202

    tenant.rotate()
    assert send(client, tenant.token()).status_code == 202
    assert send(client, tenant.token()).status_code == 202

    assert tenant.fetches == 2


def test_made_up_key_ids_do_not_make_every_request_fetch_the_keys(app, tenant):
    client = app()  # the default cooldown between refetches
    assert send(client, tenant.token()).status_code == 202
    for _ in range(5):
        assert send(client, tenant.token(key=SigningKey())).status_code == 401
    assert tenant.fetches == 1


def test_keys_that_cannot_be_fetched_are_503_to_retry_not_401(app, tenant):
    tenant.reachable = False
    client = app()
    response = send(client, tenant.token())

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.headers["content-type"] == "application/problem+json"
    assert client.services.queue.sent == []


def test_dev_keys_still_work_beside_entra_on_the_local_stack(app, tenant):
    client = app()
    assert send(client, "test-sender").status_code == 202
    assert tenant.fetches == 0


# ------------------------------------------------------------------------------ the Event Grid webhook


def test_event_grid_delivering_with_an_entra_token_passes_the_handshakes(app, tenant):
    client = app()
    token = bearer(tenant.token(roles=["Notify.EventGrid"]))

    validation = client.post("/api/events", json=[VALIDATION_EVENT], headers=token)
    handshake = client.options("/api/events", headers=token | {"WebHook-Request-Origin": "eventgrid.azure.net"})

    assert validation.json() == {"validationResponse": "abc-123"}
    assert handshake.status_code == 200 and handshake.headers["webhook-allowed-origin"] == "eventgrid.azure.net"


@pytest.mark.parametrize("roles", [["Notify.Send"], ["Notify.Operate"]])
def test_senders_and_operators_cannot_post_events(app, tenant, roles):
    response = app().post("/api/events", json=[VALIDATION_EVENT], headers=bearer(tenant.token(roles=roles)))
    assert response.status_code == 403


def test_event_grid_delivering_with_the_secret_header_or_query_passes(app):
    client = app(EVENTGRID_WEBHOOK_SECRET=WEBHOOK_SECRET)

    by_header = client.post("/api/events", json=[VALIDATION_EVENT], headers={"X-Notify-Webhook-Secret": WEBHOOK_SECRET})
    by_query = client.post("/api/events", json=[VALIDATION_EVENT], params={"webhookSecret": WEBHOOK_SECRET})
    handshake = client.options(
        "/api/events", params={"webhookSecret": WEBHOOK_SECRET}, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )

    assert by_header.json() == by_query.json() == {"validationResponse": "abc-123"}
    assert handshake.status_code == 200


def test_a_wrong_webhook_secret_is_401_even_with_a_valid_token(app, tenant):
    client = app(EVENTGRID_WEBHOOK_SECRET=WEBHOOK_SECRET)
    headers = bearer(tenant.token(roles=["Notify.EventGrid"])) | {"X-Notify-Webhook-Secret": WEBHOOK_SECRET[:-1] + "x"}
    assert client.post("/api/events", json=[VALIDATION_EVENT], headers=headers).status_code == 401


def test_a_secret_is_worthless_when_none_is_configured(app):
    client = app()
    response = client.post("/api/events", json=[VALIDATION_EVENT], headers={"X-Notify-Webhook-Secret": WEBHOOK_SECRET})
    assert response.status_code == 401


def test_the_webhook_secret_opens_only_the_webhook(app):
    client = app(EVENTGRID_WEBHOOK_SECRET=WEBHOOK_SECRET)
    response = client.post("/api/notifications", json=EMAIL, headers={"X-Notify-Webhook-Secret": WEBHOOK_SECRET})
    assert response.status_code == 401

