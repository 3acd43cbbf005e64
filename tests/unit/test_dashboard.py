"""The operator dashboard's figures (service layer, with fakes) and its routes (the HTTP edge)."""

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from shared.domain.commands import FailureRateThresholds, Reconcile
from shared.domain.errors import RequestRejected
from shared.domain.model import Channel, DeliveryReport
from shared.entrypoints.api import create_api
from shared.entrypoints.dashboard import ASSETS, PAGE
from shared.service import handlers
from shared.service.dashboard import dashboard_figures
from tests.unit.builders import World, email_command, sms_command

THRESHOLDS = FailureRateThresholds(warning=0.01, critical=0.02, window_minutes=60, min_sent=50)
OPERATOR = {"Authorization": "Bearer test-operator"}
SENDER = {"Authorization": "Bearer test-sender"}


def email_with_report(world: World, status: str | None, address: str | None = None) -> str:
    # A unique address each time: a bounce puts its address on the suppression list.
    address = address or f"u-{uuid.uuid4().hex[:8]}@example.com"
    n, _ = world.submit(email_command(address))
    world.dispatch(n.id)
    if status:
        world.reports(DeliveryReport(event_id=f"e-{n.id}", channel=Channel.EMAIL, message_id=n.id, recipient=address, status=status))
    return n.id


def sms_with_report(world: World, status: str, number: str = "+14255551234") -> str:
    n, _ = world.submit(sms_command(number))
    world.dispatch(n.id)
    [recipient] = world.ledger.get(n.id).recipients
    world.reports(DeliveryReport(event_id=f"e-{n.id}", channel=Channel.SMS, message_id=recipient.message_id, recipient=number, status=status))
    return n.id


def dead_lettered_email(world: World) -> str:
    world.email.failures = [RequestRejected("bad payload", status_code=400, code="InvalidRequest")]
    n, _ = world.submit(email_command())
    world.dispatch(n.id)
    return n.id


def figures(world: World, hours: int = 24, thresholds: FailureRateThresholds = THRESHOLDS) -> dict:
    return dashboard_figures(ledger=world.ledger, clock=world.clock, hours=hours, thresholds=thresholds)


def test_each_hour_shows_what_became_of_the_notifications_accepted_in_it_per_channel():
    # Given a clock at 12:00, two hours of traffic: 10:xx and 11:xx
    world = World()
    world.clock.advance(-2 * 3600 + 60)  # 10:01
    email_with_report(world, "Delivered")
    email_with_report(world, "Delivered")
    email_with_report(world, "Bounced")
    world.clock.advance(3600)  # 11:01
    email_with_report(world, "Failed")
    dead_lettered_email(world)
    sms_with_report(world, "Delivered")
    email_with_report(world, None)  # still awaiting its report: sent, nothing else
    world.clock.advance(3600 - 120)  # 11:59

    shown = figures(world, hours=3)

    assert [h[11:16] for h in shown["hours"]] == ["09:00", "10:00", "11:00"]
    email = shown["channels"]["email"]["series"]
    assert email == {
        "sent": [0, 3, 2],
        "delivered": [0, 2, 0],
        "bounced": [0, 1, 0],
        "failed": [0, 0, 1],
        "deadLettered": [0, 0, 1],
    }
    assert shown["channels"]["sms"]["series"]["sent"] == [0, 0, 1]
    assert shown["channels"]["sms"]["series"]["delivered"] == [0, 0, 1]
    totals = shown["channels"]["email"]["totals"]
    assert (totals["accepted"], totals["sent"], totals["delivered"], totals["deadLettered"], totals["awaitingReport"]) == (6, 5, 2, 1, 1)


def test_notifications_accepted_before_the_first_hour_are_not_shown():
    world = World()
    email_with_report(world, "Bounced")  # 12:00
    world.clock.advance(3 * 3600)  # 15:00: the 3-hour window starts at 13:00

    shown = figures(world, hours=3)

    assert shown["from"].startswith("2026-11-01T13:00")
    assert shown["channels"]["email"]["totals"]["accepted"] == 0
    assert sum(shown["channels"]["email"]["series"]["bounced"]) == 0


def test_the_current_hour_counts_what_was_accepted_a_moment_ago():
    world = World()
    email_with_report(world, "Delivered")  # accepted exactly "now"

    shown = figures(world, hours=1)

    assert shown["channels"]["email"]["series"]["delivered"] == [1]


@pytest.mark.parametrize(
    "delivered, bounced, level",
    [(99, 1, "warning"), (97, 3, "critical"), (100, 0, "ok"), (9, 1, "too-few-sends")],
)
def test_the_failure_rate_is_judged_against_the_thresholds(delivered, bounced, level):
    world = World()
    for i in range(delivered + bounced):
        email_with_report(world, "Delivered" if i < delivered else "Bounced", f"u{i}@example.com")
    world.clock.advance(1)
    thresholds = FailureRateThresholds(warning=0.01, critical=0.02, window_minutes=60, min_sent=20)

    rate = figures(world, thresholds=thresholds)["failureRate"]

    assert rate["channels"]["email"] == {
        "sent": delivered + bounced, "failures": bounced, "rate": round(bounced / (delivered + bounced), 4), "level": level
    }
    assert (rate["warning"], rate["critical"], rate["windowMinutes"], rate["minSent"]) == (0.01, 0.02, 60, 20)


def test_the_failure_rate_is_the_one_the_reconciler_alerts_on_not_the_whole_window():
    # Given an old burst of bounces (outside the alert window) and a clean last hour,
    world = World()
    for i in range(10):
        email_with_report(world, "Bounced", f"old{i}@example.com")
    world.clock.advance(2 * 3600)
    for i in range(50):
        email_with_report(world, "Delivered", f"new{i}@example.com")
    world.clock.advance(1)
    reconciled = handlers.reconcile(
        Reconcile(report_deadline=world.clock.now() - timedelta(hours=1), requeue_before=world.clock.now(), thresholds=THRESHOLDS),
        ledger=world.ledger, publisher=world.publisher, suppressions=world.suppressions, clock=world.clock,
    )

    shown = figures(world)

    # then the page says "ok", as the reconciler (which raised no alert) does, while the day's totals show the bounces.
    assert reconciled.alerts == []
    assert shown["failureRate"]["channels"]["email"]["level"] == "ok"
    assert shown["channels"]["email"]["totals"]["bounced"] == 10


@pytest.mark.parametrize("hours", [0, 24 * 7 + 1])
def test_a_window_outside_one_hour_to_a_week_is_refused(hours):
    with pytest.raises(ValueError):
        figures(World(), hours=hours)


# ------------------------------------------------------------------------------ the HTTP edge


@pytest.fixture
def client(faked_services):
    return TestClient(create_api(), raise_server_exceptions=False)


def test_the_page_and_its_assets_are_served_without_a_token_and_hold_no_figures(client):
    accepted = client.post("/api/notifications", headers=SENDER, json={"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})
    for path, (_, media_type) in ASSETS.items():
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == media_type
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert accepted.json()["id"] not in response.text
    page = client.get(PAGE).text
    assert "Operator key or token" in page
    assert "test-operator" not in page


def test_the_figures_need_an_operator(client):
    assert client.get(f"{PAGE}/data").status_code == 401
    assert client.get(f"{PAGE}/data", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(f"{PAGE}/data", headers=SENDER).status_code == 403


def test_an_operator_gets_the_figures_for_the_hours_asked(client, faked_services):
    client.post("/api/notifications", headers=SENDER, json={"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})

    response = client.get(f"{PAGE}/data", params={"hours": 6}, headers=OPERATOR)

    assert response.status_code == 200
    body = response.json()
    assert len(body["hours"]) == 6
    assert body["channels"]["email"]["totals"]["accepted"] == 1
    assert body["failureRate"]["critical"] == faked_services.settings.failure_rate_critical


@pytest.mark.parametrize("hours", ["0", "169", "a day"])
def test_a_bad_window_is_a_422_naming_hours(client, hours):
    response = client.get(f"{PAGE}/data", params={"hours": hours}, headers=OPERATOR)
    assert response.status_code == 422
    assert "hours" in response.json()["errors"][0]["field"]
