"""The ledger in Azure Table Storage (``azure-data-tables``), for the service in Azure.

Table Storage has point reads, range scans inside a partition, atomic batches inside a partition,
and ETags; no secondary indexes and no transactions across partitions. So every query the
``Ledger`` port needs gets its own table, keyed so that the query is a point read or a range scan
over the rows it returns, and the writes are ordered so that a crash between two of them leaves
nothing a reader would believe.

Tables (``<prefix><name>``, created on first use):

    notifications   PK = "<hour its id was made in>-<shard>", RK = id   the document and the few
                    PK = id, RK = ""   (ids that are not UUIDv7)        columns below
    idempotencykeys PK = sha256(idempotency key)       -> notification_id
    messageids      PK = ACS message id                -> notification_id
    window          PK = hour accepted ("2026112215")  RK = "<created_at>|<id>": channel, status,
                                                       reached_acs (the reconciliation window)
    followups       PK = "awaiting", RK = "<earliest send still waiting for a report>|<id>"
                    PK = "unqueued", RK = "<created_at>|<id>"
                    PK = "deadletters", RK = "<dead-lettered at, newest first>|<id>": channel, reason
    audit           PK = "audit", RK = "<time, newest first>|<id>"  operator actions
                    PK = "outbox",   RK = "<created_at>|<id>"  (it has status events to relay)
    parked          PK = message id, RK = event id     parked_at, the report
    parkedevents    PK = event id                      -> message_id (discarding goes by event id)

* Notification ids are UUIDv7, so an id says when it was made. Notifications made in the same
  hour share 16 partitions (``2026112215-a``: the hour, then the id's last hex digit), where
  their ids, as RowKeys, sort by time. A batch of delivery reports is mostly for notifications
  sent around the same time, so ``find_by_message_ids`` reads the ids of one partition made
  within ``_RANGE_GAP_MS`` of each other (and ``_RANGE_SPAN_MS`` of the first) with one RowKey
  range scan (the entities in between come along and are dropped) and any other with a point read, and ``save_many`` writes a partition's
  notifications in transactions of up to 100 (``_BATCH_BYTES`` of request). Each write in a
  transaction is conditional on its ETag, and one that fails fails the transaction; the service
  names it, and the rest go again without it: only the one another writer changed is lost.
  A 1,000-report batch (``bench/report_ingest.py --backend table``) now makes 17 reads and 38
  transactions in all, index and window entries included, where a partition a notification
  made it 2,022 requests. The 16 partitions of the current hour take every write to new
  notifications; at Table Storage's 2,000 entities a second per partition that is 32,000 a second,
  more than an account's 20,000. An id that is not a UUIDv7 (every one made before ids were
  time-ordered) keeps the older layout, a partition of its own, and is read and written the same
  way, so no data moves.
* A notification is one entity: a lookup by id is a point read. Its JSON document
  (``model_dump_json(exclude={"version"})``) outgrows the 64 KiB limit of a string property as
  its history grows, so it is split over ``doc0..docN`` and joined on read; a document too big
  for one entity (1 MiB) even so is stored zlib-compressed. ``version`` is an int property.
* ``save`` reads the entity (a few small properties), refuses when ``version`` differs, and
  replaces it conditionally on the ETag it read: a 412 means another writer came between, and
  is the same ``ConcurrencyConflict``. ``save_many`` reads and writes as the first point says,
  ``TABLE_CONCURRENCY`` requests at once. The read is skipped when this adapter read or wrote
  that very version recently (it remembers version, ETag and index columns of the last 4,096),
  so a read-modify-save is one read and one write; a remembered ETag that is stale is just a 412.
* An email's ACS message id is its operation id, which is the notification id, so
  ``find_by_message_ids`` tries a point read of the notification before the ``messageids`` index.
* ``add`` creates the idempotency-key entity first (409: the key is taken, return its holder),
  then the notification. A key whose holder does not exist was left by an ``add`` that crashed in
  between: it is taken over with an ETag-conditional write, and an ``add`` that finds it lost
  its key after creating its notification deletes it again, so one key keeps one notification.
  ``add_many`` takes the notifications without a key together, each step for all of them (their
  entries, their entities in a transaction a shard, their window entries): a batch of 100 at
  intake is a few dozen requests instead of four a notification.
* Index entries that make a notification *visible* (its message ids, its ``awaiting`` and
  ``unqueued`` entries) are written before the notification, and entries that hide it are
  deleted after, so a crash or a lost race can leave an extra entry but never lose one. Readers
  therefore check each entry against the notification it names, skip those that no longer
  apply, and delete them once they are provably stale (the notification was written well after
  the entry, so no writer can still be about to make it true).
* Status events wait for the relay inside the notification's document
  (``pending_status_events``), so they are stored by the very write that stores the change; the
  ``outbox`` follow-up entry, written ahead like the others, lets the relay find them. Removing
  published events is a conditional write of the notification that bumps its version (a copy
  read before cannot bring them back), and only then is the entry deleted, conditionally on the
  ETag the relay read *before* the notification: a save that wrote the entry ahead of its own
  write either landed before that read (its events are seen), or is refused by the relay's write
  (its retry writes the entry again), or rewrote the entry (so the delete fails). An entry whose
  notification has no events left is settled the same way, with a write that changes nothing but
  the version.
* The ``window`` entry is upserted after every successful save, so it carries the status of the
  last save. Two saves' window writes can cross, and a process can die between a save and its
  window write; either would leave the entry behind the notification. Every save that changes
  the status also leaves status events, and so an ``outbox`` entry written ahead, so the relay
  mends it: when it settles a notification's events it upserts the window entry from the
  notification as it wrote it, before deleting the ``outbox`` entry (a crash between keeps the
  entry, and the next relay run mends again). Its own window write can cross a newer save's only
  if that save changed the status, and then that save's events bring the relay back.
  ``status_counts`` reads only the hour partitions the window touches, with a RowKey range, so its
  cost grows with the window and not with the table.
* Writes that share a partition (window entries of one hour, follow-up entries, a purge's
  deletions) go in entity-group transactions of up to 100. One partition serves about 2,000
  entities a second, far above what ACS's send quotas let this service produce.
* The dead-letter listing is newest first, and a table query returns RowKeys in ascending order,
  so its RowKeys start with the time counted down (``_newest_first``); channel and reason are
  properties of the entry, filtered by the service. Operator actions (``audit``) are keyed the
  same way; they are few, so one partition holds them all.
* Times are stored as fixed-width ISO-8601 strings in UTC (``2026-11-22T15:04:05.123456Z``), so
  lexical order is time order and RowKey ranges are time ranges.
* ``azure.core`` HTTP errors are translated here: 409 (exists), 412 (changed) and 404 (gone)
  become the port's answers; anything else (an outage) propagates.

The helpers at the top (``TableStore``, ``submit_transaction``, ``encode_key``, ``to_text``,
``from_text``) are shared by the other Table Storage adapters. ``submit_transaction`` writes a
transaction's multipart request and reads its answer itself, through the SDK's pipeline (its
docstring says why).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.data.tables import TableClient, TableEntity, TableServiceClient, UpdateMode
from azure.data.tables._serialize import _add_entity_properties

from ..domain.errors import ConcurrencyConflict
from ..domain.model import AuditEntry, Channel, DeliveryReport, Notification, NotificationStatus, RecipientStatus, StatusEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# ============================================================================ shared helpers

_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]{0,47}")
_BATCH = 100  # operations per entity-group transaction
# A transaction's request may carry 4 MiB; documents are written whole, so transactions are cut
# well below that.
_BATCH_BYTES = 3 * 1024 * 1024
_REFUSED = object()  # an entity a transaction was refused on (``TableStore._submit_each``)
#: Requests one adapter keeps in flight when it reads or writes many partitions at once (the
#: ``TABLE_CONCURRENCY`` setting); the client's connection pool must hold as many connections.
DEFAULT_CONCURRENCY = 8


def to_text(value: datetime) -> str:
    """A timezone-aware time as fixed-width ISO-8601 in UTC: lexical order is time order."""
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def encode_key(value: str) -> str:
    """``value`` usable as a PartitionKey or RowKey. Keys may not contain ``/ \\ # ?`` or control
    characters, so everything but letters, digits, ``_.-~@`` is percent-encoded (injective, and
    ids and addresses stay readable). A value too long for a key (1 KiB) becomes its hash, marked
    with ``!``, which percent-encoding never produces."""
    encoded = quote(value, safe="@")
    if len(encoded) > 512:
        return "!" + hashlib.sha256(value.encode()).hexdigest()
    return encoded


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _status(error: HttpResponseError) -> int | None:
    return error.status_code


class TransactionRefused(HttpResponseError):
    """Table Storage refused an entity-group transaction as a whole: ``status_code`` and ``index``
    are those of the operation it failed on (409 exists, 412 changed, 404 gone, ...); ``index`` is
    None when the answer does not say."""

    def __init__(self, status: int, index: int | None, message: str, response: Any) -> None:
        super().__init__(message=message, response=response)
        self.status_code = status
        self.index = index


_PART_STATUS = re.compile(r"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_PART_ETAG = re.compile(r"^ETag: *(.+?)\r?$", re.MULTILINE | re.IGNORECASE)
_ERROR_INDEX = re.compile(r'"value" *: *"(\d+):')
# (method, the path after the table's name, extra headers) of each kind of operation; an update is
# a replace on the ETag, an upsert one without any.
_OPERATIONS = {
    "create": ("POST", False, "Accept: application/json;odata=minimalmetadata\r\n"),
    "upsert": ("PUT", True, "Accept: application/json\r\n"),
    "update": ("PUT", True, "Accept: application/json\r\n"),
    "delete": ("DELETE", True, "Accept: application/json;odata=minimalmetadata\r\n"),
}


def submit_transaction(client: TableClient, operations: list[tuple[str, dict[str, Any], str | None]]) -> list[str | None]:
    """Submit ``(kind, entity, etag)`` operations (kinds as in ``_OPERATIONS``; ``etag`` for an
    update, and for a delete that must match; one partition) as one entity-group transaction, and
    return each operation's new ETag (None for a delete). Raises ``TransactionRefused`` when the
    service refuses it, other ``HttpResponseError`` when the request fails.

    This writes the multipart request and reads the answer itself, where
    ``TableClient.submit_transaction`` has azure-core build and parse them with the standard
    library's ``email`` package: that took about 0.3 ms of CPU an operation, 80 % of the Python
    time a batch of delivery reports spent (``bench/report_ingest.py --backend table``). The request
    is the one the SDK sends (entities serialised by the SDK's own ``_add_entity_properties``),
    and it goes through the client's pipeline, so authentication, retries and logging are the SDK's.
    """
    base = f"{client.scheme}://{client._primary_hostname}/{client.table_name}"  # noqa: SLF001
    version = client.api_version
    changeset, batch = f"changeset_{uuid.uuid4()}", f"batch_{uuid.uuid4()}"
    parts = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
    for index, (kind, entity, etag) in enumerate(operations):
        method, keyed, accept = _OPERATIONS[kind]
        url = base
        if keyed:
            pk = quote(entity["PartitionKey"].replace("'", "''"), safe="")
            rk = quote(entity["RowKey"].replace("'", "''"), safe="")
            url = f"{base}(PartitionKey='{pk}',RowKey='{rk}')"
        headers = f"x-ms-version: {version}\r\nDataServiceVersion: 3.0\r\n{accept}"
        if kind == "delete":
            headers += f"If-Match: {etag or '*'}\r\n"
            body = ""
        else:
            if kind == "update":
                headers += f"If-Match: {etag}\r\n"
            body = json.dumps(_add_entity_properties(entity))
            headers = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" + headers
        parts.append(
            f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {index}\r\n\r\n{method} {url} HTTP/1.1\r\n{headers}\r\n{body}\r\n"
        )
    parts.append(f"--{changeset}--\r\n\r\n--{batch}--\r\n")
    request = HttpRequest(
        "POST",
        f"{client.scheme}://{client._primary_hostname}/$batch",  # noqa: SLF001
        headers={
            "x-ms-version": version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={batch}",
            "Accept": "application/json",
        },
        content="".join(parts).encode("ascii"),
    )
    # Streamed, as the SDK does, so the pipeline does not try to decode a multipart body as JSON.
    response = client._client.send_request(request, stream=True)  # noqa: SLF001
    response.read()
    if response.status_code != 202:
        raise HttpResponseError(response=response)
    answer = response.text()
    boundary = re.search(r"boundary=(changesetresponse_[^\s;]+)", answer)
    sections = answer.split(f"--{boundary.group(1)}") if boundary else [answer]
    results: list[str | None] = []
    for section in sections:
        status = _PART_STATUS.search(section)
        if status is None:
            continue
        code = int(status.group(1))
        if not 200 <= code < 300:
            index = _ERROR_INDEX.search(section)
            raise TransactionRefused(code, int(index.group(1)) if index else None, section.strip(), response)
        etag = _PART_ETAG.search(section)
        results.append(etag.group(1) if etag else None)
    if len(results) != len(operations):
        raise HttpResponseError(message=f"a transaction of {len(operations)} operations had {len(results)} answers",
                                response=response)
    return results


class TableStore:
    """The tables of one adapter, created on first use, and the calls it makes on them, with
    the expected HTTP answers (409, 412, 404) turned into return values."""

    def __init__(
        self, service: TableServiceClient, prefix: str, names: Iterable[str], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"a table prefix is a letter then up to 47 letters or digits, got {prefix!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency is at least 1, got {concurrency}")
        self._concurrency = concurrency
        self._service = service
        self._names = {name: f"{prefix}{name}" for name in names}
        too_long = [table for table in self._names.values() if len(table) > 63]
        if too_long:
            raise ValueError(f"table names are at most 63 characters: {too_long}")
        self._clients: dict[str, TableClient] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def table(self, name: str) -> TableClient:
        client = self._clients.get(name)
        if client is None:
            with self._lock:
                client = self._clients.get(name)
                if client is None:
                    client = self._service.create_table_if_not_exists(self._names[name])
                    self._clients[name] = client
        return client

    # ------------------------------------------------------------------ single entities

    def get(self, name: str, pk: str, rk: str, select: list[str] | None = None) -> TableEntity | None:
        try:
            return self.table(name).get_entity(pk, rk, select=select)
        except HttpResponseError as error:
            if _status(error) == 404:
                return None
            raise

    def create(self, name: str, entity: dict[str, Any]) -> bool:
        """False when an entity with these keys exists."""
        try:
            self.table(name).create_entity(entity)
            return True
        except HttpResponseError as error:
            if _status(error) == 409:
                return False
            raise

    def upsert(self, name: str, entity: dict[str, Any]) -> None:
        self.table(name).upsert_entity(entity, mode=UpdateMode.REPLACE)

    def replace_if(self, name: str, entity: dict[str, Any], etag: str) -> str | None:
        """Replace the entity only if it still has ``etag`` and return its new ETag; None when it
        changed or is gone."""
        try:
            written = self.table(name).update_entity(
                entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
            return written["etag"]
        except HttpResponseError as error:
            if _status(error) in (404, 412):
                return None
            raise

    def replace_many_if(self, name: str, items: list[tuple[dict[str, Any], str]]) -> list[str | None]:
        """``replace_if`` for each ``(entity, etag)``, answers in the same order, in transactions
        (``_submit_each``): one that changed or went is lost, and the others still land."""
        return [None if answer is _REFUSED else answer for answer in self._submit_each(name, "update", items, (404, 412))]

    def create_each(self, name: str, entities: list[dict[str, Any]]) -> list[bool]:
        """``create`` for each entity, answers in the same order, in transactions
        (``_submit_each``): one whose keys are taken is not created, and the others are."""
        return [answer is not _REFUSED for answer in self._submit_each(name, "create", [(e, None) for e in entities], (409,))]

    def _submit_each(
        self, name: str, kind: str, items: list[tuple[dict[str, Any], str | None]], refusals: tuple[int, ...]
    ) -> list[str | None | object]:
        """Apply one kind of operation ("upsert", "update", "create" or "delete") to each
        ``(entity, etag)``, one transaction per partition and hundred entities (or
        ``_BATCH_BYTES``): each answer is the entity's new ETag (None for a delete, a lone upsert
        or a lone create), or ``_REFUSED`` when the service refused that entity with a status in
        ``refusals``. A transaction fails as a whole; the service names the entity it failed on,
        and the rest go again without it."""

        def alone(i: int) -> str | None | object:
            # A lone entity is a plain request, as a single save is.
            entity, etag = items[i]
            if kind == "upsert":
                self.upsert(name, entity)
                return None
            if kind == "update":
                written = self.replace_if(name, entity, etag)
                return _REFUSED if written is None else written
            if kind == "delete":
                return None if self.delete(name, entity["PartitionKey"], entity["RowKey"], etag) else _REFUSED
            return None if self.create(name, entity) else _REFUSED

        def submit(chunk: list[int]) -> list[tuple[int, str | None | object]]:
            answers: list[tuple[int, str | None | object]] = []
            while len(chunk) > 1:
                try:
                    written = submit_transaction(self.table(name), [(kind, *items[i]) for i in chunk])
                    return answers + list(zip(chunk, written))
                except TransactionRefused as refused:
                    if refused.status_code not in refusals or refused.index is None or refused.index >= len(chunk):
                        raise
                    answers.append((chunk[refused.index], _REFUSED))
                    chunk = chunk[: refused.index] + chunk[refused.index + 1 :]
            return answers + [(i, alone(i)) for i in chunk]

        results: list[str | None | object] = [_REFUSED] * len(items)
        for answers in self.map(submit, list(_transactions([entity for entity, _ in items]))):
            for i, answer in answers:
                results[i] = answer
        return results

    def delete(self, name: str, pk: str, rk: str, etag: str | None = None) -> bool:
        """Delete (only if it still has ``etag``, when given); False when it changed. A missing
        entity counts as deleted (the SDK does not report it)."""
        try:
            if etag is None:
                self.table(name).delete_entity(pk, rk)
            else:
                self.table(name).delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
            return True
        except HttpResponseError as error:
            if _status(error) == 412:
                return False
            raise

    # ------------------------------------------------------------------ many entities

    def query(
        self,
        name: str,
        query_filter: str,
        parameters: dict[str, Any] | None = None,
        select: list[str] | None = None,
        page_size: int | None = None,
    ) -> Iterator[TableEntity]:
        """Entities in (PartitionKey, RowKey) order, fetched a page at a time as iterated."""
        return iter(
            self.table(name).query_entities(
                query_filter, parameters=parameters, select=select, results_per_page=page_size
            )
        )

    def scan(self, name: str, select: list[str] | None = None) -> Iterator[TableEntity]:
        """Every entity of the table, a page at a time."""
        return iter(self.table(name).list_entities(select=select))

    def upsert_many(self, name: str, entities: Iterable[dict[str, Any]]) -> None:
        """Upsert, in transactions (``_submit_each``)."""
        self._submit_each(name, "upsert", [(e, None) for e in entities], ())

    def create_many(self, name: str, entities: Iterable[dict[str, Any]]) -> int:
        """Insert each entity whose keys are free and return how many were (``create_each``)."""
        return sum(self.create_each(name, list(entities)))

    def delete_many(self, name: str, keys: Iterable[tuple[str, str]]) -> None:
        """Delete whatever of these exists, in transactions (``_submit_each``): one already gone
        is passed over, and the others are deleted."""
        self._submit_each(name, "delete", [({"PartitionKey": pk, "RowKey": rk}, None) for pk, rk in keys], (404,))

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, with up to ``concurrency`` of them in flight at once."""
        items = list(items)
        if len(items) <= 1 or self._concurrency == 1:
            return [fn(item) for item in items]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="table-store")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _transactions(entities: list[dict[str, Any]]) -> Iterator[list[int]]:
    """Positions of ``entities`` grouped into transactions: one partition each, at most ``_BATCH``
    entities and about ``_BATCH_BYTES`` of request, and no entity twice (Table Storage refuses a
    transaction that names an entity twice)."""
    by_partition: dict[str, list[int]] = {}
    for i, entity in enumerate(entities):
        by_partition.setdefault(entity["PartitionKey"], []).append(i)
    for positions in by_partition.values():
        chunk: list[int] = []
        keys: set[str] = set()
        size = 0
        for i in positions:
            entity_size = _request_size(entities[i])
            if chunk and (len(chunk) == _BATCH or size + entity_size > _BATCH_BYTES or entities[i]["RowKey"] in keys):
                yield chunk
                chunk, keys, size = [], set(), 0
            chunk.append(i)
            keys.add(entities[i]["RowKey"])
            size += entity_size
        if chunk:
            yield chunk


def _request_size(entity: dict[str, Any]) -> int:
    """About the bytes an entity takes in a request: its JSON (escapes included: a document is
    JSON already, so its quotes are escaped twice), and a little for each property's type and the
    operation's headers."""
    return len(json.dumps(entity)) + 64 * len(entity)


# ============================================================================ the ledger

NOTIFICATIONS = "notifications"
KEYS = "idempotencykeys"
MESSAGE_IDS = "messageids"
WINDOW = "window"
FOLLOWUPS = "followups"
PARKED = "parked"
PARKED_EVENTS = "parkedevents"
AUDIT = "audit"
_TABLES = (NOTIFICATIONS, KEYS, MESSAGE_IDS, WINDOW, FOLLOWUPS, PARKED, PARKED_EVENTS, AUDIT)

AWAITING = "awaiting"
UNQUEUED = "unqueued"
DEAD_LETTERS = "deadletters"
OUTBOX = "outbox"

# A string property holds 64 KiB of UTF-16: 32,768 code units. ASCII is one unit a character;
# anything else is at most two.
_ASCII_PART = 32_000
_TEXT_PART = 16_000
# Room for the document in one entity (1 MiB, counted in UTF-16 like the strings), leaving the
# rest for the other properties.
_DOC_BUDGET = 960 * 1024

# An index entry is stale, and readers delete it, once the notification it names was written this
# much later than the entry: no writer that read the notification before writing the entry can
# still succeed. The margin covers clock differences between storage partition servers.
_STALE_MARGIN = timedelta(minutes=1)
# An index entry whose notification does not exist, this long before the reader's cutoff, was left
# by an ``add`` that crashed before creating the notification.
_ORPHAN_AGE = timedelta(minutes=10)
_ADD_TRIES = 5


def _hour(value: datetime) -> str:
    utc = value.astimezone(timezone.utc)
    return f"{utc.year:04d}{utc.month:02d}{utc.day:02d}{utc.hour:02d}"


_LAST_MICROSECOND = 10**19 - 1


def _newest_first(value: datetime) -> str:
    """A RowKey prefix that sorts later times first (fixed width, so lexical order holds)."""
    micros = round(value.timestamp() * 1_000_000)
    return f"{_LAST_MICROSECOND - micros:019d}"


def _since(value: datetime) -> str:
    """The RowKey upper bound for entries at or after ``value`` (``}`` sorts after the ``|``
    that follows the time in every key)."""
    return _newest_first(value) + "}"


# Notifications read together within this much of each other's making (in one partition) are
# read with one range scan rather than a point read each; see the module docstring.
_RANGE_GAP_MS = 1000
# ... and no range spans more than this, so that a scan never reads more than a few seconds of a
# partition's notifications, however many wanted ids chain together a second apart.
_RANGE_SPAN_MS = 5000
_PAGE = 1000  # entities a query returns a page


_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _id_millis(notification_id: str) -> int | None:
    """The Unix millisecond a notification id was made in, when it is a UUIDv7 in canonical
    (lower-case) form, so that its order as a RowKey is its time order; else None."""
    if not _UUID7.fullmatch(notification_id):
        return None
    return int(notification_id[:8] + notification_id[9:13], 16)


def _address(notification_id: str) -> tuple[str, str]:
    """PartitionKey and RowKey of a notification: for a UUIDv7 id, the hour it was made in and its
    last hex digit (one of 16 shards), and the id; for any other id, the id and an empty RowKey
    (the layout before ids were time-ordered, still read and written for what it holds)."""
    millis = _id_millis(notification_id)
    if millis is None:
        return encode_key(notification_id), ""
    made = datetime.fromtimestamp(millis / 1000, timezone.utc)
    return f"{_hour(made)}-{notification_id[-1]}", notification_id


def _address_of_encoded(encoded_id: str) -> tuple[str, str]:
    """``_address`` from an id as index entries carry it (``encode_key(id)``, which leaves a UUID
    as it is)."""
    if _id_millis(encoded_id) is not None:
        return _address(encoded_id)
    return encoded_id, ""


def _encoded_id(entity: dict[str, Any]) -> str:
    """``encode_key(id)`` of a notification entity, from its keys."""
    return entity["RowKey"] or entity["PartitionKey"]


def _key_hash(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def _pack(doc: str) -> dict[str, Any]:
    """The document as ``doc0..docN`` string properties, compressed only if it would not fit."""
    encoding = None
    if doc.isascii():
        size = 2 * len(doc)
    else:
        size = len(doc.encode("utf-16-le"))
    if size > _DOC_BUDGET:
        doc = base64.b64encode(zlib.compress(doc.encode(), 6)).decode("ascii")
        encoding = "zlib"
        if 2 * len(doc) > _DOC_BUDGET:
            raise ValueError(f"the notification's document ({size} bytes) does not fit in one table entity")
    step = _ASCII_PART if doc.isascii() else _TEXT_PART
    parts = [doc[start : start + step] for start in range(0, len(doc), step)] or [""]
    props: dict[str, Any] = {f"doc{i}": part for i, part in enumerate(parts)}
    props["doc_parts"] = len(parts)
    if encoding:
        props["doc_encoding"] = encoding
    return props


def _unpack(entity: TableEntity) -> str:
    doc = "".join(entity[f"doc{i}"] for i in range(entity["doc_parts"]))
    if entity.get("doc_encoding") == "zlib":
        doc = zlib.decompress(base64.b64decode(doc)).decode()
    return doc


@dataclass(frozen=True)
class _Indexed:
    """What the index tables say about a notification, as computed from it or as recorded on its
    entity by the last save (so the next save knows which entries to move)."""

    created: str
    awaiting: str | None
    unqueued: bool
    message_ids: frozenset[str]
    #: When it was dead-lettered, while its status is dead_lettered.
    dead: str | None = None
    outbox: bool = False

    @classmethod
    def of(cls, n: Notification) -> _Indexed:
        waiting = [r.updated_at for r in n.recipients if r.status is RecipientStatus.SENT and r.updated_at]
        dead = n.dead_letter if n.status is NotificationStatus.DEAD_LETTERED else None
        return cls(
            created=to_text(n.created_at),
            awaiting=to_text(min(waiting)) if waiting else None,
            unqueued=n.queued_at is None,
            message_ids=frozenset(n.message_ids),
            dead=to_text(dead.at) if dead else None,
            outbox=bool(n.pending_status_events),
        )

    @classmethod
    def recorded(cls, entity: TableEntity) -> _Indexed:
        return cls(
            created=entity["created_at"],
            awaiting=entity.get("awaiting_since") or None,
            unqueued=bool(entity["unqueued"]),
            message_ids=frozenset(json.loads(entity["message_ids"])),
            dead=entity.get("dead_lettered_at") or None,
            outbox=bool(entity.get("outbox")),
        )

    def followups(self, encoded_id: str) -> dict[str, str]:
        """The ``followups`` entries this state needs: RowKey by partition."""
        entries = {}
        if self.awaiting:
            entries[AWAITING] = f"{self.awaiting}|{encoded_id}"
        if self.unqueued:
            entries[UNQUEUED] = f"{self.created}|{encoded_id}"
        if self.dead:
            entries[DEAD_LETTERS] = f"{_newest_first(from_text(self.dead))}|{encoded_id}"
        if self.outbox:
            entries[OUTBOX] = f"{self.created}|{encoded_id}"
        return entries


_INDEX_COLUMNS = [
    "version", "created_at", "awaiting_since", "unqueued", "message_ids", "idempotency_hash", "dead_lettered_at", "outbox",
]
_REMEMBERED = 4096  # notifications whose last read or write ``save`` can trust without a read


@dataclass(frozen=True)
class _Seen:
    """A notification's entity as this adapter last read or wrote it."""

    version: int
    etag: str
    indexed: _Indexed


class _SeenEntities:
    """The version, ETag and index columns of recently read or written notifications, so that a
    read-modify-save costs one read and one write instead of two reads: ``save`` writes on the
    remembered ETag, and a stale memory is a 412 like any lost race (the caller re-reads)."""

    def __init__(self, size: int = _REMEMBERED) -> None:
        self._entries: OrderedDict[str, _Seen] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def remember(self, notification_id: str, seen: _Seen) -> None:
        with self._lock:
            self._entries[notification_id] = seen
            self._entries.move_to_end(notification_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def at_version(self, notification_id: str, version: int) -> _Seen | None:
        with self._lock:
            seen = self._entries.get(notification_id)
        return seen if seen is not None and seen.version == version else None

    def forget(self, notification_id: str) -> None:
        with self._lock:
            self._entries.pop(notification_id, None)


class TableLedger:
    """The ``Ledger`` port over Azure Table Storage; see the module docstring for the layout."""

    def __init__(
        self, service: TableServiceClient, *, prefix: str = "notify", concurrency: int = DEFAULT_CONCURRENCY
    ) -> None:
        self._store = TableStore(service, prefix, _TABLES, concurrency=concurrency)
        self._seen = _SeenEntities()

    # ------------------------------------------------------------------ entities

    @staticmethod
    def _entity(n: Notification, version: int) -> dict[str, Any]:
        indexed = _Indexed.of(n)
        pk, rk = _address(n.id)
        entity = {
            "PartitionKey": pk,
            "RowKey": rk,
            "version": version,
            "channel": n.channel.value,
            "status": n.status.value,
            "created_at": indexed.created,
            "awaiting_since": indexed.awaiting or "",
            "dead_lettered_at": indexed.dead or "",
            "unqueued": indexed.unqueued,
            "reached_acs": n.reached_acs,
            "message_ids": json.dumps(sorted(indexed.message_ids)),
            "outbox": indexed.outbox,
            **_pack(n.model_dump_json(exclude={"version"})),
        }
        if n.idempotency_key:
            entity["idempotency_hash"] = _key_hash(n.idempotency_key)
        return entity

    @staticmethod
    def _load(entity: TableEntity) -> Notification:
        notification = Notification.model_validate_json(_unpack(entity))
        notification.version = entity["version"]
        return notification

    @staticmethod
    def _window_entry(n: Notification) -> dict[str, Any]:
        return {
            "PartitionKey": _hour(n.created_at),
            "RowKey": f"{to_text(n.created_at)}|{encode_key(n.id)}",
            "channel": n.channel.value,
            "status": n.status.value,
            "reached_acs": n.reached_acs,
        }

    @staticmethod
    def _window_entry_of(entity: dict[str, Any]) -> dict[str, Any]:
        """The window entry for a notification entity as written, from its columns alone."""
        return {
            "PartitionKey": _hour(from_text(entity["created_at"])),
            "RowKey": f"{entity['created_at']}|{_encoded_id(entity)}",
            "channel": entity["channel"],
            "status": entity["status"],
            "reached_acs": entity["reached_acs"],
        }

    def _write_ahead(self, items: list[tuple[Notification, _Indexed | None]]) -> None:
        """Entries that make these notifications findable in their new state, before the write."""
        followups, message_ids = [], []
        for n, old in items:
            new = _Indexed.of(n)
            previous = old.followups(encode_key(n.id)) if old else {}
            for partition, row in new.followups(encode_key(n.id)).items():
                if previous.get(partition) != row:
                    entry = {"PartitionKey": partition, "RowKey": row, "id": n.id}
                    if partition == DEAD_LETTERS and n.dead_letter is not None:
                        entry |= {"channel": n.channel.value, "reason": n.dead_letter.reason}
                    followups.append(entry)
            known = old.message_ids if old else frozenset()
            message_ids += [
                {"PartitionKey": encode_key(mid), "RowKey": "", "message_id": mid, "notification_id": n.id}
                for mid in sorted(new.message_ids - known)
            ]
        if followups:
            self._store.upsert_many(FOLLOWUPS, followups)
        self._store.map(lambda e: self._store.upsert(MESSAGE_IDS, e), message_ids)

    def _write_behind(self, items: list[tuple[Notification, _Indexed | None]]) -> None:
        """After the write: drop entries the new state no longer has, record the window entry."""
        stale = []
        for n, old in items:
            if old is None:
                continue
            current = _Indexed.of(n).followups(encode_key(n.id))
            stale += [(p, row) for p, row in old.followups(encode_key(n.id)).items() if current.get(p) != row]
        if stale:
            self._store.delete_many(FOLLOWUPS, stale)
        self._store.upsert_many(WINDOW, [self._window_entry(n) for n, _ in items])

    # ------------------------------------------------------------------ add and get

    def add_many(self, notifications: list[Notification]) -> list[Notification]:
        # Notifications without an idempotency key have nothing to claim: those made together are
        # written together, a transaction a shard (a batch's share the hour's 16 partitions).
        plain = [n for n in notifications if not n.idempotency_key]
        if len(plain) > 1:
            self._add_together(plain)
        together = {id(n) for n in plain} if len(plain) > 1 else set()
        return [n if id(n) in together else self.add(n) for n in notifications]

    def _add_together(self, notifications: list[Notification]) -> None:
        """``add`` for notifications without idempotency keys, each step for all at once."""
        self._write_ahead([(n, None) for n in notifications])
        created = self._store.create_each(NOTIFICATIONS, [self._entity(n, 1) for n in notifications])
        stored = [n for n, ok in zip(notifications, created) if ok]
        self._write_behind([(n, None) for n in stored])
        for n in stored:
            n.version = 1
        if len(stored) < len(notifications):
            raise ConcurrencyConflict(next(n.id for n, ok in zip(notifications, created) if not ok))

    def add(self, notification: Notification) -> Notification:
        for _ in range(_ADD_TRIES):
            if notification.idempotency_key:
                holder = self._claim_key(notification)
                if holder is not None:
                    return holder
            self._write_ahead([(notification, None)])
            if not self._store.create(NOTIFICATIONS, self._entity(notification, 1)):
                raise ConcurrencyConflict(notification.id)
            if notification.idempotency_key and not self._holds_key(notification):
                # Another add took the key over while ours was in flight (it found no holder):
                # one key, one notification, so ours goes.
                self._delete([(encode_key(notification.id), _Indexed.of(notification))])
                continue
            self._write_behind([(notification, None)])
            notification.version = 1
            return notification
        raise ConcurrencyConflict(notification.id)

    def _claim_key(self, n: Notification) -> Notification | None:
        """Claim the idempotency key for ``n``: None once ``n`` holds it, else the notification
        that does."""
        key = _key_hash(n.idempotency_key)
        claim = {"PartitionKey": key, "RowKey": "", "notification_id": n.id}
        for _ in range(_ADD_TRIES):
            if self._store.create(KEYS, claim):
                return None
            current = self._store.get(KEYS, key, "")
            if current is None:
                continue  # purged just now
            if current["notification_id"] == n.id:
                return None
            for pause in (0.0, 0.05, 0.1, 0.2):
                # The holder may be an add that is creating its notification right now.
                time.sleep(pause)
                holder = self.get(current["notification_id"])
                if holder is not None:
                    return holder
            log.warning("taking over idempotency key %s from notification %s, which was never stored",
                        key[:12], current["notification_id"])
            if self._store.replace_if(KEYS, claim, current.metadata["etag"]):
                return None
        raise ConcurrencyConflict(n.id)

    def _holds_key(self, n: Notification) -> bool:
        current = self._store.get(KEYS, _key_hash(n.idempotency_key), "")
        return current is not None and current["notification_id"] == n.id

    def get(self, notification_id: str) -> Notification | None:
        entity = self._store.get(NOTIFICATIONS, *_address(notification_id))
        return self._loaded(entity) if entity is not None else None

    def _loaded(self, entity: TableEntity) -> Notification:
        notification = self._load(entity)
        self._seen.remember(notification.id, _Seen(entity["version"], entity.metadata["etag"], _Indexed.recorded(entity)))
        return notification

    def _get_many(self, notification_ids: Iterable[str]) -> dict[str, Notification]:
        entities = self._read_many([_address(nid) for nid in notification_ids])
        return {n.id: n for n in (self._loaded(e) for e in entities.values())}

    def _read_many(
        self, addresses: Iterable[tuple[str, str]], select: list[str] | None = None
    ) -> dict[tuple[str, str], TableEntity]:
        """The notification entities at these addresses that exist, by address. Ids made within
        ``_RANGE_GAP_MS`` of each other in one partition (and within ``_RANGE_SPAN_MS`` of the
        first) are read with one range scan (the entities between them come along and are
        dropped); the rest with a point read each."""
        by_partition: dict[str, list[str]] = {}
        for pk, rk in set(addresses):
            by_partition.setdefault(pk, []).append(rk)
        reads: list[tuple[str, list[str]]] = []
        for pk, row_keys in by_partition.items():
            if "" in row_keys:  # an id of the older layout: its partition is its own
                reads.append((pk, [""]))
                row_keys.remove("")
                if not row_keys:
                    continue
            row_keys.sort()
            run = [row_keys[0]]
            for rk in row_keys[1:]:
                made = _id_millis(rk)
                if (len(run) == _PAGE or made - _id_millis(run[-1]) > _RANGE_GAP_MS
                        or made - _id_millis(run[0]) > _RANGE_SPAN_MS):
                    reads.append((pk, run))
                    run = []
                run.append(rk)
            reads.append((pk, run))
        columns = [*select, "RowKey"] if select else None

        def read(job: tuple[str, list[str]]) -> list[tuple[tuple[str, str], TableEntity]]:
            pk, row_keys = job
            if len(row_keys) == 1:
                entity = self._store.get(NOTIFICATIONS, pk, row_keys[0], select=select)
                return [((pk, row_keys[0]), entity)] if entity is not None else []
            wanted = set(row_keys)
            rows = self._store.query(
                NOTIFICATIONS, "PartitionKey eq @pk and RowKey ge @first and RowKey le @last",
                {"pk": pk, "first": row_keys[0], "last": row_keys[-1]}, select=columns, page_size=_PAGE,
            )
            return [((pk, e["RowKey"]), e) for e in rows if e["RowKey"] in wanted]

        return {address: entity for found in self._store.map(read, reads) for address, entity in found}

    # ------------------------------------------------------------------ optimistic writes

    def save(self, notification: Notification) -> None:
        if self.save_many([notification]):
            raise ConcurrencyConflict(notification.id)

    def mark_queued(self, notifications: list[Notification], at: datetime) -> list[Notification]:
        # No cheaper write here: the document is split over properties (compressed when large) and
        # the mark also deletes the notification's "unqueued" follow-up entry, which a save manages.
        for n in notifications:
            n.mark_queued(at)
        return self.save_many(notifications)

    def save_many(self, notifications: list[Notification]) -> list[Notification]:
        if not notifications:
            return []
        remembered = [self._seen.at_version(n.id, n.version) for n in notifications]
        read = self._read_many(
            [_address(n.id) for n, seen in zip(notifications, remembered) if seen is None], select=_INDEX_COLUMNS
        )

        def current(n: Notification, seen: _Seen | None) -> _Seen | None:
            if seen is not None:
                return seen
            entity = read.get(_address(n.id))
            if entity is None:
                return None
            return _Seen(entity["version"], entity.metadata["etag"], _Indexed.recorded(entity))

        lost: list[Notification] = []
        candidates: list[tuple[Notification, _Seen]] = []
        for n, seen in zip(notifications, map(current, notifications, remembered)):
            if seen is None or seen.version != n.version:
                lost.append(n)
            else:
                candidates.append((n, seen))
        self._write_ahead([(n, seen.indexed) for n, seen in candidates])
        written = self._store.replace_many_if(
            NOTIFICATIONS, [(self._entity(n, n.version + 1), seen.etag) for n, seen in candidates]
        )
        saved = []
        for (n, seen), etag in zip(candidates, written):
            if etag is not None:
                saved.append((n, seen.indexed))
                self._seen.remember(n.id, _Seen(n.version + 1, etag, _Indexed.of(n)))
            else:
                self._seen.forget(n.id)
                lost.append(n)
        self._write_behind(saved)
        for n, _ in saved:
            n.version += 1
        lost_ids = {id(n) for n in lost}
        return [n for n in notifications if id(n) in lost_ids]

    # ------------------------------------------------------------------ message ids

    def find_by_message_ids(self, message_ids: Iterable[str]) -> dict[str, Notification]:
        wanted = sorted(set(message_ids))
        # An email's message id is its operation id, which is the notification id: one point
        # read finds the owner, where the index costs a second round trip. SMS ids (and anything
        # not owned that way) go through the index.
        loaded = self._get_many(mid for mid in wanted if _is_uuid(mid))
        found = {mid: n for mid, n in loaded.items() if mid in n.message_ids}
        wanted = [mid for mid in wanted if mid not in found]
        return found | self._find_through_index(wanted)

    def _find_through_index(self, wanted: list[str]) -> dict[str, Notification]:
        owners = self._store.map(
            lambda mid: self._store.get(MESSAGE_IDS, encode_key(mid), "", select=["notification_id"]), wanted
        )
        owner_of = {mid: e["notification_id"] for mid, e in zip(wanted, owners) if e is not None}
        loaded = self._get_many(set(owner_of.values()))
        # A mapping written ahead of a save that then lost its race names a notification that
        # does not have the message id: not an owner.
        return {
            mid: loaded[nid]
            for mid, nid in owner_of.items()
            if nid in loaded and mid in loaded[nid].message_ids
        }

    # ------------------------------------------------------------------ parked reports

    def park_reports(self, reports: Iterable[DeliveryReport], at: datetime) -> None:
        unique = {r.event_id: r for r in reversed(list(reports))}

        def park(report: DeliveryReport) -> None:
            # The report first: the first parking wins (``parked_at`` included), and the lookup
            # by event id is (re)written whatever happened before.
            self._store.create(PARKED, {
                "PartitionKey": encode_key(report.message_id),
                "RowKey": encode_key(report.event_id),
                "parked_at": to_text(at),
                "report": report.model_dump_json(),
            })
            self._store.upsert(PARKED_EVENTS, {
                "PartitionKey": encode_key(report.event_id),
                "RowKey": "",
                "message_id": report.message_id,
            })

        self._store.map(park, list(unique.values()))

    @staticmethod
    def _by_age(entities: Iterable[TableEntity]) -> list[TableEntity]:
        return sorted(entities, key=lambda e: e["parked_at"])

    def parked_reports_for(self, message_ids: Iterable[str]) -> list[DeliveryReport]:
        wanted = sorted(set(message_ids))
        partitions = self._store.map(
            lambda mid: list(self._store.query(PARKED, "PartitionKey eq @pk", {"pk": encode_key(mid)})), wanted
        )
        return [DeliveryReport.model_validate_json(e["report"]) for e in self._by_age(e for p in partitions for e in p)]

    def claimable_parked_reports(self, limit: int) -> list[DeliveryReport]:
        # Parked reports are few and short-lived (claimed within a reconciliation, or expired after
        # a day), so they are scanned; ownership is then checked a chunk of message ids at a time.
        parked = self._by_age(self._store.scan(PARKED, select=["parked_at", "report"]))
        claimable: list[DeliveryReport] = []
        checked: dict[str, bool] = {}
        position = 0
        while position < len(parked) and len(claimable) < limit:
            chunk = parked[position : position + max(limit, 50)]
            position += len(chunk)
            reports = [DeliveryReport.model_validate_json(e["report"]) for e in chunk]
            unknown = {r.message_id for r in reports} - checked.keys()
            owned = self.find_by_message_ids(unknown)
            checked.update({mid: mid in owned for mid in unknown})
            claimable += [r for r in reports if checked[r.message_id]]
        return claimable[:limit]

    def discard_parked_reports(self, event_ids: Iterable[str]) -> None:
        def discard(event_id: str) -> None:
            lookup = self._store.get(PARKED_EVENTS, encode_key(event_id), "")
            if lookup is None:
                return
            self._store.delete(PARKED, encode_key(lookup["message_id"]), encode_key(event_id))
            self._store.delete(PARKED_EVENTS, encode_key(event_id), "")

        self._store.map(discard, sorted(set(event_ids)))

    def expire_parked_reports(self, parked_before: datetime) -> int:
        old = list(self._store.query(
            PARKED, "parked_at lt @cutoff", {"cutoff": to_text(parked_before)}, select=["PartitionKey", "RowKey"]
        ))
        self._store.delete_many(PARKED, [(e["PartitionKey"], e["RowKey"]) for e in old])
        self._store.map(lambda e: self._store.delete(PARKED_EVENTS, e["RowKey"], ""), old)
        return len(old)

    # ------------------------------------------------------------------ reconciliation

    def status_counts(
        self, *, start: datetime, end: datetime, channel: Channel | None = None
    ) -> dict[tuple[Channel, NotificationStatus, bool], int]:
        if end <= start:
            return {}
        hours = []
        hour = start.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        while hour < end:
            hours.append(_hour(hour))
            hour += timedelta(hours=1)
        query_filter = "PartitionKey eq @pk and RowKey ge @start and RowKey lt @end"
        parameters: dict[str, Any] = {"start": to_text(start), "end": to_text(end)}
        if channel is not None:
            query_filter += " and channel eq @channel"
            parameters["channel"] = channel.value

        def count(partition: str) -> list[tuple[str, str, bool]]:
            rows = self._store.query(
                WINDOW, query_filter, parameters | {"pk": partition}, select=["channel", "status", "reached_acs"],
                page_size=1000,
            )
            return [(e["channel"], e["status"], bool(e["reached_acs"])) for e in rows]

        counts: dict[tuple[Channel, NotificationStatus, bool], int] = {}
        for rows in self._store.map(count, hours):
            for ch, st, acs in rows:
                group = (Channel(ch), NotificationStatus(st), acs)
                counts[group] = counts.get(group, 0) + 1
        return counts

    def awaiting_reports(self, *, sent_before: datetime, limit: int) -> list[Notification]:
        def applies(n: Notification) -> bool:
            return any(
                r.status is RecipientStatus.SENT and r.updated_at and r.updated_at <= sent_before for r in n.recipients
            )

        return self._followups(AWAITING, sent_before, limit, applies)

    def unqueued(self, *, accepted_before: datetime, limit: int) -> list[Notification]:
        def applies(n: Notification) -> bool:
            return n.queued_at is None and n.created_at <= accepted_before

        return self._followups(UNQUEUED, accepted_before, limit, applies)

    def _followups(
        self, partition: str, cutoff: datetime, limit: int, applies: Callable[[Notification], bool]
    ) -> list[Notification]:
        """Notifications named by the ``partition`` entries at or before ``cutoff``, oldest first,
        checked against the notification itself (see the module docstring)."""
        if limit < 1:
            return []
        entries = self._store.query(
            FOLLOWUPS, "PartitionKey eq @pk and RowKey lt @end",
            {"pk": partition, "end": to_text(cutoff + timedelta(microseconds=1))},
            page_size=min(max(limit, 10), 1000),
        )
        def judge(entry: TableEntity, entity: TableEntity | None, n: Notification | None) -> tuple[bool, bool]:
            return n is not None and applies(n), self._is_stale(partition, entry, n, entity, cutoff)

        return self._named_by(entries, limit, judge)

    def _named_by(
        self,
        entries: Iterator[TableEntity],
        limit: int,
        judge: Callable[[TableEntity, TableEntity | None, Notification | None], tuple[bool, bool]],
    ) -> list[Notification]:
        """Up to ``limit`` notifications named by index ``entries``, in their order: each entry's
        notification is read and ``judge`` says whether the entry holds for it (keep it) and
        whether the entry is provably stale (delete it, see the module docstring)."""
        found: dict[str, Notification] = {}
        stale: list[TableEntity] = []
        while len(found) < limit:
            page = [e for _, e in zip(range(limit - len(found)), entries)]
            if not page:
                break
            read = self._read_many(_address(e["id"]) for e in page)
            for entry in page:
                entity = read.get(_address(entry["id"]))
                n = self._load(entity) if entity is not None else None
                keep, dead_entry = judge(entry, entity, n)
                if keep:
                    found.setdefault(n.id, n)
                if dead_entry:
                    stale.append(entry)
        if stale:
            self._store.map(
                lambda e: self._store.delete(FOLLOWUPS, e["PartitionKey"], e["RowKey"], e.metadata["etag"]), stale
            )
        return list(found.values())[:limit]

    @staticmethod
    def _is_stale(partition: str, entry: TableEntity, n: Notification | None, entity: TableEntity | None,
                  cutoff: datetime) -> bool:
        if n is None:
            return from_text(entry["RowKey"].split("|", 1)[0]) < cutoff - _ORPHAN_AGE
        if _Indexed.of(n).followups(encode_key(n.id)).get(partition) == entry["RowKey"]:
            return False
        written, noted = entity.metadata.get("timestamp"), entry.metadata.get("timestamp")
        return written is not None and noted is not None and written - noted > _STALE_MARGIN

    # ------------------------------------------------------------------ operators

    def dead_lettered(
        self,
        *,
        channel: Channel | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Notification]:
        if limit < 1:
            return []
        query_filter = "PartitionKey eq @pk"
        parameters: dict[str, Any] = {"pk": DEAD_LETTERS}
        if since is not None:
            query_filter += " and RowKey lt @end"
            parameters["end"] = _since(since)
        if channel is not None:
            query_filter += " and channel eq @channel"
            parameters["channel"] = channel.value
        if reason is not None:
            query_filter += " and reason eq @reason"
            parameters["reason"] = reason
        entries = self._store.query(FOLLOWUPS, query_filter, parameters, page_size=min(max(limit, 10), 1000))

        def judge(entry: TableEntity, entity: TableEntity | None, n: Notification | None) -> tuple[bool, bool]:
            current = _Indexed.of(n).followups(encode_key(n.id)).get(DEAD_LETTERS) if n else None
            if current == entry["RowKey"]:
                return True, False
            return False, self._is_stale_dead_letter(entry, entity)

        return self._named_by(entries, limit, judge)

    @staticmethod
    def _is_stale_dead_letter(entry: TableEntity, entity: TableEntity | None) -> bool:
        """An entry that names a notification no longer dead-lettered at that time: stale once the
        notification was written well after the entry, or (gone) once the entry is old."""
        noted = entry.metadata.get("timestamp")
        if noted is None:
            return False
        if entity is None:
            return datetime.now(timezone.utc) - noted > _ORPHAN_AGE
        written = entity.metadata.get("timestamp")
        return written is not None and written - noted > _STALE_MARGIN

    def record_audit(self, entry: AuditEntry) -> None:
        self._store.upsert(AUDIT, {
            "PartitionKey": AUDIT,
            "RowKey": f"{_newest_first(entry.at)}|{encode_key(entry.id)}",
            "at": to_text(entry.at),
            **_pack(entry.model_dump_json()),
        })

    def audit_entries(self, *, since: datetime | None = None, limit: int = 100) -> list[AuditEntry]:
        if limit < 1:
            return []
        query_filter, parameters = "PartitionKey eq @pk", {"pk": AUDIT}
        if since is not None:
            query_filter += " and RowKey lt @end"
            parameters["end"] = _since(since)
        rows = self._store.query(AUDIT, query_filter, parameters, page_size=min(limit, 1000))
        return [AuditEntry.model_validate_json(_unpack(e)) for _, e in zip(range(limit), rows)]
    # ------------------------------------------------------------------ status event outbox

    def pending_status_events(self, limit: int, *, exclude: Iterable[str] = ()) -> list[StatusEvent]:
        if limit < 1:
            return []
        skipped = set(exclude)
        # Each entry names a notification with at least one event, so ``limit`` entries suffice;
        # entries of excluded notifications are passed over without reading their notification.
        entries = list(islice(
            (e for e in self._store.query(FOLLOWUPS, "PartitionKey eq @pk", {"pk": OUTBOX},
                                          page_size=min(max(limit, 10), 1000))
             if e["id"] not in skipped),
            limit,
        ))
        read = self._read_many(_address(e["id"]) for e in entries)
        groups: list[list[StatusEvent]] = []
        settled: list[tuple[TableEntity, TableEntity | None]] = []
        for entry in entries:
            entity = read.get(_address(entry["id"]))
            events = self._load(entity).pending_status_events if entity is not None else []
            if events:
                groups.append(sorted(events, key=lambda e: e.sequence))
            else:
                settled.append((entry, entity))
        self._settle_outbox(self._store.map(lambda item: self._touch_settled(*item), settled))
        groups.sort(key=lambda g: (g[0].at, g[0].notification_id))
        return [e for g in groups for e in g][:limit]

    def _touch_settled(self, entry: TableEntity, entity: TableEntity | None) -> tuple[TableEntity, dict] | None:
        """For an entry whose notification has no events to relay (see the module docstring): the
        entry and the notification as rewritten, or None when the entry stays for now."""
        if entity is None:
            noted = entry.metadata.get("timestamp")
            if noted is not None and datetime.now(timezone.utc) - noted > _ORPHAN_AGE:
                self._store.delete(FOLLOWUPS, entry["PartitionKey"], entry["RowKey"], entry.metadata["etag"])
            return None
        touched = dict(entity) | {"version": entity["version"] + 1, "outbox": False}
        etag = self._store.replace_if(NOTIFICATIONS, touched, entity.metadata["etag"])
        if not etag:
            return None
        self._seen.remember(entry["id"], _Seen(touched["version"], etag, _Indexed.recorded(touched)))
        return entry, touched

    def _settle_outbox(self, settled: Iterable[tuple[TableEntity, dict] | None]) -> None:
        """Mend the window entries of notifications whose outbox entries are done, then delete
        those entries (conditionally on the ETags read before the notifications)."""
        done = [item for item in settled if item is not None]
        if not done:
            return
        self._store.upsert_many(WINDOW, [self._window_entry_of(written) for _, written in done])
        self._store.map(
            lambda entry: self._store.delete(FOLLOWUPS, OUTBOX, entry["RowKey"], entry.metadata["etag"]),
            [entry for entry, _ in done],
        )

    def mark_status_events_published(self, events: Iterable[StatusEvent]) -> None:
        published: dict[str, set[str]] = {}
        for event in events:
            published.setdefault(event.notification_id, set()).add(event.id)
        self._settle_outbox(self._store.map(lambda item: self._remove_published(*item), list(published.items())))

    def _remove_published(self, notification_id: str, event_ids: set[str]) -> tuple[TableEntity, dict] | None:
        """Remove published events from the notification: the outbox entry and the notification as
        written when none is left, else None."""
        address = _address(notification_id)
        for _ in range(_ADD_TRIES):
            head = self._store.get(NOTIFICATIONS, *address, select=["created_at"])
            if head is None:
                return None
            # The entry before the notification: the order the module docstring relies on.
            entry = self._store.get(FOLLOWUPS, OUTBOX, f"{head['created_at']}|{encode_key(notification_id)}")
            entity = self._store.get(NOTIFICATIONS, *address)
            if entity is None:
                return None
            n = self._load(entity)
            remaining = [e for e in n.pending_status_events if e.id not in event_ids]
            if remaining and len(remaining) == len(n.pending_status_events):
                return None  # removed already
            n.pending_status_events = remaining
            written = self._entity(n, n.version + 1)
            etag = self._store.replace_if(NOTIFICATIONS, written, entity.metadata["etag"])
            if not etag:
                continue  # a writer came between: read again
            self._seen.remember(notification_id, _Seen(n.version + 1, etag, _Indexed.of(n)))
            return (entry, written) if not remaining and entry is not None else None
        log.warning("notification %s: published status events not removed after %d tries; they will be relayed again",
                    notification_id, _ADD_TRIES)
        return None

    # ------------------------------------------------------------------ retention

    def purge(self, *, accepted_before: datetime, limit: int) -> int:
        purged = 0
        if limit >= 1:
            window = self._store.query(
                WINDOW, "PartitionKey le @hour and RowKey lt @cutoff",
                {"hour": _hour(accepted_before), "cutoff": to_text(accepted_before)},
                select=["PartitionKey", "RowKey"], page_size=min(limit, 1000),
            )
            oldest = [e for _, e in zip(range(limit), window)]
            ids = [e["RowKey"].split("|", 1)[1] for e in oldest]
            read = self._read_many((_address_of_encoded(i) for i in ids), select=_INDEX_COLUMNS)
            existing = [(i, read[_address_of_encoded(i)]) for i in ids if _address_of_encoded(i) in read]
            keyed = [(pk, e) for pk, e in existing if e.get("idempotency_hash")]
            self._store.map(lambda item: self._release_key(*item), keyed)
            self._delete([(pk, _Indexed.recorded(e)) for pk, e in existing])
            # The window entries last: a purge that stops half-way finds the rest next time.
            self._store.delete_many(WINDOW, [(e["PartitionKey"], e["RowKey"]) for e in oldest])
            purged = len(existing)
        self.expire_parked_reports(accepted_before)
        return purged

    def _release_key(self, encoded_id: str, entity: TableEntity) -> None:
        holder = self._store.get(KEYS, entity["idempotency_hash"], "")
        if holder is not None and encode_key(holder["notification_id"]) == encoded_id:
            self._store.delete(KEYS, entity["idempotency_hash"], "", holder.metadata["etag"])

    def _delete(self, notifications: list[tuple[str, _Indexed]]) -> None:
        """Delete notifications (by encoded id) with their message ids and follow-up entries."""
        message_ids = [mid for _, indexed in notifications for mid in indexed.message_ids]
        self._store.map(lambda mid: self._store.delete(MESSAGE_IDS, encode_key(mid), ""), message_ids)
        self._store.delete_many(
            FOLLOWUPS, [item for pk, indexed in notifications for item in indexed.followups(pk).items()]
        )
        self._store.delete_many(NOTIFICATIONS, [_address_of_encoded(encoded) for encoded, _ in notifications])

    def close(self) -> None:
        self._store.close()
