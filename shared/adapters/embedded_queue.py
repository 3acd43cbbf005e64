"""A durable queue in SQLite with Service Bus peek-lock semantics, for the local stack.

The local HTTP API process and one or more dispatcher worker processes share the queue through
one database file, so everything here must hold across threads *and* processes: every change is
a single SQL statement or a ``BEGIN IMMEDIATE`` transaction, never a read-then-write in Python.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..domain.errors import LockLost
from ..service.ports import Clock, DeadLetteredMessage, OutgoingMessage, ReceivedMessage
from .clock import SystemClock
from .sqlite_file import SqliteFile

log = logging.getLogger(__name__)

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

# One row per message, dead letters included (``dead_lettered_at`` set), so a dead letter keeps
# its sequence number, delivery count and enqueued time without copying anything.
# ``visible_at`` is the scheduled time while the message waits, and the end of the lock while it
# is locked: "can be received" is then one indexed comparison. Times are integer microseconds
# since the epoch (UTC), exact where floats would round.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_messages (
    sequence_number         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue                   TEXT    NOT NULL,
    message_id              TEXT    NOT NULL,
    body                    TEXT    NOT NULL,
    properties              TEXT    NOT NULL,
    enqueued_at             INTEGER NOT NULL,
    visible_at              INTEGER NOT NULL,
    delivery_count          INTEGER NOT NULL DEFAULT 0,
    lock_token              TEXT,
    dead_lettered_at        INTEGER,
    dead_letter_reason      TEXT,
    dead_letter_description TEXT,
    correlation_id          TEXT
);
CREATE INDEX IF NOT EXISTS queue_messages_active
    ON queue_messages (queue, sequence_number) WHERE dead_lettered_at IS NULL;
CREATE INDEX IF NOT EXISTS queue_messages_dead
    ON queue_messages (queue, dead_lettered_at) WHERE dead_lettered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue_message_ids (
    queue      TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    sent_at    INTEGER NOT NULL,
    PRIMARY KEY (queue, message_id)
);
-- Every send forgets ids older than the window; without this index that is a scan of every id
-- sent in the window, and intake slows down as it goes.
CREATE INDEX IF NOT EXISTS queue_message_ids_age ON queue_message_ids (queue, sent_at);
"""


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("Queue times must be timezone-aware.")
    return (moment - _EPOCH) // _MICROSECOND


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class EmbeddedQueue:
    """One named queue in a SQLite file; implements ``MessagePublisher`` and ``MessageConsumer``.

    Contract (Azure Service Bus peek-lock, as far as the service relies on it):

    * ``send`` is durable once it returns. ``scheduled_at`` hides the message until that time.
      With ``duplicate_detection_window`` set, a ``message_id`` already sent to this queue within
      the window is accepted and silently dropped (scheduled messages count too).
    * ``receive`` locks up to ``max_messages`` visible messages in sequence order, gives each a
      fresh ``lock_token``, ``locked_until = now + lock_duration`` and ``delivery_count + 1``.
      A message already delivered ``max_delivery_count`` times is dead-lettered with reason
      ``MaxDeliveryCountExceeded`` instead. With ``max_wait`` it polls until something arrives.
      No two receivers, in any thread or process, ever hold the same message at once.
    * ``complete`` deletes, ``abandon`` makes visible again at once (count kept), ``dead_letter``
      moves to the dead-letter sub-queue, ``renew_lock`` extends the lock. Each raises ``LockLost``
      when the token does not match, the lock expired, or the message is gone.
    * ``dead_letters``, ``dead_letter_count``, ``remove_dead_letter``, ``active_count`` and
      ``peek`` are for operators and tests.

    Safe to share between threads (one connection per thread) and processes (SQLite locking).
    """

    def __init__(
        self,
        path: str | Path,
        queue_name: str,
        *,
        max_delivery_count: int = 10,
        lock_duration: timedelta = timedelta(seconds=60),
        duplicate_detection_window: timedelta | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1.")
        if lock_duration <= timedelta(0):
            raise ValueError("lock_duration must be positive.")
        self.path = Path(path)
        self.queue_name = queue_name
        self.max_delivery_count = max_delivery_count
        self.lock_duration = lock_duration
        self.duplicate_detection_window = duplicate_detection_window
        self._clock: Clock = clock or SystemClock()
        self._file = SqliteFile(self.path, rows_as_mappings=True)
        self._conn().executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        # A queue file made before messages carried a correlation id gains the column; under the
        # write lock, so two processes opening the same old file do not both add it.
        with self._transaction() as conn:
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(queue_messages)")}
            if "correlation_id" not in columns:
                conn.execute("ALTER TABLE queue_messages ADD COLUMN correlation_id TEXT")

    # ------------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        return self._file.connection()

    def _transaction(self):
        return self._file.transaction()

    def close(self) -> None:
        """Close every connection this object opened (in this process)."""
        self._file.close()

    def __enter__(self) -> EmbeddedQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ publisher

    def send(self, message: OutgoingMessage) -> None:
        self.send_many([message])

    def send_many(self, messages: list[OutgoingMessage]) -> None:
        """All in one transaction: durable together once it returns."""
        now = self._clock.now()
        with self._transaction() as conn:
            if self.duplicate_detection_window is not None:
                # The history only needs the window; pruning here keeps it bounded without a sweeper.
                conn.execute(
                    "DELETE FROM queue_message_ids WHERE queue = ? AND sent_at <= ?",
                    (self.queue_name, _to_us(now - self.duplicate_detection_window)),
                )
            for message in messages:
                if self.duplicate_detection_window is not None and self._is_duplicate(conn, message, now):
                    log.info("Dropped duplicate message %s on queue %s", message.message_id, self.queue_name)
                    continue
                # Like Service Bus, a scheduled message is enqueued when its time comes.
                visible = max(now, message.scheduled_at) if message.scheduled_at else now
                conn.execute(
                    "INSERT INTO queue_messages"
                    " (queue, message_id, body, properties, enqueued_at, visible_at, correlation_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.queue_name, message.message_id, json.dumps(message.body),
                        json.dumps(message.application_properties), _to_us(visible), _to_us(visible),
                        message.correlation_id,
                    ),
                )

    def _is_duplicate(self, conn: sqlite3.Connection, message: OutgoingMessage, now: datetime) -> bool:
        inserted = conn.execute(
            "INSERT INTO queue_message_ids (queue, message_id, sent_at) VALUES (?, ?, ?)"
            " ON CONFLICT (queue, message_id) DO NOTHING",
            (self.queue_name, message.message_id, _to_us(now)),
        ).rowcount
        return inserted == 0

    # ------------------------------------------------------------------ consumer

    def receive(self, max_messages: int = 1, max_wait: float = 0.0) -> list[ReceivedMessage]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1.")
        deadline = time.monotonic() + max_wait
        pause = 0.05
        while True:
            received = self._receive_now(max_messages)
            remaining = deadline - time.monotonic()
            if received or remaining <= 0:
                return received
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.2)

    def _receive_now(self, max_messages: int) -> list[ReceivedMessage]:
        now = self._clock.now()
        locked_until = now + self.lock_duration
        received: list[ReceivedMessage] = []
        with self._transaction() as conn:
            # Loop because dead-lettering over-delivered messages can leave the batch short.
            while len(received) < max_messages:
                rows = conn.execute(
                    "SELECT * FROM queue_messages"
                    " WHERE queue = ? AND dead_lettered_at IS NULL AND visible_at <= ?"
                    " ORDER BY sequence_number LIMIT ?",
                    (self.queue_name, _to_us(now), max_messages - len(received)),
                ).fetchall()
                if not rows:
                    break
                for row in rows:
                    if row["delivery_count"] >= self.max_delivery_count:
                        self._dead_letter_exhausted(conn, row, now)
                        continue
                    token = str(uuid.uuid4())
                    conn.execute(
                        "UPDATE queue_messages SET lock_token = ?, visible_at = ?,"
                        " delivery_count = delivery_count + 1 WHERE sequence_number = ?",
                        (token, _to_us(locked_until), row["sequence_number"]),
                    )
                    received.append(
                        ReceivedMessage(
                            body=json.loads(row["body"]),
                            message_id=row["message_id"],
                            application_properties=json.loads(row["properties"]),
                            delivery_count=row["delivery_count"] + 1,
                            enqueued_at=_from_us(row["enqueued_at"]),
                            sequence_number=row["sequence_number"],
                            lock_token=token,
                            locked_until=locked_until,
                            correlation_id=row["correlation_id"],
                        )
                    )
        return received

    def _dead_letter_exhausted(self, conn: sqlite3.Connection, row: sqlite3.Row, now: datetime) -> None:
        conn.execute(
            "UPDATE queue_messages SET lock_token = NULL, dead_lettered_at = ?,"
            " dead_letter_reason = ?, dead_letter_description = ? WHERE sequence_number = ?",
            (
                _to_us(now),
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {self.max_delivery_count} delivery attempts.",
                row["sequence_number"],
            ),
        )
        log.warning(
            "Dead-lettered message %s (sequence %d) on queue %s: %s",
            row["message_id"], row["sequence_number"], self.queue_name, MAX_DELIVERY_COUNT_EXCEEDED,
        )

    def _settle(self, message: ReceivedMessage, statement: str, *params: Any) -> None:
        """Run ``statement`` (ending in the lock-holder condition) or raise ``LockLost``.

        The lock check and the change are one statement, so no other receiver can take the
        message in between.
        """
        now = _to_us(self._clock.now())
        held = (
            " WHERE queue = ? AND sequence_number = ? AND lock_token = ?"
            " AND visible_at > ? AND dead_lettered_at IS NULL"
        )
        cursor = self._conn().execute(
            statement + held,
            (*params, self.queue_name, message.sequence_number, message.lock_token, now),
        )
        if cursor.rowcount == 0:
            raise LockLost(
                f"The lock on message {message.message_id} (sequence {message.sequence_number}) "
                f"was lost: it expired, the message was settled, or another receiver holds it."
            )

    def complete(self, message: ReceivedMessage) -> None:
        self._settle(message, "DELETE FROM queue_messages")

    def abandon(self, message: ReceivedMessage) -> None:
        now = _to_us(self._clock.now())
        self._settle(message, "UPDATE queue_messages SET lock_token = NULL, visible_at = ?", now)

    def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        now = _to_us(self._clock.now())
        self._settle(
            message,
            "UPDATE queue_messages SET lock_token = NULL, dead_lettered_at = ?,"
            " dead_letter_reason = ?, dead_letter_description = ?",
            now, reason, description,
        )

    def renew_lock(self, message: ReceivedMessage) -> ReceivedMessage:
        locked_until = self._clock.now() + self.lock_duration
        self._settle(message, "UPDATE queue_messages SET visible_at = ?", _to_us(locked_until))
        return replace(message, locked_until=locked_until)

    # ------------------------------------------------------------------ operators

    def dead_letters(self, limit: int = 100) -> list[DeadLetteredMessage]:
        """The dead-letter sub-queue, oldest dead letter first."""
        rows = self._conn().execute(
            "SELECT * FROM queue_messages WHERE queue = ? AND dead_lettered_at IS NOT NULL"
            " ORDER BY dead_lettered_at, sequence_number LIMIT ?",
            (self.queue_name, limit),
        ).fetchall()
        return [
            DeadLetteredMessage(
                body=json.loads(row["body"]),
                message_id=row["message_id"],
                application_properties=json.loads(row["properties"]),
                delivery_count=row["delivery_count"],
                enqueued_at=_from_us(row["enqueued_at"]),
                sequence_number=row["sequence_number"],
                reason=row["dead_letter_reason"],
                description=row["dead_letter_description"],
                dead_lettered_at=_from_us(row["dead_lettered_at"]),
            )
            for row in rows
        ]

    def remove_dead_letter(self, sequence_number: int) -> bool:
        """Delete one dead letter; False when there is no such dead letter on this queue."""
        cursor = self._conn().execute(
            "DELETE FROM queue_messages"
            " WHERE queue = ? AND sequence_number = ? AND dead_lettered_at IS NOT NULL",
            (self.queue_name, sequence_number),
        )
        return cursor.rowcount > 0

    def active_count(self) -> int:
        """Messages not dead-lettered: visible, scheduled and locked ones."""
        return self._count("dead_lettered_at IS NULL")

    def dead_letter_count(self) -> int:
        return self._count("dead_lettered_at IS NOT NULL")

    def _count(self, condition: str) -> int:
        sql = f"SELECT COUNT(*) FROM queue_messages WHERE queue = ? AND {condition}"
        return self._conn().execute(sql, (self.queue_name,)).fetchone()[0]

    def peek(self, limit: int = 100) -> list[dict[str, Any]]:
        """Active messages in sequence order, without locking them or counting a delivery."""
        now = _to_us(self._clock.now())
        rows = self._conn().execute(
            "SELECT * FROM queue_messages WHERE queue = ? AND dead_lettered_at IS NULL"
            " ORDER BY sequence_number LIMIT ?",
            (self.queue_name, limit),
        ).fetchall()
        return [
            {
                "sequence_number": row["sequence_number"],
                "message_id": row["message_id"],
                "body": json.loads(row["body"]),
                "application_properties": json.loads(row["properties"]),
                "delivery_count": row["delivery_count"],
                "enqueued_at": _from_us(row["enqueued_at"]),
                "state": (
                    "visible" if row["visible_at"] <= now
                    else "locked" if row["lock_token"] is not None
                    else "scheduled"
                ),
                "visible_at": _from_us(row["visible_at"]),
            }
            for row in rows
        ]
