"""Send quotas in Azure Table Storage, shared by every dispatcher instance in Azure.

One table, ``<prefix>ratelog``, one partition per key (a channel):

    RowKey "head"                      touched by every grant; its ETag serialises grants
    RowKey "log|<taken_at>|<random>"   one per grant: units

A request reads the key's partition (the head and the log) in one query, decides with
``SendQuota.blocked_until`` (the same pure code as the SQLite limiter and the fake), and a grant
is one entity-group transaction in the partition: replace the head on the ETag it read, insert the
log row, delete rows too old to matter. Two instances that read the same state cannot both
commit: the second transaction fails on the head's ETag (412), and that instance reads again and
decides again. ("head" sorts before every "log|" row, so even a query that is not a snapshot
reads the head no later than the log: a log it read stale comes with a head ETag that is stale.) A refusal writes nothing. Times are fixed-width ISO-8601 strings in UTC, so the
RowKeys sort by time.

Under a contention so heavy that a request keeps losing (dozens of instances on one key), it gives
up after a few rounds and answers "retry in a moment", which the dispatcher treats like any other
quota wait: never a grant it did not win.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from datetime import datetime, timedelta

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableEntity, TableServiceClient, UpdateMode

from ..service.quota import SendQuota
from .table_ledger import TableStore, encode_key, from_text, to_text

log = logging.getLogger(__name__)

RATE_LOG = "ratelog"
_HEAD = "head"
_LOG = "log|"
_TRIES = 12
_CONTENDED_RETRY = timedelta(seconds=1)
# A transaction holds at most 100 operations: the head, the new row, and up to this many deletes.
_PRUNE_PER_GRANT = 98


def _taken_at(row: TableEntity) -> datetime:
    return from_text(row["RowKey"].split("|")[1])


class TableRateLimiter:
    """The ``RateLimiter`` port over Azure Table Storage. A key without a quota, or whose quota
    sets no limit at the time, is always granted and records nothing."""

    def __init__(self, service: TableServiceClient, quotas: dict[str, SendQuota], *, prefix: str = "notify") -> None:
        self._store = TableStore(service, prefix, [RATE_LOG])
        self._quotas = dict(quotas)

    def acquire(self, key: str, units: int, now: datetime) -> datetime | None:
        quota = self._quotas.get(key)
        if quota is None or not quota.limits(now):
            return None
        partition = encode_key(key)
        for attempt in range(_TRIES):
            rows = list(self._store.query(RATE_LOG, "PartitionKey eq @pk", {"pk": partition}))
            head = next((row for row in rows if row["RowKey"] == _HEAD), None)
            logged = [(_taken_at(row), row["units"], row) for row in rows if row["RowKey"].startswith(_LOG)]
            taken = [(at, n) for at, n, _ in logged if at > now - quota.horizon]
            retry_at = quota.blocked_until(taken, units, now)
            if retry_at is not None:
                return retry_at
            # Prune two horizons back, not one: an instance whose clock lags ours by up to a horizon
            # still needs the rows just out of our own window.
            old = [row for at, _, row in logged if at <= now - 2 * quota.horizon]
            if self._grant(partition, head, units, now, old):
                return None
            # Another instance granted in between: read again. A short random pause spreads the
            # retries of instances that collided.
            time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        log.warning("rate limiter key %s stayed contended for %d attempts; deferring", key, _TRIES)
        return now + _CONTENDED_RETRY

    def _grant(
        self, partition: str, head: TableEntity | None, units: int, now: datetime, old: list[TableEntity]
    ) -> bool:
        """One transaction: touch the head on its ETag, log the grant, prune ``old``. False when
        another instance committed first."""
        touched = {"PartitionKey": partition, "RowKey": _HEAD, "last_grant": to_text(now)}
        if head is None:
            operations = [("create", touched)]
        else:
            condition = {"etag": head.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
            operations = [("update", touched, {"mode": UpdateMode.REPLACE, **condition})]
        operations.append(("create", {
            "PartitionKey": partition, "RowKey": f"{_LOG}{to_text(now)}|{uuid.uuid4().hex[:12]}", "units": units,
        }))
        operations += [("delete", {"PartitionKey": partition, "RowKey": r["RowKey"]}) for r in old[:_PRUNE_PER_GRANT]]
        try:
            self._store.table(RATE_LOG).submit_transaction(operations)
            return True
        except HttpResponseError as error:
            # 412: the head changed; 409: another instance created it first; 404: a row we meant
            # to prune is gone, so someone else committed. All mean: lost the race.
            if error.status_code in (404, 409, 412):
                return False
            raise

    def close(self) -> None:
        self._store.close()
