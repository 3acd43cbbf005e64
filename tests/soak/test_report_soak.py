"""Soak: thousands of notifications through the local stack while the emulator delivers their
reports the way Event Grid may: duplicated, out of order, and mixed with forged copies from another
ACS resource. Every notification must be sent once and end on the status its reports say.

``SOAK_NOTIFICATIONS`` sets the size (default 5000)::

    SOAK_NOTIFICATIONS=500 python -m pytest tests/soak -q -s
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.e2e.stack import OPERATOR, SENDER, LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

N = int(os.environ.get("SOAK_NOTIFICATIONS", "5000"))
SENDERS = 8
SETTLE_TIMEOUT_S = 300.0
HISTORY_SAMPLE = 200
FAULTS = {"duplicateReportRate": 0.3, "reportDelayJitterMs": 500, "foreignReportRate": 0.1}

# Valid North American area codes; each gives 800 exchanges (200-999), so numbers stay unique.
AREAS = (425, 206, 212, 312, 415, 617, 702, 303, 503, 602)

#: One cycle of the mix: (kind, channel, simulator local part or number suffix, the service's status).
MIX = [
    ("email-delivered", "email", "user", "delivered"),
    ("email-delivered", "email", "user", "delivered"),
    ("email-bounced", "email", "bounce", "bounced"),
    ("email-failed", "email", "failed", "failed"),
    ("email-suppressed", "email", "suppressed", "suppressed"),
    ("email-quarantined", "email", "quarantined", "failed"),
    ("email-noreport", "email", "noreport", "sent"),
    ("sms-delivered", "sms", "1234", "delivered"),
    ("sms-failed", "sms", "0001", "failed"),
    ("sms-noreport", "sms", "0002", "sent"),
]


def request_body(index: int, run: str) -> tuple[str, dict]:
    kind, channel, part, _status = MIX[index % len(MIX)]
    serial = index // len(MIX)
    if channel == "email":
        # Unique addresses: a bounce or suppression must not put the next one on the list.
        address = f"{part}+{run}-{serial}@example.com"
        return kind, {"channel": "email", "to": [address], "subject": f"Soak {index}", "text": "Hello"}
    if serial >= len(AREAS) * 800:
        raise ValueError(f"SOAK_NOTIFICATIONS={N} needs more phone numbers than the soak can make")
    number = f"+1{AREAS[serial // 800]}{200 + serial % 800}{part}"
    return kind, {"channel": "sms", "to": [number], "message": f"Soak {index}"}


@pytest.mark.timeout(SETTLE_TIMEOUT_S + 200)
def test_duplicated_reordered_and_forged_reports_converge_on_one_send_and_the_right_status(tmp_path):
    run = uuid.uuid4().hex[:6]
    bodies = [request_body(i, run) for i in range(N)]
    expected_kinds = Counter(kind for kind, _ in bodies)
    expected_status = Counter()
    for index in range(N):
        _kind, channel, _part, status = MIX[index % len(MIX)]
        expected_status[channel, status] += 1
    noreport = expected_kinds["email-noreport"] + expected_kinds["sms-noreport"]

    with LocalStack(tmp_path, workers=2, report_delay_ms=50) as stack:
        stack.set_faults(**FAULTS)
        window = {
            "from": (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat(),
            "to": (datetime.now(timezone.utc) + timedelta(days=1)).isoformat(),
        }
        started = time.monotonic()

        # -- send N notifications as fast as 8 keep-alive clients can
        with httpx.Client(base_url=stack.api, headers=SENDER, timeout=30) as client:

            def submit(item: tuple[str, dict]) -> tuple[str, str, int]:
                kind, body = item
                response = client.post("/api/notifications", json=body)
                return kind, response.json().get("id", ""), response.status_code

            with ThreadPoolExecutor(SENDERS) as pool:
                submitted = list(pool.map(submit, bodies))
        submit_s = time.monotonic() - started
        assert Counter(status for _, _, status in submitted) == Counter({202: N}), Counter(s for _, _, s in submitted)
        ids = {kind: [nid for k, nid, _ in submitted if k == kind] for kind in expected_kinds}

        # -- wait until the emulator has posted everything and the ledger has settled
        with httpx.Client(timeout=30) as probe:

            def emulator_stats() -> dict:
                return probe.get(f"{stack.emulator}/emulator/stats").json()

            def reconciliation() -> dict:
                return probe.get(f"{stack.api}/api/reconciliation", params=window, headers=OPERATOR).json()

            sent_s = None
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while True:
                emulated = emulator_stats()
                channels = emulated["channels"]
                accepted_at_acs = channels["email"]["accepted"] + channels["sms"]["accepted"]
                if sent_s is None and accepted_at_acs >= N:
                    sent_s = time.monotonic() - started
                report = reconciliation()
                total = report["total"]
                settled = (
                    accepted_at_acs >= N
                    and all(c["pending"] == 0 for c in channels.values())
                    and total["accepted"] == N
                    and total["pending"] == 0
                    and total["awaitingReport"] == noreport
                )
                if settled:
                    break
                assert time.monotonic() < deadline, (
                    f"not settled after {SETTLE_TIMEOUT_S:.0f} s: emulator {emulated}, reconciliation {total}"
                )
                time.sleep(0.5)
            elapsed = time.monotonic() - started

            email_messages = stack.emulator_messages("email")
            sms_messages = stack.emulator_messages("sms")
            # A sample of notifications with reports: each recipient's report recorded once,
            # however often it was posted, and no forged copy recorded at all.
            reported = [nid for kind, nids in ids.items() if "noreport" not in kind for nid in nids]
            sample = reported[:: max(1, len(reported) // HISTORY_SAMPLE)]
            histories = {
                nid: probe.get(f"{stack.api}/api/notifications/{nid}", headers=SENDER).json()["history"]
                for nid in sample
            }

    # -- every notification reached ACS exactly once
    email_ids = [m["id"] for m in email_messages]
    email_notifications = [nid for kind, nids in ids.items() if kind.startswith("email") for nid in nids]
    assert len(email_ids) == len(set(email_ids)) == len(email_notifications)
    assert set(email_ids) == set(email_notifications), "each email operation id is its notification id"
    sms_by_number = Counter(m["recipients"][0] for m in sms_messages)
    sms_count = sum(n for kind, n in expected_kinds.items() if kind.startswith("sms"))
    assert len(sms_messages) == sms_count and max(sms_by_number.values()) == 1, "one SMS per notification"
    assert len({m["repeatabilityRequestId"] for m in sms_messages}) == sms_count
    assert channels["email"]["accepted"] + channels["sms"]["accepted"] == N

    # -- the ledger's outcome equals what the emulator reported, and what the mix asked for
    email, sms = report["channels"]["email"], report["channels"]["sms"]
    reported_email, reported_sms = channels["email"]["reports"], channels["sms"]["reports"]
    assert email["delivered"] == reported_email.get("Delivered", 0) == expected_status["email", "delivered"]
    assert email["bounced"] == reported_email.get("Bounced", 0) == expected_status["email", "bounced"]
    assert email["suppressed"] == reported_email.get("Suppressed", 0) == expected_status["email", "suppressed"]
    assert (
        email["failed"]
        == reported_email.get("Failed", 0) + reported_email.get("Quarantined", 0)
        == expected_status["email", "failed"]
    )
    assert email["awaitingReport"] == expected_kinds["email-noreport"]
    assert sms["delivered"] == reported_sms.get("Delivered", 0) == expected_status["sms", "delivered"]
    assert sms["failed"] == reported_sms.get("Failed", 0) == expected_status["sms", "failed"]
    assert sms["awaitingReport"] == expected_kinds["sms-noreport"]
    assert total["accepted"] == total["sent"] == N
    assert total["unconfirmed"] == total["deadLettered"] == 0

    # -- what the webhook answered: forged copies rejected, redeliveries absorbed
    for nid, history in histories.items():
        recorded = [h for h in history if h["event"] == "delivery_report"]
        assert len(recorded) == 1, f"{nid}: {recorded}"
    answers = emulated["webhook"]["responses"]
    unique = sum(sum(c["reports"].values()) for c in channels.values())
    duplicates = sum(c["duplicatesPosted"] for c in channels.values())
    foreign = sum(c["foreignPosted"] for c in channels.values())
    assert sum(c["gaveUp"] for c in channels.values()) == 0
    assert emulated["webhook"]["failedAttempts"] == 0
    assert unique == N - noreport
    assert answers["received"] == unique + duplicates + foreign
    assert answers["rejected"] == foreign > 0, "every foreign copy is rejected"
    assert answers["duplicates"] > 0, "redeliveries are recognised as duplicates"
    assert answers["applied"] + answers["duplicates"] + answers["parked"] == unique + duplicates
    assert answers["malformed"] == answers["ignored"] == 0

    print(
        f"\nsoak: {N} notifications ({len(email_ids)} email, {len(sms_messages)} sms) accepted {total['accepted']},"
        f" sent once each; delivered {total['delivered']}, bounced {total['bounced']}, failed {total['failed']},"
        f" suppressed {total['suppressed']}, awaiting report {total['awaitingReport']};"
        f" reports posted {unique} + {duplicates} duplicates + {foreign} foreign;"
        f" webhook applied {answers['applied']}, duplicates {answers['duplicates']}, parked {answers['parked']},"
        f" rejected {answers['rejected']};"
        f" submitted in {submit_s:.1f} s ({N / submit_s:.0f}/s), all at ACS after {sent_s or elapsed:.1f} s,"
        f" settled after {elapsed:.1f} s"
    )
