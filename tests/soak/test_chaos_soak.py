"""Chaos soak, small enough for CI: notifications through the local stack while dispatcher workers
are SIGKILLed at random moments, ACS throttles, fails and stalls, and delivery reports come
duplicated, reordered and forged. The core is ``bench/chaos_soak.py`` (``run()``), which lists
every breached invariant; this test fails on any of them.

It runs twice: on the embedded SQLite ledger, and on Table Storage (Azurite) as in Azure, where a
notification and the index entries that find and count it are separate writes that a SIGKILL can
come between.

``CHAOS_NOTIFICATIONS`` sets the size (default 1000; the Table Storage run, ``CHAOS_TABLE_NOTIFICATIONS``,
defaults to 200), ``CHAOS_SEED`` the seed (default random, printed)::

    CHAOS_NOTIFICATIONS=3000 python -m pytest tests/soak/test_chaos_soak.py -q -s
"""

from __future__ import annotations

import os
import random

import pytest

from bench.chaos_soak import run

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

N = int(os.environ.get("CHAOS_NOTIFICATIONS", "1000"))
N_TABLE = int(os.environ.get("CHAOS_TABLE_NOTIFICATIONS", "200"))
SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))


@pytest.mark.timeout(600 + N // 10)
def test_killed_workers_and_acs_faults_lose_nothing_and_send_nothing_twice(tmp_path):
    report = run(N, data_dir=tmp_path, seed=SEED, progress=lambda message: print(f"[chaos soak] {message}"))
    assert_every_invariant(report, N)


@pytest.mark.timeout(600 + N_TABLE)
def test_on_the_table_storage_ledger_too_nothing_is_lost_sent_twice_or_miscounted(tmp_path):
    report = run(N_TABLE, data_dir=tmp_path, seed=SEED, ledger="table",
                 progress=lambda message: print(f"[chaos soak, table] {message}"))
    assert report.ledger == "table"
    assert_every_invariant(report, N_TABLE)


def assert_every_invariant(report, N: int) -> None:
    print("\n" + report.render())
    total = report.reconciliation.get("total", {})

    assert report.breaches == [], report.render()
    # The same invariants, spelled out, so a gap in the checks above cannot pass silently.
    assert report.submitted == N
    assert total["accepted"] == N == sum(
        total[k] for k in ("delivered", "bounced", "failed", "suppressed", "unconfirmed", "deadLettered")
    )
    assert total["pending"] == total["awaitingReport"] == 0
    assert report.lost == []
    assert sum(report.statuses.values()) == N
    assert report.duplicate_sends == report.missing_sends == report.unexpected_sends == 0
    channels = report.emulator["channels"]
    for name in ("email", "sms"):
        ledger, reports = report.reconciliation["channels"][name], channels[name]["reports"]
        assert ledger["sent"] == channels[name]["accepted"]
        assert ledger["delivered"] == reports.get("Delivered", 0)
        assert ledger["failed"] == reports.get("Failed", 0) + reports.get("Quarantined", 0) + reports.get("FilteredSpam", 0)
    # The chaos really happened: workers died, were restarted, and their attempts were made again.
    assert report.kills > 0
    assert report.restarts_logged == report.kills
    assert report.retried > 0 or report.restarts_logged > 0
    assert report.workers_at_end == 2
