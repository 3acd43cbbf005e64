"""The operators' HTTP API at its edge, over a fully faked service."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from shared.domain.model import Channel
from shared.entrypoints.api import create_api

SENDER = {"Authorization": "Bearer test-sender"}
OPERATOR = {"Authorization": "Bearer test-operator"}
EMAIL = {"channel": "email", "to": ["a@example.com"], "subject": "Receipt", "text": "Thanks"}


@pytest.fixture
def client(faked_services):
    return TestClient(create_api(), raise_server_exceptions=False)


def dead_lettered(client, faked_services, reason: str = "MaxAttemptsExceeded", body: dict = EMAIL) -> str:
    nid = client.post("/api/notifications", json=body, headers=SENDER).json()["id"]
    n = faked_services.ledger.get(nid)
    faked_services.clock.advance(1)
    n.mark_dead_lettered(faked_services.clock.now(), reason, "3 attempts failed; last: ServiceUnavailable / HTTP 503")
    faked_services.ledger.save(n)
    return nid


def test_operators_list_dead_letters_newest_first_in_the_shape_the_dashboard_reads(client, faked_services):
    older = dead_lettered(client, faked_services)
    newer = dead_lettered(client, faked_services, reason="RequestRejected")

    response = client.get("/api/admin/dead-letters", headers=OPERATOR)

    assert response.status_code == 200
    listed = response.json()["deadLetters"]
    assert [d["id"] for d in listed] == [newer, older]
    first = listed[0]
    assert {k: first[k] for k in ("id", "notificationId", "channel", "reason", "source", "replayCount")} == {
        "id": newer, "notificationId": newer, "channel": "email", "reason": "RequestRejected", "source": "ledger",
        "replayCount": 0,
    }
    assert first["description"].endswith("HTTP 503")
    assert first["deadLetteredAt"] == faked_services.clock.now().isoformat()


def test_the_dead_letter_listing_takes_its_filters_from_the_query(client, faked_services):
    email = dead_lettered(client, faked_services)
    sms = dead_lettered(client, faked_services, body={"channel": "sms", "to": ["+14255551234"], "message": "Hi"})
    since = faked_services.clock.now().isoformat()

    def ids(**params):
        response = client.get("/api/admin/dead-letters", params=params, headers=OPERATOR)
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()["deadLetters"]]

    assert ids(channel="sms") == [sms]
    assert ids(reason="MaxAttemptsExceeded", channel="email") == [email]
    assert ids(since=since) == [sms]
    assert ids(limit=1) == [sms]


def test_a_bad_filter_is_a_422_problem(client):
    response = client.get("/api/admin/dead-letters", params={"channel": "fax", "limit": 0}, headers=OPERATOR)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert {e["field"] for e in response.json()["errors"]} == {"query/channel", "query/limit"}


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/admin/dead-letters"),
        ("get", "/api/admin/dead-letters/x"),
        ("post", "/api/admin/dead-letters/replay"),
        ("get", "/api/admin/suppressions"),
        ("post", "/api/admin/suppressions"),
        ("delete", "/api/admin/suppressions/email/a@example.com"),
    ],
)
def test_only_operators_may_use_the_admin_routes(client, method, path):
    assert client.request(method, path).status_code == 401
    forbidden = client.request(method, path, headers=SENDER, json={})
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"] == "application/problem+json"


def test_one_dead_letter_shows_its_reason_and_the_notifications_history(client, faked_services):
    nid = dead_lettered(client, faked_services)

    response = client.get(f"/api/admin/dead-letters/{nid}", headers=OPERATOR)

    assert response.status_code == 200
    body = response.json()
    assert body["reason"] == "MaxAttemptsExceeded"
    assert [h["event"] for h in body["notification"]["history"]] == ["accepted", "queued", "dead_lettered"]
    assert client.get("/api/admin/dead-letters/unknown", headers=OPERATOR).status_code == 404


def test_a_replay_through_the_api_requeues_and_shows_in_the_notifications_history(client, faked_services):
    nid = dead_lettered(client, faked_services)

    dry = client.post("/api/admin/dead-letters/replay", json={"ids": [nid], "dryRun": True}, headers=OPERATOR)
    assert dry.status_code == 200 and dry.json()["counts"] == {"wouldReplay": 1}
    assert len(faked_services.queue.sent) == 1  # only intake's message

    response = client.post("/api/admin/dead-letters/replay", json={"channel": "email"}, headers=OPERATOR)

    assert response.status_code == 200
    assert response.json()["counts"] == {"replayed": 1}
    replayed = faked_services.queue.sent[-1]
    assert replayed.body == {"notificationId": nid, "attempt": 1, "replayCount": 1}
    history = client.get(f"/api/notifications/{nid}", headers=OPERATOR).json()["history"]
    replay = next(h for h in history if h["event"] == "replayed")
    assert replay["detail"]["by"].startswith("dev-operator-"), "the caller's identity, not its key"
    [entry] = [e for e in faked_services.ledger.audit_entries() if not e.dry_run]
    assert entry.actor == replay["detail"]["by"] and entry.filter == {"channel": "email", "limit": 100}
    assert entry.outcomes == [{"id": nid, "notificationId": nid, "outcome": "replayed", "replayCount": 1, "suppressedRecipients": 0}]


def test_a_replay_request_with_an_unknown_field_is_a_422_problem(client):
    response = client.post("/api/admin/dead-letters/replay", json={"dry_run": True, "everything": 1}, headers=OPERATOR)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_operators_add_list_and_remove_suppressions_and_each_change_is_audited(client, faked_services):
    def act(method, path, **kwargs):
        faked_services.clock.advance(1)  # so the audit trail has an order
        return client.request(method, path, headers=OPERATOR, **kwargs)

    added = act("post", "/api/admin/suppressions", json={"channel": "email", "address": "Jane@Example.com", "reason": "asked to stop"})
    again = act("post", "/api/admin/suppressions", json={"channel": "email", "address": "jane@example.com", "reason": "again"})
    listed = act("get", "/api/admin/suppressions", params={"channel": "email"}).json()["suppressions"]
    removed = act("delete", "/api/admin/suppressions/email/jane@example.com")
    missing = act("delete", "/api/admin/suppressions/email/jane@example.com")

    assert added.status_code == 201 and added.json()["added"] is True
    assert again.status_code == 200 and again.json()["added"] is False
    assert [(e["address"], e["reason"]) for e in listed] == [("Jane@example.com", "Operator: asked to stop")]
    assert removed.status_code == 204
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    actions = [(e.action, e.outcomes[0]["outcome"]) for e in reversed(faked_services.ledger.audit_entries())]
    assert actions == [
        ("suppressions.add", "added"),
        ("suppressions.add", "skipped"),
        ("suppressions.remove", "removed"),
        ("suppressions.remove", "skipped"),
    ]
    assert faked_services.suppressions.find(Channel.EMAIL, ["jane@example.com"]) == {}


def test_a_suppression_with_an_invalid_address_is_a_422_naming_the_field(client):
    response = client.post(
        "/api/admin/suppressions", json={"channel": "sms", "address": "0123", "reason": "x"}, headers=OPERATOR
    )

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["/address"]
