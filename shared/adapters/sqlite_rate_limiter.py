"""Send quotas in SQLite, shared by every dispatcher process that opens the same file (it may be
the ledger's file: the table is ``rate_log``).

Each grant is a row (key, time, units). A request reads the key's rows inside ``BEGIN IMMEDIATE``,
which takes the write lock before reading, so two processes cannot both see the last free units;
the decision itself is ``SendQuota.blocked_until``, the same pure code the fake runs.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .sqlite_file import SqliteFile
from ..service.quota import SendQuota

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_log (
    key TEXT NOT NULL,
    -- microseconds since the epoch, UTC: integers keep window edges exact, REAL would round them
    taken_at INTEGER NOT NULL,
    units INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_log_key_time ON rate_log (key, taken_at);
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(value: datetime | timedelta) -> int:
    return (value - _EPOCH if isinstance(value, datetime) else value) // timedelta(microseconds=1)


class SqliteRateLimiter:
    """The ``RateLimiter`` port over a SQLite file. A key without a quota, or whose quota sets no
    limit at the time, is always granted and records nothing."""

    def __init__(self, path: str | Path, quotas: dict[str, SendQuota]) -> None:
        self._file = SqliteFile(path)
        self._quotas = dict(quotas)
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return self._file.connection()

    def acquire(self, key: str, units: int, now: datetime) -> datetime | None:
        quota = self._quotas.get(key)
        if quota is None or not quota.limits(now):
            return None
        horizon = _us(quota.horizon)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            # Prune two horizons back, not one: another process whose clock lags ours by up to a
            # horizon still needs the rows that are just out of our own window.
            db.execute("DELETE FROM rate_log WHERE key = ? AND taken_at <= ?", (key, _us(now) - 2 * horizon))
            rows = db.execute(
                "SELECT taken_at, units FROM rate_log WHERE key = ? AND taken_at > ?", (key, _us(now) - horizon)
            )
            taken = [(_EPOCH + timedelta(microseconds=t), n) for t, n in rows]
            retry_at = quota.blocked_until(taken, units, now)
            if retry_at is None:
                db.execute("INSERT INTO rate_log (key, taken_at, units) VALUES (?, ?, ?)", (key, _us(now), units))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return retry_at

    def close(self) -> None:
        self._file.close()
