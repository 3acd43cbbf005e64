"""The operator dashboard in a real headless Chromium, against the local stack with data in it.

Debian's ``chromium`` package drives it (Playwright's own browser download is not used). Without
a Chromium the test is skipped, except under ``CI=true``, where ``.ci/run`` installs one and a
missing browser is a failure: CI must really run it.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from tests.e2e.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e

DASHBOARD = "/api/admin/dashboard"
OPERATOR_KEY = "dev-operator-key"


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("no Chromium under CI: .ci/run installs Debian's chromium; the dashboard test must run there")
    pytest.skip("no Chromium on this machine (apt-get install chromium) to run the dashboard in a browser")


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


def email(local: str) -> dict:
    return {"channel": "email", "to": [f"{local}+{uuid.uuid4().hex[:8]}@example.com"], "subject": "Hi", "text": "Hello"}


def sms(number: str) -> dict:
    return {"channel": "sms", "to": [number], "message": "Your code is 123456"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The local stack holding, for the last hour: 9 emails sent (6 delivered, 2 bounced, 1
    failed), 2 emails dead-lettered after ACS kept failing, and 4 SMS (3 delivered, 1 failed)."""
    settings = {"FAILURE_RATE_MIN_SENT": "5", "MAX_SEND_ATTEMPTS": "2", "RETRY_BASE_SECONDS": "0.1", "RETRY_MAX_SECONDS": "0.2"}
    with LocalStack(tmp_path_factory.mktemp("dashboard"), **settings) as running:
        expected = {
            "delivered": [email("jane") for _ in range(6)] + [sms(f"+1425555{1000 + i}") for i in range(3)],
            "bounced": [email("bounce"), email("bounce")],
            "failed": [email("failed"), sms("+14255550001")],
        }
        for status, bodies in expected.items():
            for body in bodies:
                running.wait_for_status(running.send(body).json()["id"], status)
        running.set_faults(serverErrorRate=1.0)
        try:
            running.dead = [running.send(email("jane")).json()["id"] for _ in range(2)]
            for nid in running.dead:
                running.wait_for_status(nid, "dead_lettered")
        finally:
            running.set_faults(serverErrorRate=0.0)
        yield running


@pytest.fixture
def page(browser, stack):
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    opened.goto(stack.api + DASHBOARD)
    yield opened
    context.close()


def sign_in(page, key: str) -> None:
    page.get_by_label("Operator key or token").fill(key)
    page.get_by_role("button", name="Sign in").click()


def read_table(table) -> list[dict[str, str]]:
    """The table as a person reads it: each body row as {column heading: visible text}."""
    headings = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    return [
        dict(zip(headings, (c.strip() for c in row.locator("th, td").all_inner_texts())))
        for row in table.locator("tbody tr").all()
    ]


def column_sum(rows: list[dict[str, str]], column: str) -> int:
    return sum(int(row[column]) for row in rows)


def test_an_operator_signs_in_and_sees_the_counts_per_channel_and_status(page, tmp_path):
    sign_in(page, OPERATOR_KEY)

    totals = page.get_by_role("table").filter(has_text="Failure rate")
    totals.wait_for()
    by_channel = {row["Channel"]: row for row in read_table(totals)}
    assert {k: by_channel["Email"][k] for k in ("Sent", "Delivered", "Bounced", "Failed", "Dead-lettered")} == {
        "Sent": "9", "Delivered": "6", "Bounced": "2", "Failed": "1", "Dead-lettered": "2",
    }
    assert {k: by_channel["SMS"][k] for k in ("Sent", "Delivered", "Bounced", "Failed", "Dead-lettered")} == {
        "Sent": "4", "Delivered": "3", "Bounced": "0", "Failed": "1", "Dead-lettered": "0",
    }
    # Each chart has its numbers in a table; the hours add up to the totals.
    email_hours = read_table(page.get_by_role("table").filter(has_text="Email: notifications accepted per hour"))
    assert len(email_hours) == 24
    assert [column_sum(email_hours, c) for c in ("Sent", "Delivered", "Bounced", "Failed", "Dead-lettered")] == [9, 6, 2, 1, 2]
    sms_hours = read_table(page.get_by_role("table").filter(has_text="SMS: notifications accepted per hour"))
    assert [column_sum(sms_hours, c) for c in ("Sent", "Delivered", "Failed")] == [4, 3, 1]
    assert page.locator("svg.chart").count() == 2
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    # A shorter window: six hours, the same notifications (all accepted within the last minutes).
    page.get_by_label("Window", exact=True).select_option(label="last 6 hours")
    email_table = page.get_by_role("table").filter(has_text="Email: notifications accepted per hour")
    wait_until(lambda: email_table.locator("tbody tr").count() == 6, timeout=10, what="six hourly rows")
    assert column_sum(read_table(email_table), "Sent") == 9


def test_the_failure_rate_is_shown_against_its_thresholds(page):
    sign_in(page, OPERATOR_KEY)

    email_rate = page.get_by_role("article", name="Email failure rate")
    email_rate.wait_for()
    text = email_rate.inner_text()
    # 2 bounced + 1 failed of 9 sent, over the 2 % critical threshold.
    assert "33.33 %" in text
    assert "3 failures of 9 sent" in text
    assert "Critical: at or above the critical threshold" in text
    assert "Warning at 1.00 %, critical at 2.00 %" in text
    sms_rate = page.get_by_role("article", name="SMS failure rate").inner_text()
    assert "25.00 %" in sms_rate and "Not judged: fewer than 5 sent" in sms_rate
    assert "last 60 minutes" in page.locator("#rate-window").inner_text()


def test_the_newest_dead_letters_show_with_their_reasons(page, stack):
    sign_in(page, OPERATOR_KEY)

    table = page.get_by_role("table").filter(has_text="MaxAttemptsExceeded")
    table.wait_for()
    rows = read_table(table)
    assert sorted(row["Notification"] for row in rows) == sorted(stack.dead)
    assert {(row["Channel"], row["Reason"]) for row in rows} == {("Email", "MaxAttemptsExceeded")}
    assert all("HTTP 500" in row["Description"] for row in rows)
    assert [row["Dead-lettered"] for row in rows] == sorted((row["Dead-lettered"] for row in rows), reverse=True)
    assert page.get_by_text("The 2 newest, newest first.").is_visible()


def test_the_dead_letters_section_says_when_it_cannot_show_them(page):
    # The dead-letter listing fails (as a 503 from a store that is down would) while the figures load.
    page.route("**/api/admin/dead-letters*", lambda route: route.fulfill(status=503, body="down"))
    sign_in(page, OPERATOR_KEY)

    state = page.get_by_text("Dead letters unavailable")
    state.wait_for()
    assert "HTTP 503" in state.inner_text()
    assert not page.locator("#dead-letters").is_visible()
    assert page.get_by_role("article", name="Email failure rate").is_visible()


def test_a_dead_letter_description_is_shown_as_text_never_run_as_html(page):
    # A description carries text from outside (an ACS error message); here, markup that would run.
    hostile = '<img src=x onerror="document.title=\'pwned\'">'
    listing = {"deadLetters": [{
        "id": "dl-1", "notificationId": "n-1", "channel": "email", "reason": "RequestRejected",
        "description": hostile, "deadLetteredAt": "2026-11-22T17:00:00+00:00", "source": "ledger", "replayCount": 0,
    }]}
    page.route("**/api/admin/dead-letters*", lambda route: route.fulfill(json=listing))
    sign_in(page, OPERATOR_KEY)

    table = page.get_by_role("table").filter(has_text="RequestRejected")
    table.wait_for()
    [row] = read_table(table)
    assert row["Description"] == hostile
    assert page.locator("#dead-letters img").count() == 0
    assert page.title() == "Notifications: operator dashboard"


def test_without_an_operator_key_no_figures_show(page, stack):
    # Before signing in: only the sign-in form.
    assert page.get_by_label("Operator key or token").is_visible()
    assert page.get_by_role("table").count() == 0
    assert "Sign in with an operator key" in page.get_by_role("status").first.inner_text()

    sign_in(page, "not-a-key")
    page.get_by_text("was not accepted (401)").wait_for()
    assert not page.locator("#dashboard").is_visible()

    sign_in(page, "dev-sender-key")
    page.get_by_text("does not have the operator role (403)").wait_for()
    assert not page.locator("#dashboard").is_visible()
    assert page.locator("table tbody tr").count() == 0


def test_signing_out_clears_the_figures_and_the_token(page):
    sign_in(page, OPERATOR_KEY)
    page.get_by_role("article", name="Email failure rate").wait_for()

    page.get_by_role("button", name="Sign out").click()

    assert page.get_by_label("Operator key or token").is_visible()
    assert page.locator("table tbody tr").count() == 0
    assert page.evaluate("() => sessionStorage.length") == 0
    page.reload()
    assert page.get_by_label("Operator key or token").is_visible()
    wait_until(lambda: not page.locator("#dashboard").is_visible(), timeout=2, what="the dashboard to stay hidden")
