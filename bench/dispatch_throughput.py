"""Dispatch throughput against the ACS emulator with injected latency, side by side with the ACS
quickstart pattern (``EmailClient.begin_send(message).result()``, one at a time), in one run.

    .venv/bin/python bench/dispatch_throughput.py [--notifications 400] [--baseline 10] [--latency-ms 100]

Both sides use the same emulator process, the same latency and the real SDK client. Ours goes the
whole production path: notifications accepted into the SQLite ledger and the embedded queue, then
the local worker (peek-lock, ledger claim, ACS call, ledger write, settlement) at its configured
concurrency. The figure is sends per second; the result is the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from acs_emulator.config import DEFAULT_ACCESS_KEY  # noqa: E402
from bench.emulator import bench_settings, free_port, start_emulator  # noqa: E402



def ours(endpoint: str, count: int, concurrency: int) -> float:
    from shared import bootstrap
    from shared.domain.model import NotificationStatus
    from shared.entrypoints.local import Worker
    from shared.entrypoints.schemas import parse_notification_request
    from shared.service.handlers import submit_notification

    data_dir = tempfile.mkdtemp(prefix="bench-")
    settings = bench_settings(endpoint, data_dir, DISPATCH_CONCURRENCY=str(concurrency))
    services = bootstrap.Services(settings)
    bootstrap.use(services)
    ids = []
    for i in range(count):
        cmd = parse_notification_request(
            {"channel": "email", "to": [f"bench{i}@example.com"], "subject": "Bench", "text": "Hello"}, settings=settings
        )
        notification, _ = submit_notification(
            cmd, ledger=services.ledger, publisher=services.publisher, attachments=services.attachments, clock=services.clock
        )
        ids.append(notification.id)

    worker = Worker(services, poll_seconds=0.05)
    started = time.perf_counter()
    while services.queue.active_count() > 0:
        worker.run_once()
    elapsed = time.perf_counter() - started
    worker._pool.shutdown(wait=True)
    sent = sum(services.ledger.get(nid).status is NotificationStatus.SENT for nid in ids)
    assert sent == count, f"only {sent} of {count} were sent"
    return count / elapsed


def quickstart(endpoint: str, count: int) -> float:
    from azure.communication.email import EmailClient
    from azure.core.credentials import AzureKeyCredential

    client = EmailClient(endpoint, AzureKeyCredential(DEFAULT_ACCESS_KEY))
    started = time.perf_counter()
    for i in range(count):
        message = {
            "senderAddress": "DoNotReply@notify.example.com",
            "recipients": {"to": [{"address": f"quickstart{i}@example.com"}]},
            "content": {"subject": "Bench", "plainText": "Hello"},
        }
        result = client.begin_send(message).result()
        assert result["status"] == "Succeeded", result
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=400, help="sends on our side")
    parser.add_argument("--baseline", type=int, default=10, help="sends on the quickstart side")
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=None, help="DISPATCH_CONCURRENCY (default: the setting's default)")
    args = parser.parse_args()

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    emulator = start_emulator(port)
    try:
        httpx.put(f"{endpoint}/emulator/faults", json={"latencyMs": args.latency_ms}).raise_for_status()
        from shared.config import Settings

        concurrency = args.concurrency or Settings.model_fields["dispatch_concurrency"].default
        baseline = quickstart(endpoint, args.baseline)
        ours_rate = ours(endpoint, args.notifications, concurrency)
    finally:
        emulator.terminate()
        emulator.wait()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}")
    print(f"ACS emulator latency: {args.latency_ms} ms per request")
    print(f"quickstart (begin_send(...).result(), one at a time): {args.baseline} sends, {baseline:.2f} sends/s")
    print(f"dispatcher (queue + ledger + worker, concurrency {concurrency}): {args.notifications} sends, {ours_rate:.1f} sends/s")
    ratio = ours_rate / baseline
    print(f"ratio: {ratio:.1f}x (target: at least 20x)")
    print(f"RESULT dispatch_ratio {ratio:.2f} >=20 {'met' if ratio >= 20 else 'missed'}")


if __name__ == "__main__":
    main()
