"""Connections to one SQLite file that the local stack's processes share."""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


_writers: dict[str, threading.RLock] = {}
_writers_guard = threading.Lock()


def _writer(path: Path) -> threading.RLock:
    key = os.path.realpath(path)
    with _writers_guard:
        return _writers.setdefault(key, threading.RLock())


class SqliteFile:
    """One connection per thread and process, in autocommit mode, with WAL.

    * Autocommit (``isolation_level=None``): transactions are opened explicitly, and only where a
      statement alone is not atomic enough; ``transaction()`` takes the write lock up front
      (``BEGIN IMMEDIATE``), so two processes cannot both read a row and then both change it.
    * WAL lets readers run beside the one writer; ``synchronous=NORMAL`` in WAL mode loses at most
      the last transactions on power loss and never corrupts, a fair trade for a local stack.
    * ``busy_timeout`` is set first, so switching to WAL waits for a concurrent opener.
    * A connection inherited through ``fork()`` is never used by the child.
    """

    def __init__(self, path: str | Path, *, rows_as_mappings: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows_as_mappings = rows_as_mappings
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = _writer(self.path)

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if self._rows_as_mappings:
                conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._opened.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        with self._writer:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection opened in this process, every thread's: call it only once no
        thread uses the file any more (closing a connection under a running statement crashes)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self._local = threading.local()
