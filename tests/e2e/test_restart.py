"""Accepted work survives a restart, and one Ctrl-C stops the whole stack."""

from pathlib import Path

import pytest

from tests.e2e.stack import LocalStack

pytestmark = pytest.mark.e2e


def test_work_queued_before_a_restart_is_delivered_after_it(tmp_path):
    # Given notifications accepted while no dispatcher runs,
    with LocalStack(tmp_path, only="api") as api_only:
        ids = [
            api_only.send({"channel": "email", "to": [f"restart{i}@example.com"], "subject": "Hi", "text": "Hello"}).json()["id"]
            for i in range(3)
        ]
        ids.append(api_only.send({"channel": "sms", "to": ["+14255551234"], "message": "Hi"}).json()["id"])
        assert {api_only.get(nid)["status"] for nid in ids} == {"accepted"}

    # when the whole stack starts again on the same data directory,
    with LocalStack(tmp_path) as stack:
        # then every one of them is sent and delivered, once.
        for nid in ids:
            stack.wait_for_status(nid, "delivered")
        assert sorted(m["id"] for m in stack.emulator_messages("email")) == sorted(ids[:3])


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def test_one_ctrl_c_stops_every_process_of_the_stack(tmp_path):
    stack = LocalStack(tmp_path).start()
    assert len(process_group(stack.process.pid)) >= 4  # the supervisor, the emulator, the API and the worker

    exit_code = stack.stop()

    assert exit_code == 0, stack.log_text()[-2000:]
    assert process_group(stack.process.pid) == []
