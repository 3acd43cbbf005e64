"""Operators on the local stack: a burst dead-lettered while ACS is down, inspected with ``dlq list``
and replayed with ``dlq replay`` once ACS is back, ends delivered with one send per notification,
even when the replay is killed half-way and run again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import httpx
import pytest

from tests.e2e.stack import OPERATOR, ROOT, SENDER, LocalStack, wait_until

# Each test starts a stack and several CLI processes: more than the default timeout on a busy machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

#: ACS answers 500 to everything: two attempts each, then the dead letter.
ACS_DOWN = dict(MAX_SEND_ATTEMPTS="2", RETRY_BASE_SECONDS="0.1", RETRY_MAX_SECONDS="0.2")


def email() -> dict:
    return {"channel": "email", "to": [f"u+{uuid.uuid4().hex[:8]}@example.com"], "subject": "Hi", "text": "Hello"}


def cli(stack: LocalStack, *args: str) -> subprocess.Popen:
    # A wide terminal, so Rich does not fold the table's columns.
    return subprocess.Popen(
        [sys.executable, "-m", "shared", *args], cwd=ROOT, env=stack.environment() | {"COLUMNS": "250"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run(stack: LocalStack, *args: str, answer: str | None = None, expect: int = 0) -> str:
    process = cli(stack, *args)
    out, err = process.communicate(answer, timeout=120)
    assert process.returncode == expect, f"{args}: {err[-2000:]}"
    return out


def dead_letter_burst(stack: LocalStack, count: int) -> list[str]:
    stack.set_faults(serverErrorRate=1.0)
    response = httpx.post(
        f"{stack.api}/api/notifications/batch", json={"notifications": [email() for _ in range(count)]},
        headers=SENDER, timeout=30,
    )
    ids = [r["id"] for r in response.json()["results"]]
    assert len(ids) == count
    for nid in ids:
        stack.wait_for_status(nid, "dead_lettered", timeout=120)
    return ids


def sends_per_notification(stack: LocalStack, ids: list[str]) -> Counter:
    wanted = set(ids)
    return Counter(m["id"] for m in stack.emulator_messages("email") if m["id"] in wanted)


def test_a_burst_dead_lettered_while_acs_is_down_is_replayed_to_delivered_with_one_send_each(tmp_path):
    with LocalStack(tmp_path, **ACS_DOWN) as stack:
        ids = dead_letter_burst(stack, 30)

        listed = json.loads(run(stack, "dlq", "list", "--json", "--limit", "1000"))
        table = run(stack, "dlq", "list", "--limit", "1000")
        assert sorted(d["id"] for d in listed) == sorted(ids), "each notification once, under its id"
        assert {(d["reason"], d["source"], d["channel"]) for d in listed} == {("MaxAttemptsExceeded", "ledger", "email")}
        assert all("HTTP 500" in d["description"] for d in listed)
        assert "MaxAttemptsExceeded" in table and "30 dead letter(s)" in table
        assert stack.emulator_messages("email") == []

        stack.set_faults(serverErrorRate=0.0)
        started = time.monotonic()
        summary = json.loads(run(stack, "dlq", "replay", "--all", "--limit", "1000", "--rate", "50", "--json"))
        took = time.monotonic() - started

        assert summary["counts"] == {"replayed": 30}
        assert took >= 29 / 50, "--rate 50 spreads 30 replays over at least 0.58 s"
        for nid in ids:
            stack.wait_for_status(nid, "delivered", timeout=60)
        assert sends_per_notification(stack, ids) == Counter(ids)
        history = [h["event"] for h in stack.get(ids[0])["history"]]
        assert history.index("dead_lettered") < history.index("replayed") < history.index("sent")
        assert json.loads(run(stack, "dlq", "list", "--json")) == []
        audit = json.loads(run(stack, "dlq", "audit", "--json"))
        assert audit[0]["action"] == "dead-letters.replay" and audit[0]["actor"].startswith("cli:")
        assert audit[0]["finished"] and len(audit[0]["outcomes"]) == 30


def test_a_replay_killed_half_way_and_run_again_ends_the_same_way(tmp_path):
    with LocalStack(tmp_path, **ACS_DOWN) as stack:
        ids = dead_letter_burst(stack, 80)
        stack.set_faults(serverErrorRate=0.0)

        # Given a replay at 20 a second, killed with SIGKILL once it is under way (the newest
        # dead letters go first, and the batch's last notification is the newest),
        first = cli(stack, "dlq", "replay", "--all", "--limit", "1000", "--rate", "20", "--json")
        wait_until(
            lambda: "replayed" in [h["event"] for h in stack.get(ids[-1])["history"]],
            timeout=30, interval=0.05, what="the replay to be under way",
        )
        time.sleep(0.5)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        left = json.loads(run(stack, "dlq", "list", "--json", "--limit", "1000"))
        assert 0 < len(left) < len(ids), "the kill should leave part of the burst dead-lettered"

        # when it is run again,
        summary = json.loads(run(stack, "dlq", "replay", "--all", "--limit", "1000", "--rate", "50", "--json"))

        # then every notification is delivered, each sent exactly once,
        assert summary["counts"].get("replayed", 0) >= len(left) - 1
        for nid in ids:
            stack.wait_for_status(nid, "delivered", timeout=90)
        assert sends_per_notification(stack, ids) == Counter(ids)
        # and nothing is left dead-lettered.
        wait_until(lambda: json.loads(run(stack, "dlq", "list", "--json")) == [], timeout=30, what="no dead letters")
        interrupted = [e for e in json.loads(run(stack, "dlq", "audit", "--json")) if not e["finished"]]
        assert len(interrupted) == 1 and interrupted[0]["outcomes"] is not None


def test_the_admin_api_lists_and_replays_dead_letters_on_the_local_stack(tmp_path):
    with LocalStack(tmp_path, **ACS_DOWN) as stack:
        ids = dead_letter_burst(stack, 4)
        stack.set_faults(serverErrorRate=0.0)

        listed = httpx.get(f"{stack.api}/api/admin/dead-letters", headers=OPERATOR, timeout=10).json()["deadLetters"]
        replayed = httpx.post(
            f"{stack.api}/api/admin/dead-letters/replay", json={"ids": ids[:2]}, headers=OPERATOR, timeout=30
        ).json()

        assert sorted(d["id"] for d in listed) == sorted(ids)
        assert replayed["counts"] == {"replayed": 2}
        for nid in ids[:2]:
            stack.wait_for_status(nid, "delivered", timeout=60)
        assert sends_per_notification(stack, ids) == Counter(ids[:2])
        still = httpx.get(f"{stack.api}/api/admin/dead-letters", headers=OPERATOR, timeout=10).json()["deadLetters"]
        assert sorted(d["id"] for d in still) == sorted(ids[2:])

        # The CLI shows one of them, and purges the rest only once the operator says yes.
        shown = run(stack, "dlq", "show", ids[2])
        assert "MaxAttemptsExceeded" in shown and "HTTP 500" in shown and "dead_lettered" in shown
        run(stack, "dlq", "purge", "--all", answer="n\n", expect=1)
        assert len(json.loads(run(stack, "dlq", "list", "--json"))) == 2
        purged = run(stack, "dlq", "purge", "--all", answer="y\n")
        assert "2 purged" in purged
        assert json.loads(run(stack, "dlq", "list", "--json")) == []
        assert {stack.get(nid)["status"] for nid in ids[2:]} == {"failed"}
        assert sends_per_notification(stack, ids) == Counter(ids[:2])
