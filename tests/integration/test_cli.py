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
