"""Contract tests for the ``RateLimiter`` port (``shared.service.ports.RateLimiter``).

Every test takes ``limiter_with`` (quotas -> a fresh, empty limiter) and runs once per
implementation: the in-memory ``FakeRateLimiter``, the embedded ``SqliteRateLimiter`` and the
``TableRateLimiter`` against Azurite (skipped when Azurite is not installed). Times are passed
explicitly, so the windows are exact.

Tests at the bottom are about the SQLite file shared between processes.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest

from shared.adapters.sqlite_ledger import SqliteLedger
from shared.adapters.sqlite_rate_limiter import SqliteRateLimiter
from shared.adapters.table_rate_limiter import TableRateLimiter
from shared.service.ports import RateLimiter
from shared.service.quota import SendQuota, WarmupSchedule
from tests import azurite
from tests.fakes import FakeRateLimiter

ROOT = Path(__file__).resolve().parents[2]

def table_limiter(request: pytest.FixtureRequest, quotas: dict[str, SendQuota]) -> TableRateLimiter:
    service, prefix = azurite.fresh_table_service(request)
    return TableRateLimiter(service, quotas, prefix=prefix)


LIMITERS: dict[str, Callable[[pytest.FixtureRequest, Path, dict[str, SendQuota]], RateLimiter]] = {
    "fake": lambda request, tmp_path, quotas: FakeRateLimiter(quotas),
    "sqlite": lambda request, tmp_path, quotas: SqliteRateLimiter(tmp_path / "limits.sqlite3", quotas),
    "table": lambda request, tmp_path, quotas: table_limiter(request, quotas),
}


@pytest.fixture(params=list(LIMITERS))
def limiter_with(request, tmp_path):
    made = []

    def make(quotas: dict[str, SendQuota]) -> RateLimiter:
        made.append(LIMITERS[request.param](request, tmp_path, quotas))
        return made[-1]

    yield make
    for limiter in made:
        getattr(limiter, "close", lambda: None)()


T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def at(seconds: float = 0, *, minutes: float = 0, days: int = 0) -> datetime:
    return T0 + timedelta(days=days, minutes=minutes, seconds=seconds)


def grants(limiter: RateLimiter, key: str, times: int, now: datetime, units: int = 1) -> int:
    return sum(limiter.acquire(key, units, now) is None for _ in range(times))


# ---------------------------------------------------------------------------- contract


def test_grants_up_to_the_per_minute_limit_then_names_when_the_oldest_units_leave(limiter_with):
    limiter = limiter_with({"email": SendQuota(per_minute=3, per_hour=None)})

    assert [limiter.acquire("email", 1, at(s)) for s in (0, 10, 20)] == [None, None, None]
    assert limiter.acquire("email", 1, at(30)) == at(60)

    assert limiter.acquire("email", 1, at(59.999)) == at(60)
    assert limiter.acquire("email", 1, at(60)) is None
    assert limiter.acquire("email", 1, at(60)) == at(70)


def test_the_hourly_limit_binds_across_minutes(limiter_with):
    limiter = limiter_with({"email": SendQuota(per_minute=5, per_hour=8)})

    assert grants(limiter, "email", 5, at(minutes=0)) == 5
    assert grants(limiter, "email", 5, at(minutes=1)) == 3

    # Each minute has room; the hour has none until the first minute's sends leave it.
    assert limiter.acquire("email", 1, at(minutes=30)) == at(minutes=60)
    assert grants(limiter, "email", 6, at(minutes=60)) == 5


def test_sms_batches_count_every_unit(limiter_with):
    limiter = limiter_with({"sms": SendQuota(per_minute=200, per_hour=None)})

    assert limiter.acquire("sms", 150, at(0)) is None
    assert limiter.acquire("sms", 60, at(5)) == at(60)
    assert limiter.acquire("sms", 50, at(5)) is None
    assert limiter.acquire("sms", 1, at(6)) == at(60)


def test_a_refused_request_takes_nothing(limiter_with):
    limiter = limiter_with({"sms": SendQuota(per_minute=10, per_hour=None)})
    limiter.acquire("sms", 8, at(0))

    assert limiter.acquire("sms", 5, at(1)) == at(60)
    assert limiter.acquire("sms", 5, at(2)) == at(60)
    assert limiter.acquire("sms", 2, at(3)) is None
    assert limiter.acquire("sms", 1, at(4)) == at(60)


def test_a_batch_larger_than_the_limit_goes_only_into_an_empty_window(limiter_with):
    limiter = limiter_with({"sms": SendQuota(per_minute=100, per_hour=None)})

    assert limiter.acquire("sms", 150, at(0)) is None
    assert limiter.acquire("sms", 1, at(30)) == at(60)
    assert limiter.acquire("sms", 1, at(60)) is None
    assert limiter.acquire("sms", 150, at(61)) == at(120)
    assert limiter.acquire("sms", 150, at(120)) is None


def test_keys_have_independent_quotas(limiter_with):
    limiter = limiter_with({"email": SendQuota(per_minute=2, per_hour=None), "sms": SendQuota(per_minute=2, per_hour=None)})

    assert grants(limiter, "email", 3, at(0)) == 2
    assert grants(limiter, "sms", 3, at(0)) == 2


@pytest.mark.parametrize("key", ["push", "email", "sms"])
def test_a_key_without_a_quota_or_without_limits_is_always_granted(limiter_with, key):
    limiter = limiter_with({"email": SendQuota(per_minute=None, per_hour=None), "sms": SendQuota(per_minute=0, per_hour=0)})

    assert grants(limiter, key, 1000, at(0), units=100) == 1000


def test_warm_up_lowers_the_hourly_cap_on_day_zero_and_raises_it_on_later_days(limiter_with):
    warmup = WarmupSchedule(T0.date(), (10, 20))
    limiter = limiter_with({"email": SendQuota(per_minute=None, per_hour=100, warmup=warmup)})

    assert grants(limiter, "email", 11, at(days=0)) == 10
    assert limiter.acquire("email", 1, at(days=0, minutes=1)) == at(days=0, minutes=60)
    assert grants(limiter, "email", 21, at(days=1)) == 20
    # After the schedule, per_hour is the only hourly limit.
    assert grants(limiter, "email", 101, at(days=2)) == 100


def test_a_refusal_is_never_later_than_the_next_warm_up_step(limiter_with):
    warmup = WarmupSchedule(T0.date(), (10, 20))
    limiter = limiter_with({"email": SendQuota(per_minute=None, per_hour=None, warmup=warmup)})
    evening = T0.replace(hour=23, minute=30)
    midnight = T0.replace(hour=0) + timedelta(days=1)

    assert grants(limiter, "email", 10, evening) == 10
    assert limiter.acquire("email", 1, evening + timedelta(minutes=1)) == midnight
    assert grants(limiter, "email", 11, midnight) == 10


# ---------------------------------------------------------------------------- SQLite only

_HAMMER = """
import sys
from datetime import datetime, timedelta
from shared.adapters.sqlite_rate_limiter import SqliteRateLimiter
from shared.adapters.table_rate_limiter import TableRateLimiter
from shared.service.quota import SendQuota
path, start, attempts = sys.argv[1], datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
limiter = SqliteRateLimiter(path, {"email": SendQuota(per_minute=50, per_hour=None)})
for line in sys.stdin:  # one round per line, at the minute it names
    now = start + timedelta(minutes=int(line))
    print(sum(limiter.acquire("email", 1, now) is None for _ in range(attempts)), flush=True)
"""


def test_processes_sharing_the_file_never_exceed_the_limit_together(tmp_path):
    # Given two processes hammering one key of 50 a minute, released together for each round
    path = tmp_path / "limits.sqlite3"
    SqliteRateLimiter(path, {}).close()  # create the schema before the race
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, str(path), T0.isoformat(), "100"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    # When each round races for the last units of a fresh minute (many rounds, because one race
    # only rarely lands both processes between another's read and write)
    granted = []
    for minute in range(20):
        for worker in workers:
            worker.stdin.write(f"{minute}\n")
            worker.stdin.flush()
        granted.append(sum(int(worker.stdout.readline()) for worker in workers))
    for worker in workers:
        worker.communicate(timeout=30)

    # Then every minute let exactly its 50 through, no more
    assert [w.returncode for w in workers] == [0, 0]
    assert granted == [50] * 20


def test_the_limiter_shares_the_ledger_file_and_records_nothing_for_unlimited_keys(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    ledger = SqliteLedger(path)
    limiter = SqliteRateLimiter(path, {"email": SendQuota(per_minute=1, per_hour=None), "sms": SendQuota(None, None)})
    second = SqliteRateLimiter(path, {"email": SendQuota(per_minute=1, per_hour=None)})

    assert limiter.acquire("email", 1, at(0)) is None
    assert second.acquire("email", 1, at(1)) == at(60)
    assert grants(limiter, "sms", 5, at(0)) == 5
    assert grants(limiter, "push", 5, at(0)) == 5

    with sqlite3.connect(path) as db:
        assert db.execute("SELECT key, units FROM rate_log").fetchall() == [("email", 1)]
    for store in (ledger, limiter, second):
        store.close()
