"""Delivery-report ingest on the embedded (SQLite) ledger: reports applied per second for batches of
Event Grid events, side by side with applying the same events one at a time, in one run.

    .venv/bin/python bench/report_ingest.py [--batches 5] [--batch-size 1000]

Setup (not timed): ``batches x batch-size`` email notifications, each with one recipient, accepted,
queued and sent (the same history the dispatcher leaves), in a ``SqliteLedger`` file; the file is
copied so both sides start from identical data, each with its own ``SqliteSuppressionList`` in the
same file (as ``bootstrap`` wires them). For each notification there is one
``Microsoft.Communication.EmailDeliveryReportReceived`` event in the Event Grid schema (``topic`` =
the ACS resource id, ``data.messageId`` = the notification id, which is the email operation id,
``data.recipient``, ``data.status`` Delivered / Bounced / Failed, about 80/10/10), serialised to JSON
as a webhook body.

Timed, per batch, with ``time.perf_counter``: the production path from the request body on, i.e.
``json.loads`` -> ``read_events`` -> ``apply_delivery_reports`` (one ``find_by_message_ids``, one
``save_many``, a suppression for each bounce). The baseline runs the same events on its own ledger
the naive way: each event parsed and applied through its own ``apply_delivery_reports`` call with a
one-event batch (its own read and its own write transaction). Batches of the two sides alternate.
The figure is the median, over the batches, of events per second; the result is the ratio, and
whether the batched path reaches the target of 5,000 events/s.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Callable, Iterator
import gc
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.adapters.sqlite_ledger import SqliteLedger  # noqa: E402
from shared.adapters.sqlite_suppressions import SqliteSuppressionList  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.domain.commands import ApplyDeliveryReports  # noqa: E402
from shared.domain.model import Channel, Notification, Recipient  # noqa: E402
from shared.entrypoints.eventgrid import read_events  # noqa: E402
from shared.service.handlers import apply_delivery_reports  # noqa: E402
from tests.fakes import FakeClock  # noqa: E402

RESOURCE = "/subscriptions/0/resourceGroups/bench/providers/Microsoft.Communication/communicationServices/bench"
SENDER = "DoNotReply@notify.example.com"
EMAIL_DELIVERY = "Microsoft.Communication.EmailDeliveryReportReceived"
# Raw ACS status -> (weight, deliveryStatusDetails.statusMessage)
STATUSES = {
    "Delivered": (0.8, "No error."),
    "Bounced": (0.1, "550 5.1.1 The email account that you tried to reach does not exist."),
    "Failed": (0.1, "Message could not be delivered."),
}


def time_ordered_id(at: datetime, rng: random.Random) -> str:
    """A UUIDv7 made at ``at`` from ``rng``, as ``new_notification_id`` makes one at the real
    time: the same run gives the same ids."""
    millis = int(at.timestamp() * 1000)
    # 48 bits of milliseconds, version 7, 12 random bits, the RFC 4122 variant, 62 random bits.
    value = (millis << 80) | (7 << 76) | (rng.getrandbits(12) << 64) | (2 << 62) | rng.getrandbits(62)
    return str(uuid.UUID(int=value))


def populate(ledger, count: int, clock: FakeClock, rng: random.Random) -> list[Notification]:
    """``count`` sent email notifications: accept + queue -> ``add``, then attempt + ``record_all_sent``
    -> ``save_many`` in chunks, as the dispatcher would have left them."""
    notifications = []
    for i in range(count):
        at = clock.now()
        n = Notification.accept(
            channel=Channel.EMAIL,
            sender=SENDER,
            recipients=[Recipient(address=f"user{i}@example.com")],
            content={"subject": "Your order has shipped", "text": f"Order {i} is on its way."},
            metadata={"app": "bench", "order": str(i)},
            at=at,
            notification_id=time_ordered_id(at, rng),
        )
        n.mark_queued(at)
        notifications.append(ledger.add(n))
        clock.advance(0.01)
    for start in range(0, count, 1000):
        chunk = notifications[start : start + 1000]
        for n in chunk:
            at = clock.now()
            n.start_attempt(at, lease_until=at + timedelta(seconds=90))
            n.finish_attempt()
            n.record_all_sent(at, n.email_operation_id)
        assert not ledger.save_many(chunk)
    return notifications


def event_for(n: Notification, rng: random.Random, at: str) -> dict:
    status = rng.choices(list(STATUSES), weights=[w for w, _ in STATUSES.values()])[0]
    recipient = n.recipients[0].address
    message_id = n.recipients[0].message_id
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "topic": RESOURCE,
        "subject": f"sender/{SENDER}/message/{message_id}",
        "eventType": EMAIL_DELIVERY,
        "eventTime": at,
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "data": {
            "sender": SENDER,
            "recipient": recipient,
            "messageId": message_id,
            "status": status,
            "deliveryStatusDetails": {"statusMessage": STATUSES[status][1]},
            "deliveryAttemptTimestamp": at,
        },
    }


def batched(body: bytes, ledger: SqliteLedger, suppressions: SqliteSuppressionList, clock: FakeClock) -> int:
    """Production path: one webhook body -> read_events -> one apply_delivery_reports."""
    parsed = read_events(json.loads(body), trusted_source=RESOURCE)
    summary = apply_delivery_reports(ApplyDeliveryReports(parsed.reports), ledger=ledger, suppressions=suppressions, clock=clock)
    return summary.applied


def one_at_a_time(bodies: list[bytes], ledger: SqliteLedger, suppressions: SqliteSuppressionList, clock: FakeClock) -> int:
    """Baseline: every event parsed and applied on its own (its own read, its own write)."""
    applied = 0
    for body in bodies:
        parsed = read_events(json.loads(body), trusted_source=RESOURCE)
        applied += apply_delivery_reports(
            ApplyDeliveryReports(parsed.reports), ledger=ledger, suppressions=suppressions, clock=clock
        ).applied
    return applied


TARGETS = {"sqlite": 5_000.0, "table": 1_000.0}
DEFAULT_TABLE_CONCURRENCY = Settings.model_fields["table_concurrency"].default


@contextmanager
def ledgers(backend: str, work: Path, concurrency: int = DEFAULT_TABLE_CONCURRENCY) -> Iterator[Callable[[str], tuple]]:
    """A factory of (ledger, suppression list) pairs, one per side, on the chosen backend; the
    Table ones built as ``bootstrap`` builds them, with ``concurrency`` requests in flight."""
    if backend == "sqlite":
        yield lambda side: (SqliteLedger(work / side / "ledger.sqlite3"), SqliteSuppressionList(work / side / "ledger.sqlite3"))
        return
    from shared.adapters.table_ledger import TableLedger
    from shared.adapters.table_suppressions import TableSuppressionList
    from shared.bootstrap import table_service_client
    from tests import azurite

    with azurite.table_endpoint(work) as connection_string:
        service = table_service_client(connection_string=connection_string, concurrency=concurrency)
        yield lambda side: (
            TableLedger(service, prefix=f"b{side[:4]}", concurrency=concurrency),
            TableSuppressionList(service, prefix=f"b{side[:4]}", concurrency=concurrency),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=5, help="batches of events (the median is over these)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch (one notification each)")
    parser.add_argument("--backend", choices=list(TARGETS), default="sqlite",
                        help="the embedded ledger, or Table Storage on Azurite (started from node_modules)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_TABLE_CONCURRENCY,
                        help="TABLE_CONCURRENCY of the Table adapters (default: the setting's default)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    target = TARGETS[args.backend]

    total = args.batches * args.batch_size
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        with ledgers(args.backend, work, args.concurrency) as make:
            started = time.perf_counter()
            sides = {}
            for side in ("baseline", "batched"):
                (work / side).mkdir()
                sides[side] = make(side)
                # The same seed on both sides: identical notifications and events.
                rng, clock = random.Random(args.seed), FakeClock()
                notifications = populate(sides[side][0], total, clock, rng)
            clock.advance(60)
            at = clock.now().isoformat().replace("+00:00", "Z")
            events = [event_for(n, rng, at) for n in notifications]
            batch_bodies = [
                json.dumps(events[b * args.batch_size : (b + 1) * args.batch_size]).encode() for b in range(args.batches)
            ]
            single_bodies = [
                [json.dumps([e]).encode() for e in events[b * args.batch_size : (b + 1) * args.batch_size]]
                for b in range(args.batches)
            ]
            # Keep only the request bodies (bytes, which the collector does not track): thousands of
            # live setup objects would make every full garbage collection during the timed part slower
            # than it is in a service process. The collector itself stays on, as in production.
            del notifications, events
            gc.collect()
            setup = time.perf_counter() - started

            rates: dict[str, list[float]] = {"baseline": [], "batched": []}
            for b in range(args.batches):
                ledger, suppressions = sides["baseline"]
                t0 = time.perf_counter()
                applied = one_at_a_time(single_bodies[b], ledger, suppressions, clock)
                rates["baseline"].append(args.batch_size / (time.perf_counter() - t0))
                assert applied == args.batch_size, f"baseline applied {applied} of {args.batch_size}"

                ledger, suppressions = sides["batched"]
                t0 = time.perf_counter()
                applied = batched(batch_bodies[b], ledger, suppressions, clock)
                rates["batched"].append(args.batch_size / (time.perf_counter() - t0))
                assert applied == args.batch_size, f"batched applied {applied} of {args.batch_size}"

            # Both sides must have ended in the same state.
            window = dict(start=clock.now() - timedelta(days=1), end=clock.now() + timedelta(days=1))
            counts = {side: ledger.status_counts(**window) for side, (ledger, _) in sides.items()}
            suppressed = {side: len(s.list(limit=total)) for side, (_, s) in sides.items()}
            assert counts["baseline"] == counts["batched"], counts
            assert suppressed["baseline"] == suppressed["batched"], suppressed
            for ledger, _ in sides.values():
                ledger.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mix = {str(s): c for (_, s, _), c in sorted(counts["batched"].items())}
    base = statistics.median(rates["baseline"])
    ours = statistics.median(rates["batched"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}, SQLite {sqlite3.sqlite_version}")
    print(f"setup (not timed): {total} sent email notifications, {args.batches} batches of {args.batch_size} events, {setup:.1f} s")
    print(f"outcome on both sides: {mix}, {suppressed['batched']} addresses suppressed")
    print(f"one at a time (one-event apply_delivery_reports per event): median {base:,.0f} events/s "
          f"(batches: {', '.join(f'{r:,.0f}' for r in rates['baseline'])})")
    print(f"batched (read_events + one apply_delivery_reports per {args.batch_size} events): median {ours:,.0f} events/s "
          f"(batches: {', '.join(f'{r:,.0f}' for r in rates['batched'])})")
    print(f"ratio: {ours / base:.1f}x")
    print(f"target ({args.backend}): at least {target:,.0f} events/s batched: {'met' if ours >= target else 'NOT met'}")
    print(f"RESULT report_ingest_{args.backend}_events_per_s {ours:.0f} >={target:.0f} {'met' if ours >= target else 'missed'}")


if __name__ == "__main__":
    main()
