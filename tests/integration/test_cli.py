"""The operator CLI, run as an operator runs it, on an embedded ledger."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, SETTINGS


def cli(data_dir, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "NOTIFY_", "EMAIL_", "SMS_"))}
    env |= SETTINGS | {"NOTIFY_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "shared", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_an_operator_can_add_list_and_remove_a_suppression(tmp_path):
    assert cli(tmp_path, "suppressions", "add", "email", "Angry@Example.com", "--reason", "asked to stop").returncode == 0

    listed = json.loads(cli(tmp_path, "suppressions", "list", "--json").stdout)
    assert [(e["channel"], e["address"], e["reason"]) for e in listed] == [("email", "Angry@Example.com", "Operator: asked to stop")]

    assert cli(tmp_path, "suppressions", "remove", "email", "angry@example.com").returncode == 0
    assert json.loads(cli(tmp_path, "suppressions", "list", "--json").stdout) == []
    assert cli(tmp_path, "suppressions", "remove", "email", "angry@example.com").returncode == 1


def test_the_reconciliation_report_prints_as_json(tmp_path):
    result = cli(tmp_path, "reconciliation", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"]["accepted"] == 0


def test_enqueue_puts_a_request_on_the_requests_queue_with_its_key_correlation_and_properties(tmp_path):
    from shared.adapters.embedded_queue import EmbeddedQueue

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"channel": "sms", "to": ["+14255551234"], "message": "Code 1"}))

    result = cli(tmp_path, "enqueue", str(request), "--idempotency-key", "order-42", "--correlation-id", "c-9",
                 "--property", "tenant=contoso", "--property", "note=a=b")

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    queue = EmbeddedQueue(tmp_path / "queue.sqlite3", "notification-requests")
    [message] = queue.receive()
    assert message.message_id == printed["messageId"]
    assert message.body == {"channel": "sms", "to": ["+14255551234"], "message": "Code 1"}
    assert message.correlation_id == "c-9"
    assert message.application_properties == {"tenant": "contoso", "note": "a=b", "Idempotency-Key": "order-42"}
    queue.close()


def test_enqueue_refuses_a_file_that_is_not_json_and_queues_nothing(tmp_path):
    request = tmp_path / "request.json"
    request.write_text("{not json")

    result = cli(tmp_path, "enqueue", str(request))

    assert result.returncode == 2
    assert not (tmp_path / "queue.sqlite3").exists()


def test_dlq_list_takes_since_as_a_duration_and_refuses_what_is_neither_a_time_nor_a_duration(tmp_path):
    from datetime import datetime, timedelta, timezone

    from shared.adapters.sqlite_ledger import SqliteLedger
    from shared.domain.model import Channel, Notification, Recipient

    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    now = datetime.now(timezone.utc)
    ids = []
    for hours_ago in (3, 1):
        n = Notification.accept(channel=Channel.SMS, sender="+18005550100", recipients=[Recipient(address="+14255551234")],
                                content={"message": "Hi"}, metadata={}, at=now - timedelta(hours=4))
        ledger.add(n)
        n.mark_dead_lettered(now - timedelta(hours=hours_ago), "MaxAttemptsExceeded", "ServiceUnavailable / HTTP 503")
        ledger.save(n)
        ids.append(n.id)
    ledger.close()

    recent = cli(tmp_path, "dlq", "list", "--since", "2h", "--json")
    bad = cli(tmp_path, "dlq", "list", "--since", "yesterday")

    assert recent.returncode == 0, recent.stderr
    assert [d["id"] for d in json.loads(recent.stdout)] == [ids[1]]
    assert bad.returncode == 2 and "duration" in bad.stderr


def test_dlq_replay_and_purge_need_ids_a_filter_or_all(tmp_path):
    for command in ("replay", "purge"):
        result = cli(tmp_path, "dlq", command)
        assert result.returncode == 2
        assert "--all" in result.stdout


def test_suppression_changes_from_the_cli_are_in_the_audit_trail_under_the_os_user(tmp_path):
    import getpass

    cli(tmp_path, "suppressions", "add", "sms", "+14255551234", "--reason", "asked to stop")
    cli(tmp_path, "suppressions", "remove", "sms", "+14255551234")

    audit = json.loads(cli(tmp_path, "dlq", "audit", "--json").stdout)

    assert sorted(e["action"] for e in audit) == ["suppressions.add", "suppressions.remove"]
    assert {e["actor"] for e in audit} == {f"cli:{getpass.getuser()}"}
    assert {e["outcomes"][0]["outcome"] for e in audit} == {"added", "removed"}


def test_an_operator_gets_the_hash_telemetry_knows_a_recipient_by_whatever_its_spelling(tmp_path):
    from shared.domain.privacy import recipient_hash

    key = "an-environment-key-0123456789abcdef"
    env_key = {"PII_HASH_KEY": key}

    def hashed(address):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "NOTIFY_", "EMAIL_", "SMS_"))}
        env |= SETTINGS | env_key | {"NOTIFY_DATA_DIR": str(tmp_path)}
        result = subprocess.run([sys.executable, "-m", "shared", "hash-recipient", address], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert hashed("Jane@Example.com") == hashed("jane@example.com") == recipient_hash("jane@example.com", key)
    assert hashed("+1 (425) 555-0123") == recipient_hash("+14255550123", key)
