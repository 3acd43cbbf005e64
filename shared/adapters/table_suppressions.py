"""The suppression list in Azure Table Storage, beside the Table ledger.

One table, ``<prefix>suppressions``: PartitionKey = the channel, RowKey = the recipient's
normalised key (``Suppression.key``) percent-encoded, because RowKeys may not contain
``/ \\ # ?`` and an email address may. ``find`` is a point read per address; ``add`` is an insert,
so of two adders exactly one is told it added the entry. ``add_many`` inserts a channel's entries
in transactions of a hundred, and falls back to one insert each (``TABLE_CONCURRENCY`` at a time)
for a hundred of which one is listed already. ``list`` reads the channel's partition
(or both) and sorts by time: it serves the operator CLI, not the send path.
"""

from __future__ import annotations

from typing import Any, Iterable

from azure.data.tables import TableEntity, TableServiceClient

from ..domain.model import Channel, Suppression
from .table_ledger import DEFAULT_CONCURRENCY, TableStore, encode_key, from_text, to_text

SUPPRESSIONS = "suppressions"
_COLUMNS = ["PartitionKey", "address", "reason", "created_at", "notification_id"]


class TableSuppressionList:
    """The ``SuppressionList`` port over Azure Table Storage."""

    def __init__(
        self, service: TableServiceClient, *, prefix: str = "notify", concurrency: int = DEFAULT_CONCURRENCY
    ) -> None:
        self._store = TableStore(service, prefix, [SUPPRESSIONS], concurrency=concurrency)

    @staticmethod
    def _entry(entity: TableEntity) -> Suppression:
        return Suppression(
            channel=Channel(entity["PartitionKey"]),
            address=entity["address"],
            reason=entity["reason"],
            created_at=from_text(entity["created_at"]),
            notification_id=entity.get("notification_id") or None,
        )

    @staticmethod
    def _entity(entry: Suppression) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": entry.channel.value,
            "RowKey": encode_key(Suppression.key(entry.channel, entry.address)),
            "address": entry.address,
            "reason": entry.reason,
            "created_at": to_text(entry.created_at),
        }
        if entry.notification_id:
            entity["notification_id"] = entry.notification_id
        return entity

    def add(self, entry: Suppression) -> bool:
        return self._store.create(SUPPRESSIONS, self._entity(entry))

    def add_many(self, entries: Iterable[Suppression]) -> int:
        # The first entry for a recipient is the one that counts; a later one in the same call
        # would only be refused, and would fail the transaction it shared with the first.
        first: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in entries:
            entity = self._entity(entry)
            first.setdefault((entity["PartitionKey"], entity["RowKey"]), entity)
        return self._store.create_many(SUPPRESSIONS, first.values())

    def remove(self, channel: Channel, address: str) -> bool:
        row = encode_key(Suppression.key(channel, address))
        while True:
            current = self._store.get(SUPPRESSIONS, channel.value, row, select=["RowKey"])
            if current is None:
                return False
            # Conditional, so an entry re-added meanwhile is not removed unseen.
            if self._store.delete(SUPPRESSIONS, channel.value, row, current.metadata["etag"]):
                return True

    def find(self, channel: Channel, addresses: Iterable[str]) -> dict[str, Suppression]:
        by_key: dict[str, list[str]] = {}
        for address in addresses:
            by_key.setdefault(Suppression.key(channel, address), []).append(address)
        keys = list(by_key)
        entities = self._store.map(
            lambda key: self._store.get(SUPPRESSIONS, channel.value, encode_key(key), select=_COLUMNS), keys
        )
        found: dict[str, Suppression] = {}
        for key, entity in zip(keys, entities):
            if entity is not None:
                entry = self._entry(entity)
                found.update({address: entry for address in by_key[key]})
        return found

    def list(self, *, channel: Channel | None = None, limit: int = 100) -> list[Suppression]:
        if channel is None:
            entities = self._store.scan(SUPPRESSIONS, select=_COLUMNS)
        else:
            entities = self._store.query(
                SUPPRESSIONS, "PartitionKey eq @channel", {"channel": channel.value}, select=_COLUMNS
            )
        entries = sorted((self._entry(e) for e in entities), key=lambda s: s.created_at, reverse=True)
        return entries[:limit]

    def close(self) -> None:
        self._store.close()
