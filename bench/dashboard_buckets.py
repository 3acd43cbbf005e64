"""The operator dashboard's figures on a million-row ledger: is one ``Ledger.status_counts`` call
per hour fast enough, or does the dashboard need a port method that groups by hour?

    .venv/bin/python bench/dashboard_buckets.py [--rows 1000000] [--window-rows 1000000] [--runs 10]

Setup (timed separately): one ``SqliteLedger`` file built as ``bench/reconciliation_scale.py``
builds its ledgers (bulk inserts of real notification documents, one per channel and status), with
``--window-rows`` of the ``--rows`` spread evenly over the dashboard's 24 hours and the rest over
the year before. The default puts all million rows in the day, the worst case for the dashboard:
a service sending 11.6 notifications a second around the clock.

Timed, with ``time.perf_counter``, ``--runs`` times each, alternating:

* ``dashboard_figures`` for 24 hours: 24 hourly ``status_counts`` calls plus one for the
  failure-rate window, and the summaries;
* one ``status_counts`` over the same 24 hours (a GROUP BY over the whole window), the cost a
  port method grouping by hour in one query could at best get down to.

The figure is the median of ``dashboard_figures``; the target is under one second (a person
waiting for a page). The ratio to the single query says what bucketing by calls costs on top.
The file (about 2 GiB for a million rows, under the temp dir; set TMPDIR to move it) is deleted
at the end.
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

from bench.reconciliation_scale import CHUNK, EMAIL_SHARE, HISTORY_MIX, WINDOW_MIX, template  # noqa: E402
from shared.adapters.sqlite_ledger import SqliteLedger  # noqa: E402
from shared.domain.commands import FailureRateThresholds  # noqa: E402
from shared.domain.model import Channel  # noqa: E402
from shared.service.dashboard import dashboard_figures  # noqa: E402
from tests.fakes import FakeClock  # noqa: E402

TARGET_SECONDS = 1.0
HOURS = 24
HISTORY = timedelta(days=365)
THRESHOLDS = FailureRateThresholds(warning=0.01, critical=0.02, window_minutes=60, min_sent=50)


def build(path: Path, rows: int, window_rows: int, window_start: float, seed: int) -> int:
    ledger = SqliteLedger(path)  # the adapter's own schema and indexes
    ledger.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-262144")
    templates = {(c, s): template(c, s) for c in Channel for s in set(HISTORY_MIX) | set(WINDOW_MIX)}
    rng = random.Random(seed)
    sql = (
        "INSERT INTO notifications (id, channel, status, created_at, updated_at, idempotency_key, queued,"
        " reached_acs, awaiting_since, version, doc) VALUES (?, ?, ?, ?, ?, NULL, 1, ?, ?, 1, ?)"
    )
    parts = [
        (rows - window_rows, HISTORY_MIX, window_start - HISTORY.total_seconds(), HISTORY.total_seconds()),
        (window_rows, WINDOW_MIX, window_start, HOURS * 3600.0),
    ]
    written = 0
    for count, mix, first, span in parts:
        step = span / max(count, 1)
        channels = rng.choices([Channel.EMAIL, Channel.SMS], weights=[EMAIL_SHARE, 1 - EMAIL_SHARE], k=count)
        statuses = rng.choices(list(mix), weights=list(mix.values()), k=count)
        batch: list[tuple] = []
        for i in range(count):
            created = first + (i + rng.random()) * step
            doc, awaiting, reached_acs = templates[channels[i], statuses[i]]
            h = f"{rng.getrandbits(128):032x}"
            nid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
            batch.append((nid, channels[i].value, statuses[i].value, created, created + 6.0, reached_acs,
                          created + awaiting if awaiting is not None else None, doc))
            if len(batch) >= CHUNK or i == count - 1:
                db.execute("BEGIN")
                db.executemany(sql, batch)
                db.execute("COMMIT")
                written += len(batch)
                batch.clear()
    db.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--window-rows", type=int, default=1_000_000, help="rows accepted in the dashboard's 24 hours")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not 0 < args.window_rows <= args.rows:
        parser.error("need 0 < --window-rows <= --rows")

    # The end of an hour, so the current hour holds as many rows as the others: the dashboard's
    # hours run from 13:00 the day before to 13:00.
    clock = FakeClock(datetime(2026, 11, 1, 12, 59, 59, tzinfo=timezone.utc))
    window_start = clock.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    needed = args.rows * 2_200
    if shutil.disk_usage(work).free < needed * 1.2:
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"need about {needed / 2**30:.1f} GiB free under {work.parent} (set TMPDIR)")
    try:
        path = work / "ledger.sqlite3"
        t0 = time.perf_counter()
        written = build(path, args.rows, args.window_rows, window_start.timestamp(), args.seed)
        build_seconds = time.perf_counter() - t0
        size = path.stat().st_size
        ledger = SqliteLedger(path)
        figures_times, single_times = [], []
        figures = None
        for _ in range(args.runs):
            t0 = time.perf_counter()
            figures = dashboard_figures(ledger=ledger, clock=clock, hours=HOURS, thresholds=THRESHOLDS)
            figures_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            single = ledger.status_counts(start=window_start, end=window_start + timedelta(hours=HOURS))
            single_times.append(time.perf_counter() - t0)
        shown = sum(figures["channels"][c.value]["totals"]["accepted"] for c in Channel)
        assert shown == sum(single.values()), (shown, sum(single.values()))
        ledger.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = statistics.median(figures_times)
    single_median = statistics.median(single_times)
    met = median < TARGET_SECONDS
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")
    print(f"build (not timed in the figure): {written:,} rows in {build_seconds:.1f} s, {size / 2**20:,.0f} MiB")
    print(f"window: {HOURS} hours from {window_start.isoformat()}, {shown:,} notifications in it")
    print(f"dashboard_figures ({HOURS} hourly status_counts + the failure-rate window): median of {args.runs} runs "
          f"{median * 1000:.0f} ms (min {min(figures_times) * 1000:.0f}, max {max(figures_times) * 1000:.0f})")
    print(f"one status_counts over the {HOURS} hours: median {single_median * 1000:.0f} ms; "
          f"ratio {median / single_median:.2f}")
    print(f"target: under {TARGET_SECONDS * 1000:.0f} ms: {'met' if met else 'NOT met'}")
    print(f"RESULT dashboard_figures_24h_ms {median * 1000:.0f} <{TARGET_SECONDS * 1000:.0f} {'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
