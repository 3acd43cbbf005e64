"""The embedded ledger: one SQLite file shared by the local stack's processes.

Each notification is one row: a JSON document plus the few columns that queries filter on, so a
lookup by id is a primary-key read and a reconciliation window is a range scan over an index on
acceptance time, whatever the size of the history.

Status events live in the ``status_outbox`` table, written in the transaction that writes the
notification, never in its document; ``position`` keeps the order they were written in.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import TypeAdapter

from ..domain.errors import ConcurrencyConflict
from ..domain.model import (
    AuditEntry,
    Channel,
    DeliveryReport,
    HistoryEntry,
    Notification,
    NotificationStatus,
    RecipientStatus,
    StatusEvent,
)
from .sqlite_file import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    idempotency_key TEXT UNIQUE,
    queued INTEGER NOT NULL DEFAULT 0,
    reached_acs INTEGER NOT NULL DEFAULT 0,
    -- earliest send time among recipients still waiting for a report; NULL when none wait
    awaiting_since REAL,
    -- set while the status is dead_lettered: when, and why (the operator's dead-letter listing)
    dead_lettered_at REAL,
    dead_letter_reason TEXT,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
-- Covers the reconciliation query, so a window reads only its own index entries.
CREATE INDEX IF NOT EXISTS notifications_window_v2 ON notifications (created_at, channel, status, reached_acs);
CREATE INDEX IF NOT EXISTS notifications_awaiting ON notifications (awaiting_since)
    WHERE awaiting_since IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_unqueued ON notifications (created_at) WHERE queued = 0;
CREATE INDEX IF NOT EXISTS notifications_dead ON notifications (dead_lettered_at)
    WHERE dead_lettered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS message_ids (
    message_id TEXT PRIMARY KEY,
    notification_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS message_ids_owner ON message_ids (notification_id);
CREATE TABLE IF NOT EXISTS parked_reports (
    event_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    parked_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_reports_message ON parked_reports (message_id);
CREATE INDEX IF NOT EXISTS parked_reports_age ON parked_reports (parked_at);
-- position is the rowid: a new row gets one above every row present, so it orders the outbox
-- (no AUTOINCREMENT, no index on the owner: the outbox is drained continuously and stays small,
-- and intake writes to it on every accept).
CREATE TABLE IF NOT EXISTS status_outbox (
    position INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    notification_id TEXT NOT NULL,
    doc TEXT NOT NULL
);
"""

_OUTSIDE_DOC = {"version", "pending_status_events"}

# Positional parameters: sqlite3 binds a named one by looking its name up in the mapping, which
# was a quarter of these statements' time, run once per notification of a batch.
_UPDATED_COLUMNS = (
    "status", "updated_at", "queued", "reached_acs", "awaiting_since", "dead_lettered_at", "dead_letter_reason", "doc", "id"
)
_INSERTED_COLUMNS = (
    "id", "channel", "status", "created_at", "updated_at", "idempotency_key", "queued", "reached_acs", "awaiting_since",
    "dead_lettered_at", "dead_letter_reason", "doc",
)
_INSERT = (
    f"INSERT INTO notifications ({', '.join(_INSERTED_COLUMNS)}, version) VALUES ({', '.join('?' * len(_INSERTED_COLUMNS))}, 1)"
)
_INSERT_OR_IGNORE = _INSERT.replace("INSERT", "INSERT OR IGNORE", 1)
_UPDATE = (
    "UPDATE notifications SET status = ?, updated_at = ?, queued = ?, reached_acs = ?, awaiting_since = ?,"
    " dead_lettered_at = ?, dead_letter_reason = ?, doc = ?, version = version + 1 WHERE id = ? AND version = ?"
)


# The "queued" mark changes three fields of the document and no status, event or indexed column
# but ``queued``: written into the stored document by SQLite's JSON functions, it costs about half
# of a full save (serialising the notification again, every column, its index entries), which
# intake paid once per notification. The values are pydantic's own JSON for them, so the document
# reads back as ``Notification.mark_queued`` and a save would have left it. (JSON functions are
# built into SQLite since 3.38, and were in the usual builds before; ``[#]`` needs 3.31.)
_MARK_QUEUED = (
    "UPDATE notifications SET queued = 1, updated_at = ?, version = version + 1,"
    " doc = json_set(doc, '$.queued_at', json(?), '$.updated_at', json(?), '$.history[#]', json(?))"
    " WHERE id = ? AND version = ?"
)
_JSON_DATETIME = TypeAdapter(datetime)


def _ts(value: datetime) -> float:
    return value.timestamp()


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqliteLedger:
    def __init__(self, path: str | Path) -> None:
        self._file = SqliteFile(path)
        db = self._connection()
        columns = {row[1] for row in db.execute("PRAGMA table_info(notifications)")}
        if columns and "reached_acs" not in columns:
            # A data directory from before the column existed (the local stack keeps .data/).
            db.execute("ALTER TABLE notifications ADD COLUMN reached_acs INTEGER NOT NULL DEFAULT 0")
        if columns and "dead_lettered_at" not in columns:
            self._add_dead_letter_columns()
        db.executescript(_SCHEMA + "DROP INDEX IF EXISTS notifications_window;")

    def _add_dead_letter_columns(self) -> None:
        """Upgrade a data directory from before the dead-letter listing, filling the columns in."""
        with self._transaction() as tx:
            # Under the write lock: another process may have upgraded it since we looked.
            if "dead_lettered_at" in {row[1] for row in tx.execute("PRAGMA table_info(notifications)")}:
                return
            tx.execute("ALTER TABLE notifications ADD COLUMN dead_lettered_at REAL")
            tx.execute("ALTER TABLE notifications ADD COLUMN dead_letter_reason TEXT")
            rows = tx.execute("SELECT id, doc, version FROM notifications WHERE status = 'dead_lettered'").fetchall()
            for nid, doc, version in rows:
                row = self._columns(self._load(doc, version))
                tx.execute(
                    "UPDATE notifications SET dead_lettered_at = ?, dead_letter_reason = ? WHERE id = ?",
                    (row["dead_lettered_at"], row["dead_letter_reason"], nid),
                )

    def _connection(self) -> sqlite3.Connection:
        return self._file.connection()

    def _transaction(self):
        return self._file.transaction()

    # ------------------------------------------------------------------ rows

    @staticmethod
    def _columns(n: Notification) -> dict:
        waiting = [r.updated_at for r in n.recipients if r.status is RecipientStatus.SENT and r.updated_at]
        status = n.status  # derived from the recipients each time it is read
        dead = n.dead_letter if status is NotificationStatus.DEAD_LETTERED else None
        return {
            "id": n.id,
            "channel": n.channel.value,
            "status": status.value,
            "created_at": _ts(n.created_at),
            "updated_at": _ts(n.updated_at),
            "idempotency_key": n.idempotency_key,
            "queued": 1 if n.queued_at else 0,
            "reached_acs": 1 if n.reached_acs else 0,
            "awaiting_since": _ts(min(waiting)) if waiting else None,
            "dead_lettered_at": _ts(dead.at) if dead else None,
            "dead_letter_reason": dead.reason if dead else None,
            "doc": n.model_dump_json(exclude=_OUTSIDE_DOC),
        }

    @staticmethod
    def _load(doc: str, version: int) -> Notification:
        notification = Notification.model_validate_json(doc)
        notification.version = version
        return notification

    # Both take every notification a write stores at once: one statement for a batch of a thousand
    # delivery reports rather than two per notification.
    @staticmethod
    def _index_message_ids(db: sqlite3.Connection, notifications: list[Notification]) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO message_ids (message_id, notification_id) VALUES (?, ?)",
            [(message_id, n.id) for n in notifications for message_id in n.message_ids],
        )

    @staticmethod
    def _enqueue_status_events(db: sqlite3.Connection, notifications: list[Notification]) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO status_outbox (event_id, notification_id, doc) VALUES (?, ?, ?)",
            [(e.id, n.id, e.model_dump_json()) for n in notifications for e in n.pending_status_events],
        )

    # ------------------------------------------------------------------ Ledger port

    def add(self, notification: Notification) -> Notification:
        row = self._columns(notification)
        try:
            with self._transaction() as db:
                db.execute(_INSERT, [*map(row.get, _INSERTED_COLUMNS)])
                self._index_message_ids(db, [notification])
                self._enqueue_status_events(db, [notification])
        except sqlite3.IntegrityError:
            existing = self._by_idempotency_key(notification.idempotency_key)
            if existing is None:
                raise
            return existing
        notification.version = 1
        notification.pending_status_events = []
        return notification

    def add_many(self, notifications: list[Notification]) -> list[Notification]:
        stored: list[Notification] = []
        taken: list[Notification] = []
        with self._transaction() as db:
            for n in notifications:
                cursor = db.execute(_INSERT_OR_IGNORE, [*map(self._columns(n).get, _INSERTED_COLUMNS)])
                if cursor.rowcount == 0:  # the key is held (maybe by an earlier item of this list)
                    row = db.execute(
                        "SELECT doc, version FROM notifications WHERE idempotency_key = ?", (n.idempotency_key,)
                    ).fetchone()
                    if row is None:
                        raise sqlite3.IntegrityError(f"notification {n.id} exists")
                    stored.append(self._load(*row))
                    continue
                taken.append(n)
                stored.append(n)
            self._index_message_ids(db, taken)
            self._enqueue_status_events(db, taken)
        for n in taken:  # once committed
            n.version = 1
            n.pending_status_events = []
        return stored

    def _by_idempotency_key(self, key: str | None) -> Notification | None:
        if key is None:
            return None
        row = self._connection().execute(
            "SELECT doc, version FROM notifications WHERE idempotency_key = ?", (key,)
        ).fetchone()
        return self._load(*row) if row else None

    def get(self, notification_id: str) -> Notification | None:
        row = self._connection().execute(
            "SELECT doc, version FROM notifications WHERE id = ?", (notification_id,)
        ).fetchone()
        return self._load(*row) if row else None

    def save(self, notification: Notification) -> None:
        if self.save_many([notification]):
            raise ConcurrencyConflict(notification.id)

    def save_many(self, notifications: list[Notification]) -> list[Notification]:
        lost: list[Notification] = []
        saved: list[Notification] = []
        with self._transaction() as db:
            for n in notifications:
                cursor = db.execute(_UPDATE, [*map(self._columns(n).get, _UPDATED_COLUMNS), n.version])
                (saved if cursor.rowcount else lost).append(n)
            self._index_message_ids(db, saved)
            self._enqueue_status_events(db, saved)
        for n in saved:
            n.version += 1
            n.pending_status_events = []
        return lost

    def mark_queued(self, notifications: list[Notification], at: datetime) -> list[Notification]:
        when = _JSON_DATETIME.dump_json(at).decode()
        entry = HistoryEntry(at=at, event="queued").model_dump_json()
        marked: list[Notification] = []
        lost: list[Notification] = []
        with self._transaction() as db:
            for n in notifications:
                cursor = db.execute(_MARK_QUEUED, (_ts(at), when, when, entry, n.id, n.version))
                (marked if cursor.rowcount else lost).append(n)
        for n in marked:  # once committed: the copy in hand becomes what was stored
            n.mark_queued(at)
            n.version += 1
        return lost

    def find_by_message_ids(self, message_ids: Iterable[str]) -> dict[str, Notification]:
        wanted = sorted(set(message_ids))
        db = self._connection()
        found: dict[str, Notification] = {}
        loaded: dict[str, Notification] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            for mid, nid, doc, version in db.execute(
                "SELECT m.message_id, n.id, n.doc, n.version FROM message_ids m JOIN notifications n"
                f" ON n.id = m.notification_id WHERE m.message_id IN ({marks})",
                chunk,
            ):
                # One object per notification, however many of its message ids the reports name.
                if nid not in loaded:
                    loaded[nid] = self._load(doc, version)
                found[mid] = loaded[nid]
        return found

    def park_reports(self, reports: Iterable[DeliveryReport], at: datetime) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO parked_reports (event_id, message_id, parked_at, doc) VALUES (?, ?, ?, ?)",
                [(r.event_id, r.message_id, _ts(at), r.model_dump_json()) for r in reports],
            )

    def parked_reports_for(self, message_ids: Iterable[str]) -> list[DeliveryReport]:
        wanted = sorted(set(message_ids))
        found: list[DeliveryReport] = []
        db = self._connection()
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT doc FROM parked_reports WHERE message_id IN ({marks}) ORDER BY parked_at", chunk)
            found.extend(DeliveryReport.model_validate_json(doc) for (doc,) in rows)
        return found

    def claimable_parked_reports(self, limit: int) -> list[DeliveryReport]:
        rows = self._connection().execute(
            "SELECT p.doc FROM parked_reports p JOIN message_ids m ON m.message_id = p.message_id"
            " ORDER BY p.parked_at LIMIT ?",
            (limit,),
        )
        return [DeliveryReport.model_validate_json(doc) for (doc,) in rows]

    def discard_parked_reports(self, event_ids: Iterable[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM parked_reports WHERE event_id = ?", [(e,) for e in set(event_ids)])

    def expire_parked_reports(self, parked_before: datetime) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM parked_reports WHERE parked_at < ?", (_ts(parked_before),)).rowcount

    def status_counts(
        self, *, start: datetime, end: datetime, channel: Channel | None = None
    ) -> dict[tuple[Channel, NotificationStatus], int]:
        sql = "SELECT channel, status, reached_acs, COUNT(*) FROM notifications WHERE created_at >= ? AND created_at < ?"
        args: list = [_ts(start), _ts(end)]
        if channel is not None:
            sql += " AND channel = ?"
            args.append(channel.value)
        sql += " GROUP BY channel, status, reached_acs"
        return {
            (Channel(ch), NotificationStatus(st), bool(acs)): count
            for ch, st, acs, count in self._connection().execute(sql, args)
        }

    def awaiting_reports(self, *, sent_before: datetime, limit: int) -> list[Notification]:
        rows = self._connection().execute(
            "SELECT doc, version FROM notifications WHERE awaiting_since IS NOT NULL AND awaiting_since <= ?"
            " ORDER BY awaiting_since LIMIT ?",
            (_ts(sent_before), limit),
        )
        return [self._load(doc, version) for doc, version in rows]

    def unqueued(self, *, accepted_before: datetime, limit: int) -> list[Notification]:
        rows = self._connection().execute(
            "SELECT doc, version FROM notifications WHERE queued = 0 AND created_at <= ? ORDER BY created_at LIMIT ?",
            (_ts(accepted_before), limit),
        )
        return [self._load(doc, version) for doc, version in rows]

    def purge(self, *, accepted_before: datetime, limit: int) -> int:
        cutoff = _ts(accepted_before)
        with self._transaction() as db:
            ids = [row[0] for row in db.execute(
                "SELECT id FROM notifications WHERE created_at < ? ORDER BY created_at LIMIT ?", (cutoff, limit)
            )]
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM message_ids WHERE notification_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM status_outbox WHERE notification_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM notifications WHERE id IN ({marks})", chunk)
            db.execute("DELETE FROM parked_reports WHERE parked_at < ?", (cutoff,))
        return len(ids)

    def dead_lettered(
        self,
        *,
        channel: Channel | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Notification]:
        sql = "SELECT doc, version FROM notifications WHERE dead_lettered_at IS NOT NULL"
        args: list = []
        if channel is not None:
            sql += " AND channel = ?"
            args.append(channel.value)
        if reason is not None:
            sql += " AND dead_letter_reason = ?"
            args.append(reason)
        if since is not None:
            sql += " AND dead_lettered_at >= ?"
            args.append(_ts(since))
        sql += " ORDER BY dead_lettered_at DESC, id LIMIT ?"
        args.append(limit)
        return [self._load(doc, version) for doc, version in self._connection().execute(sql, args)]

    def record_audit(self, entry: AuditEntry) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO audit (id, at, doc) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at,"
                " doc = excluded.doc",
                (entry.id, _ts(entry.at), entry.model_dump_json()),
            )

    def audit_entries(self, *, since: datetime | None = None, limit: int = 100) -> list[AuditEntry]:
        rows = self._connection().execute(
            "SELECT doc FROM audit WHERE at >= ? ORDER BY at DESC, id LIMIT ?",
            (_ts(since) if since else float("-inf"), limit),
        )
        return [AuditEntry.model_validate_json(doc) for (doc,) in rows]
    def pending_status_events(self, limit: int, *, exclude: Iterable[str] = ()) -> list[StatusEvent]:
        if limit < 1:
            return []
        skipped = set(exclude)
        if not skipped:
            rows = self._connection().execute("SELECT doc FROM status_outbox ORDER BY position LIMIT ?", (limit,))
            return [StatusEvent.model_validate_json(doc) for (doc,) in rows]
        # Skipped here rather than with NOT IN (...), which would bound ``exclude`` by SQLite's
        # limit on bound parameters; the cursor stops as soon as ``limit`` events are found.
        events: list[StatusEvent] = []
        cursor = self._connection().execute("SELECT notification_id, doc FROM status_outbox ORDER BY position")
        try:
            for notification_id, doc in cursor:
                if notification_id in skipped:
                    continue
                events.append(StatusEvent.model_validate_json(doc))
                if len(events) >= limit:
                    break
        finally:
            cursor.close()
        return events

    def mark_status_events_published(self, events: Iterable[StatusEvent]) -> None:
        ids = sorted({e.id for e in events})
        with self._transaction() as db:
            for chunk in _chunks(ids):
                db.execute(f"DELETE FROM status_outbox WHERE event_id IN ({','.join('?' * len(chunk))})", chunk)

    def close(self) -> None:
        self._file.close()
