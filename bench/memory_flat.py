"""Dispatcher resident memory over a long run: 50,000 email notifications sent through the local
worker, with this process's RSS sampled every 1,000 sends, to show that it stays flat.

    .venv/bin/python bench/memory_flat.py [--notifications 50000] [--sample-every 1000] [--warmup 5000] [--tracemalloc]

Setup (timed separately, not part of the figure): ``--notifications`` one-recipient email
notifications accepted through ``handlers.submit_notification`` (as ``bench/dispatch_throughput.py``
does) into the SQLite ledger and the embedded queue of a temp ``NOTIFY_DATA_DIR``. The setup
publishes through an ``EmbeddedQueue`` on the same file and queue *without* duplicate detection:
with it, every send first prunes ``queue_message_ids`` with a ``DELETE ... WHERE sent_at <= ?``
that no index serves, so accepting N messages within the 10-minute window costs O(N^2) and 50,000
would take far longer than the run itself (see ``bench/intake_latency.py``). The worker's own
queue is the one ``bootstrap`` builds, duplicate detection on; it only publishes for retries.

Measured: the ACS emulator runs in a subprocess (webhook off, so no delivery reports; no injected
latency) and ``shared.entrypoints.local.Worker`` runs in THIS process (``run_once`` in a loop, as
``Worker.run`` does, at the configured ``DISPATCH_CONCURRENCY``) until the queue is empty. Every
``--sample-every`` sends (completed messages, read from the queue's active count at most every
0.1 s) the RSS of this process is read from ``/proc/self/statm``. The baseline for "flat" is the
sample taken after ``--warmup`` sends itself (imports done, connections and thread pool up, caches
filled); the result is the growth from that sample to the last one, in percent (target: under
10 %). Also printed: the peak sample, sends per second, the samples as a sparkline and a table.
Every notification must end ``sent``. About 5 minutes on 2 cores for 50,000.

To tell where growth comes from, each sample also records the anonymous part of the RSS
(``RssAnon`` from ``/proc/self/status``) and SQLite's own heap (``sqlite3_memory_used`` of the
libsqlite3 Python is linked against), and at the end the RSS is read again after glibc's
``malloc_trim(0)``. ``--tracemalloc`` starts ``tracemalloc`` at the warm-up sample and, at the end
(after ``gc.collect()``), prints the allocation sites still alive that were made after warm-up; it
halves the send rate, so such a run's sends/s are not comparable. The dispatcher is
measured as the supervisor starts it, with ``shared.entrypoints.local.DISPATCHER_ENV``
(``MALLOC_ARENA_MAX=2``; the script re-executes itself with it); ``--glibc-default`` runs without it
and shows what glibc's per-thread malloc arenas (one per dispatch thread, up to 8 per core)
contribute: on the 2-core machine this was written on, the growth over 50,000 sends was 14-16 %
with the default and under 1 % with 2 arenas, while
``tracemalloc`` found under 2 MiB of live Python objects added, all in bounded caches.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.emulator import bench_settings, free_port, start_emulator  # noqa: E402

TARGET_GROWTH_PERCENT = 10.0
PAGE = os.sysconf("SC_PAGE_SIZE")
BLOCKS = "▁▂▃▄▅▆▇█"


def _sqlite_library():
    """The libsqlite3 that Python's sqlite3 module is linked against (the same loaded copy), for
    ``sqlite3_memory_used``: what SQLite's own allocator holds (page caches, schemas, statements)."""
    try:
        lib = ctypes.CDLL("libsqlite3.so.0")
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        return lib
    except (OSError, AttributeError):
        return None


SQLITE = _sqlite_library()


def sqlite_heap() -> int:
    return SQLITE.sqlite3_memory_used() if SQLITE is not None else 0


def _trim() -> int | None:
    """RSS after glibc's ``malloc_trim(0)`` hands free heap pages back: what is left is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_bytes()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_anon_bytes() -> int:
    """The anonymous part of the RSS (heaps, arenas, stacks), without mapped files and libraries."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def sparkline(values: list[float], span: float) -> str:
    """One block per value, from the lowest value up; the full height is ``span`` (or the range)."""
    low, high = min(values), max(values)
    span = max(span, high - low) or 1.0
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int((v - low) / span * len(BLOCKS)))] for v in values)


def mb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=50_000)
    parser.add_argument("--sample-every", type=int, default=1000, help="sends between RSS samples")
    parser.add_argument("--warmup", type=int, default=5000, help="sends before the baseline sample")
    parser.add_argument("--tracemalloc", action="store_true", help="trace allocations from the warm-up sample on")
    parser.add_argument("--trace-frames", type=int, default=1, help="frames per traceback with --tracemalloc")
    parser.add_argument(
        "--glibc-default", action="store_true",
        help="run without the environment the supervisor gives dispatchers (glibc's default malloc arenas)",
    )
    args = parser.parse_args()
    if not args.sample_every <= args.warmup < args.notifications:
        parser.error("need --sample-every <= --warmup < --notifications")

    from shared.entrypoints.local import DISPATCHER_ENV

    # Measure the dispatcher as it runs: the supervisor (and the Functions app settings) start it
    # with DISPATCHER_ENV, which glibc reads only at process start, hence the re-exec.
    if not args.glibc_default and any(k not in os.environ for k in DISPATCHER_ENV):
        os.execve(sys.executable, [sys.executable, *sys.argv], DISPATCHER_ENV | dict(os.environ))

    from shared import bootstrap
    from shared.adapters.embedded_queue import EmbeddedQueue
    from shared.domain.model import NotificationStatus
    from shared.entrypoints.local import Worker
    from shared.entrypoints.schemas import parse_notification_request
    from shared.service.handlers import submit_notification

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="bench-memory-")
    emulator = start_emulator(port)
    try:
        settings = bench_settings(endpoint, data_dir)
        services = bootstrap.Services(settings)
        bootstrap.use(services)
        queue = services.queue

        # ---------------------------------------------------------------- setup (not measured)
        started = time.perf_counter()
        intake_queue = EmbeddedQueue(queue.path, queue.queue_name, clock=services.clock)  # no duplicate detection: see above
        ids = []
        for i in range(args.notifications):
            cmd = parse_notification_request(
                {"channel": "email", "to": [f"bench{i}@example.com"], "subject": "Bench", "text": "Hello"}, settings=settings
            )
            notification, _ = submit_notification(
                cmd, ledger=services.ledger, publisher=intake_queue, attachments=services.attachments, clock=services.clock
            )
            ids.append(notification.id)
        intake_queue.close()
        setup_seconds = time.perf_counter() - started
        total = queue.active_count()
        assert total == args.notifications, f"{total} messages queued for {args.notifications} notifications"
        rss_before = rss_bytes()

        # ---------------------------------------------------------------- the measured run
        worker = Worker(services, poll_seconds=0.05, reconcile=False)
        samples: list[tuple[int, float, int, int, int]] = []  # (sends done, seconds since start, RSS, SQLite heap, RssAnon)
        next_sample = args.sample_every
        before_trace = after_trace = None
        done = 0
        checked = 0.0
        started = time.perf_counter()
        while done < total:
            worker.run_once()
            now = time.perf_counter()
            if now - checked < 0.1:
                continue
            checked = now
            done = total - queue.active_count()
            if done >= next_sample:
                samples.append((done, now - started, rss_bytes(), sqlite_heap(), rss_anon_bytes()))
                while next_sample <= done:
                    next_sample += args.sample_every
                if args.tracemalloc and before_trace is None and done >= args.warmup:
                    tracemalloc.start(args.trace_frames)
                    gc.collect()  # compare what is alive, not garbage waiting for a collection
                    before_trace = tracemalloc.take_snapshot()
        elapsed = time.perf_counter() - started
        if samples[-1][0] != done:
            samples.append((done, elapsed, rss_bytes(), sqlite_heap(), rss_anon_bytes()))
        if before_trace is not None:
            gc.collect()
            after_trace = tracemalloc.take_snapshot()
            traced_now, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        worker._pool.shutdown(wait=True)
        rss_end = rss_bytes()
        trimmed = _trim()
        connections = sum(isinstance(o, sqlite3.Connection) for o in gc.get_objects())
        threads = threading.active_count()

        sent = sum(services.ledger.get(nid).status is NotificationStatus.SENT for nid in ids)
        assert sent == args.notifications, f"only {sent} of {args.notifications} were sent"
        accepted = httpx.get(f"{endpoint}/emulator/stats", timeout=30).json()["channels"]["email"]["accepted"]
        dead = queue.dead_letter_count()
    finally:
        emulator.terminate()
        emulator.wait()
        shutil.rmtree(data_dir, ignore_errors=True)

    warm = next(s for s in samples if s[0] >= args.warmup)
    last = samples[-1]
    peak = max(samples, key=lambda s: s[2])
    growth = (last[2] - warm[2]) / warm[2] * 100

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}")
    print(f"setup (not measured): {args.notifications} email notifications accepted into the ledger + queue in {setup_seconds:.1f} s; "
          f"RSS after setup {mb(rss_before)}")
    print(f"run: Worker.run_once loop in this process, concurrency {settings.dispatch_concurrency}, ACS emulator without latency "
          f"or reports{', tracemalloc on from the warm-up sample' if args.tracemalloc else ''}, "
          f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset (glibc default: 8 per core)')}")
    print(f"sends: {done} in {elapsed:.1f} s, {done / elapsed:.1f} sends/s; all {sent} notifications sent, emulator accepted "
          f"{accepted}, {dead} dead letters")
    band = warm[2] * TARGET_GROWTH_PERCENT / 100
    print(f"RSS samples (every {args.sample_every} sends; full height = {TARGET_GROWTH_PERCENT:g} % of the warm-up RSS, "
          f"{mb(band)}): {sparkline([s[2] for s in samples], band)}  (min {mb(min(s[2] for s in samples))}, max {mb(peak[2])})")
    print(f"{'sends':>8} {'time s':>8} {'RSS':>11} {'vs warm-up':>11} {'of it anon':>11} {'SQLite heap':>12} {'sends/s':>8}")
    shown = [s for i, s in enumerate(samples) if (i + 1) % 5 == 0 or s in (samples[0], warm, last)]
    previous = (0, 0.0, 0)
    for s in samples:
        if s in shown:
            rate = (s[0] - previous[0]) / (s[1] - previous[1]) if s[1] > previous[1] else 0.0
            print(f"{s[0]:>8} {s[1]:>8.1f} {mb(s[2]):>11} {(s[2] - warm[2]) / warm[2] * 100:>+10.1f}% {mb(s[4]):>11} {mb(s[3]):>12} {rate:>8.1f}")
            previous = s
    print(f"RSS after warm-up ({warm[0]} sends, the baseline): {mb(warm[2])}; at the end ({last[0]} sends): {mb(last[2])}; "
          f"growth {growth:+.1f} % (target: under {TARGET_GROWTH_PERCENT:g} %)")
    print(f"peak: {mb(peak[2])} at {peak[0]} sends (sampled)")
    if SQLITE is not None:
        print(f"of the growth, SQLite's own heap (sqlite3_memory_used: page caches, statements): {mb(last[3] - warm[3])} "
              f"({mb(warm[3])} -> {mb(last[3])}), over {connections} SQLite connections open in this process "
              f"({threads} threads); the rest: {mb((last[2] - warm[2]) - (last[3] - warm[3]))}")
    print(f"anonymous memory (RssAnon: heaps, arenas, stacks) grew {mb(last[4] - warm[4])}, mapped files {mb((last[2] - last[4]) - (warm[2] - warm[4]))}")
    if trimmed is not None:
        print(f"at the end, after the worker's pool shut down: RSS {mb(rss_end)}, after malloc_trim(0) {mb(trimmed)} "
              f"(what glibc held free: {mb(rss_end - trimmed)})")
    if after_trace is not None:
        print(f"tracemalloc from {warm[0]} sends to the end: {mb(traced_now)} still allocated, peak {mb(traced_peak)}; top sites:")
        for stat in after_trace.compare_to(before_trace, "lineno")[:12]:
            print(f"  {stat}")
    met = growth < TARGET_GROWTH_PERCENT
    print(f"RESULT dispatcher_rss_growth_percent {growth:.1f} <{TARGET_GROWTH_PERCENT:g} {'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
