"""The suppression list in SQLite, beside the embedded ledger."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..domain.model import Channel, Suppression
from .sqlite_file import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressions (
    channel TEXT NOT NULL,
    address_key TEXT NOT NULL,
    address TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    notification_id TEXT,
    PRIMARY KEY (channel, address_key)
);
CREATE INDEX IF NOT EXISTS suppressions_created ON suppressions (created_at);
"""


class SqliteSuppressionList:
    def __init__(self, path: str | Path) -> None:
        self._file = SqliteFile(path)
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return self._file.connection()

    @staticmethod
    def _entry(row: tuple) -> Suppression:
        channel, address, reason, created_at, notification_id = row
        return Suppression(
            channel=Channel(channel),
            address=address,
            reason=reason,
            created_at=datetime.fromtimestamp(created_at, timezone.utc),
            notification_id=notification_id,
        )

    _INSERT = (
        "INSERT OR IGNORE INTO suppressions (channel, address_key, address, reason, created_at, notification_id)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )

    @staticmethod
    def _row(entry: Suppression) -> tuple:
        return (
            entry.channel.value,
            Suppression.key(entry.channel, entry.address),
            entry.address,
            entry.reason,
            entry.created_at.timestamp(),
            entry.notification_id,
        )

    def add(self, entry: Suppression) -> bool:
        return self._db().execute(self._INSERT, self._row(entry)).rowcount == 1

    def add_many(self, entries: Iterable[Suppression]) -> int:
        rows = [self._row(e) for e in entries]
        if not rows:
            return 0
        # One transaction, not one commit per entry: each commit is a WAL write of its own.
        with self._file.transaction() as db:
            return db.executemany(self._INSERT, rows).rowcount

    def remove(self, channel: Channel, address: str) -> bool:
        cursor = self._db().execute(
            "DELETE FROM suppressions WHERE channel = ? AND address_key = ?",
            (channel.value, Suppression.key(channel, address)),
        )
        return cursor.rowcount == 1

    def find(self, channel: Channel, addresses: Iterable[str]) -> dict[str, Suppression]:
        by_key = {Suppression.key(channel, a): a for a in addresses}
        if not by_key:
            return {}
        keys = list(by_key)
        found: dict[str, Suppression] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._db().execute(
                "SELECT address_key, channel, address, reason, created_at, notification_id FROM suppressions"
                f" WHERE channel = ? AND address_key IN ({','.join('?' * len(chunk))})",
                [channel.value, *chunk],
            )
            for key, *rest in rows:
                found[by_key[key]] = self._entry(tuple(rest))
        return found

    def list(self, *, channel: Channel | None = None, limit: int = 100) -> list[Suppression]:
        sql = "SELECT channel, address, reason, created_at, notification_id FROM suppressions"
        args: list = []
        if channel is not None:
            sql += " WHERE channel = ?"
            args.append(channel.value)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [self._entry(row) for row in self._db().execute(sql, args)]
