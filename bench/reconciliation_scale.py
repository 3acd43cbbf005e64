"""Reconciliation report cost against ledger size: the same one-hour window, holding the same
notifications, at the end of a small ledger's history and of a large one's, side by side in one run.

    .venv/bin/python bench/reconciliation_scale.py [--small 10000] [--large 1000000] [--window-rows 2000] [--runs 20]

Setup (timed separately, not part of the figure): two ``SqliteLedger`` files (the adapter creates the
schema and its indexes), filled by bulk ``executemany`` straight into ``notifications`` in
transactions of 50,000 rows, in acceptance order. Going through pydantic per row would take far too
long for a million rows, so each row's ``doc`` is one real notification document per
(channel, status), built through the domain model (accept, queue, attempt, sent, report...) and
serialised once with ``model_dump_json``; the columns are those the adapter writes (id, channel,
status, created_at as epoch seconds, updated_at, idempotency_key NULL, queued 1, awaiting_since set
only while a report is awaited, version 1, doc). A document's own id and times therefore do not
match its row's; the report reads only the indexed columns. Rows are about 70% email and 30% SMS. In each
ledger exactly ``--window-rows`` rows fall in the last hour (mostly delivered, some still awaiting a
report, a few failures); the rest are spread over the year before it with the statuses an old
history settles into (delivered, bounced, failed, suppressed, unconfirmed, dead-lettered).

Timed, with ``time.perf_counter``: ``reconciliation_report`` (which runs ``ledger.status_counts``, a
GROUP BY over the window) for that one-hour window on each ledger's own connection, ``--runs``
times, the two ledgers alternating. The figure is the median per ledger; the result is the ratio
large / small (target: under 3), i.e. whether the cost follows the window and not the history.
The query plan is printed to show which index serves it. The files (about 2 GiB for a million rows,
under the temp dir; set TMPDIR to move them) are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.adapters.sqlite_ledger import SqliteLedger  # noqa: E402
from shared.domain.errors import RecipientRefused  # noqa: E402
from shared.domain.model import Channel, DeliveryReport, Notification, NotificationStatus, Recipient  # noqa: E402
from shared.service.handlers import reconciliation_report  # noqa: E402

TARGET_RATIO = 3.0
CHUNK = 50_000
END = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)  # the window is [END - 1 h, END)
WINDOW = timedelta(hours=1)
HISTORY = timedelta(days=365)
EMAIL_SHARE = 0.7

# Status mixes (NotificationStatus -> weight): an old history has settled; the last hour has not.
HISTORY_MIX = {
    NotificationStatus.DELIVERED: 90,
    NotificationStatus.BOUNCED: 3,
    NotificationStatus.FAILED: 3,
    NotificationStatus.UNCONFIRMED: 2,
    NotificationStatus.SUPPRESSED: 1,
    NotificationStatus.DEAD_LETTERED: 1,
}
WINDOW_MIX = {
    NotificationStatus.DELIVERED: 75,
    NotificationStatus.SENT: 15,
    NotificationStatus.BOUNCED: 3,
    NotificationStatus.FAILED: 3,
    NotificationStatus.ACCEPTED: 2,
    NotificationStatus.SUPPRESSED: 1,
    NotificationStatus.DEAD_LETTERED: 1,
}
REPORT_FOR = {
    NotificationStatus.DELIVERED: ("Delivered", "No error."),
    NotificationStatus.BOUNCED: ("Bounced", "550 5.1.1 The email account that you tried to reach does not exist."),
    NotificationStatus.FAILED: ("Failed", "Message could not be delivered."),
    NotificationStatus.SUPPRESSED: ("Suppressed", "The recipient is on the suppression list."),
}


def template(channel: Channel, status: NotificationStatus) -> tuple[str, float | None, int]:
    """The document of one notification that went through the domain model to ``status``, the
    offset of its awaiting_since from created_at (seconds) if it still awaits a report, and
    whether it reached ACS."""
    t0 = END - timedelta(days=30)
    email = channel is Channel.EMAIL
    address = "jane@example.com" if email else "+14255551234"
    content = {"subject": "Your order has shipped", "text": "It is on its way."} if email else {"message": "Your code is 123456"}
    sender = "DoNotReply@notify.example.com" if email else "+18005550100"
    n = Notification.accept(
        channel=channel, sender=sender, recipients=[Recipient(address=address)], content=content, metadata={"app": "bench"}, at=t0
    )
    n.mark_queued(t0)
    at = t0 + timedelta(seconds=1)
    refused = RecipientRefused("The recipient is not valid.", status_code=400)
    if status is NotificationStatus.ACCEPTED:
        pass
    elif status is NotificationStatus.SUPPRESSED and not email:
        n.record_recipient_suppressed(at, address, "OnSuppressionList: Bounced")
    elif status is NotificationStatus.DEAD_LETTERED:
        # As dispatch does for a permanent error: straight to the dead letter, no retry recorded.
        n.start_attempt(at, lease_until=at + timedelta(seconds=90))
        n.mark_dead_lettered(at, refused.reason, refused.describe())
    elif status is NotificationStatus.FAILED and not email:
        n.start_attempt(at, lease_until=at + timedelta(seconds=90))
        n.finish_attempt()
        n.record_recipient_refused(at, address, refused)
    else:
        n.start_attempt(at, lease_until=at + timedelta(seconds=90))
        n.finish_attempt()
        message_id = n.email_operation_id if email else f"Outgoing_{n.id}"
        if email:
            n.record_all_sent(at, message_id)
        else:
            n.record_sent(at, address, message_id)
        report_at = at + timedelta(seconds=5)
        if status in REPORT_FOR:
            raw, detail = REPORT_FOR[status]
            n.apply_report(
                DeliveryReport(event_id="bench-event", channel=channel, message_id=message_id, recipient=address,
                               status=raw, detail=detail, occurred_at=report_at),
                report_at,
            )
        elif status is NotificationStatus.UNCONFIRMED:
            n.mark_unconfirmed(at + timedelta(days=2), at)
    assert n.status is status, (channel, status, n.status)
    awaiting = 1.0 if status is NotificationStatus.SENT else None
    return n.model_dump_json(exclude={"version"}), awaiting, int(n.reached_acs)


def build(path: Path, rows: int, window_rows: int, seed: str, templates: dict) -> int:
    """``rows`` rows, ``window_rows`` of them in the window; returns the rows written. The window's
    rows come from their own generator, so they are the same in every ledger built with ``seed``."""
    ledger = SqliteLedger(path)  # the adapter's own schema and indexes
    ledger.close()
    db = sqlite3.connect(path, isolation_level=None)
    # Bulk-load settings for this connection only; the ledger reopens the file in WAL mode.
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-262144")  # 256 MiB: random uuid4 keys touch the whole id index

    history_rows = rows - window_rows
    start = (END - WINDOW - HISTORY).timestamp()
    history_step = HISTORY.total_seconds() / max(history_rows, 1)
    window_start = (END - WINDOW).timestamp()
    window_step = WINDOW.total_seconds() / max(window_rows, 1)

    def plan(count: int, mix: dict, first: float, step: float, rng: random.Random):
        channels = rng.choices([Channel.EMAIL, Channel.SMS], weights=[EMAIL_SHARE, 1 - EMAIL_SHARE], k=count)
        statuses = rng.choices(list(mix), weights=list(mix.values()), k=count)
        for i in range(count):
            yield first + (i + rng.random()) * step, channels[i], statuses[i]

    sql = (
        "INSERT INTO notifications (id, channel, status, created_at, updated_at, idempotency_key, queued,"
        " reached_acs, awaiting_since, version, doc) VALUES (?, ?, ?, ?, ?, NULL, 1, ?, ?, 1, ?)"
    )
    written = 0
    batch: list[tuple] = []

    def flush() -> None:
        nonlocal written
        db.execute("BEGIN")
        db.executemany(sql, batch)
        db.execute("COMMIT")
        written += len(batch)
        batch.clear()

    history_rng, window_rng = random.Random(f"{seed}/history/{rows}"), random.Random(f"{seed}/window")
    for rng, part in (
        (history_rng, plan(history_rows, HISTORY_MIX, start, history_step, history_rng)),
        (window_rng, plan(window_rows, WINDOW_MIX, window_start, window_step, window_rng)),
    ):
        getrandbits = rng.getrandbits
        for created, channel, status in part:
            doc, awaiting, reached_acs = templates[channel, status]
            h = f"{getrandbits(128):032x}"
            nid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
            batch.append((nid, channel.value, status.value, created, created + 6.0, reached_acs,
                          created + awaiting if awaiting is not None else None, doc))
            if len(batch) >= CHUNK:
                flush()
    if batch:
        flush()
    db.close()
    return written


def timed_report(ledger: SqliteLedger, channel: Channel | None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    report = reconciliation_report(ledger=ledger, start=END - WINDOW, end=END, channel=channel)
    return time.perf_counter() - t0, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="rows in the small ledger")
    parser.add_argument("--large", type=int, default=1_000_000, help="rows in the large ledger")
    parser.add_argument("--window-rows", type=int, default=2_000, help="rows in the one-hour window, in both ledgers")
    parser.add_argument("--runs", type=int, default=20, help="timed reports per ledger (the median is over these)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not args.window_rows <= args.small <= args.large:
        parser.error("need --window-rows <= --small <= --large")

    templates = {(c, s): template(c, s) for c in Channel for s in set(HISTORY_MIX) | set(WINDOW_MIX)}
    work = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    # A row is ~1.4 KB of document; two fit in a 4 KiB page, so about 2.1 KB of disk per row.
    needed = (args.small + args.large) * 2_200
    free = shutil.disk_usage(work).free
    if free < needed * 1.2:
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"need about {needed / 2**30:.1f} GiB free under {work.parent}, have {free / 2**30:.1f} GiB (set TMPDIR)")
    try:
        built = {}
        for name, rows in (("small", args.small), ("large", args.large)):
            path = work / name / "ledger.sqlite3"
            path.parent.mkdir()
            t0 = time.perf_counter()
            written = build(path, rows, args.window_rows, str(args.seed), templates)
            built[name] = (path, written, time.perf_counter() - t0, path.stat().st_size)

        ledgers = {name: SqliteLedger(path) for name, (path, *_) in built.items()}
        plan = ledgers["large"]._connection().execute(
            "EXPLAIN QUERY PLAN SELECT channel, status, COUNT(*) FROM notifications"
            " WHERE created_at >= ? AND created_at < ? GROUP BY channel, status",
            ((END - WINDOW).timestamp(), END.timestamp()),
        ).fetchall()

        times: dict[tuple[str, str], list[float]] = {}
        reports: dict[tuple[str, str], dict] = {}
        for _ in range(args.runs):
            for label, channel in (("all channels", None), ("email only", Channel.EMAIL)):
                for name, ledger in ledgers.items():
                    elapsed, report = timed_report(ledger, channel)
                    times.setdefault((label, name), []).append(elapsed)
                    reports[label, name] = report
        for label in ("all channels", "email only"):
            assert reports[label, "small"]["total"] == reports[label, "large"]["total"], label
        assert reports["all channels", "large"]["total"]["accepted"] == args.window_rows
        for ledger in ledgers.values():
            ledger.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}, SQLite {sqlite3.sqlite_version}")
    for name, (_, written, seconds, size) in built.items():
        print(f"build (not timed in the figure): {name} ledger, {written:,} rows in {seconds:.1f} s "
              f"({written / seconds:,.0f} rows/s), {size / 2**20:,.0f} MiB")
    print(f"window: [{(END - WINDOW).isoformat()}, {END.isoformat()}), {args.window_rows:,} notifications in both ledgers")
    window = reports["all channels", "large"]["total"]
    print("window report (identical on both): " + ", ".join(f"{k} {v}" for k, v in window.items()))
    print("query plan: " + "; ".join(row[-1] for row in plan))
    for label in ("all channels", "email only"):
        small = statistics.median(times[label, "small"])
        large = statistics.median(times[label, "large"])
        ratio = large / small
        print(f"reconciliation_report, {label}: median of {args.runs} runs, "
              f"{args.small:,} rows {small * 1000:.2f} ms, {args.large:,} rows {large * 1000:.2f} ms, "
              f"ratio {ratio:.2f} (target: under {TARGET_RATIO:g}: {'met' if ratio < TARGET_RATIO else 'NOT met'})")
        if label == "all channels":
            print(f"RESULT reconciliation_1m_vs_10k_ratio {ratio:.2f} <{TARGET_RATIO:g} {'met' if ratio < TARGET_RATIO else 'missed'}")


if __name__ == "__main__":
    main()
