"""The ACS emulator as the benchmarks run it: its own process, no delivery reports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESOURCE = "/subscriptions/0/resourceGroups/bench/providers/Microsoft.Communication/communicationServices/bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(port: int) -> subprocess.Popen:
    """Its own process, so it does not share a GIL with what is measured; no reports, so only
    sending is measured."""
    env = os.environ | {
        "ACS_EMULATOR_PORT": str(port),
        "ACS_EMULATOR_WEBHOOK_URL": "",
        "ACS_EMULATOR_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "acs_emulator"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/emulator/health", timeout=0.5).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.terminate()
    raise SystemExit("the emulator did not start")


def bench_settings(endpoint: str, data_dir: str, **overrides: str):
    """Settings for a benchmark's own services: the emulator's key, no quotas, reconciliation out of
    the way."""
    from acs_emulator.config import DEFAULT_ACCESS_KEY
    from shared.config import Settings

    values = dict(
        NOTIFY_DEV_KEYS="sender=bench",
        NOTIFY_DATA_DIR=data_dir,
        ACS_ENDPOINT=endpoint,
        ACS_ACCESS_KEY=DEFAULT_ACCESS_KEY,
        ACS_RESOURCE_ID=RESOURCE,
        EMAIL_SENDERS="DoNotReply@notify.example.com",
        SMS_SENDERS="+18005550100",
        EMAIL_RATE_PER_MINUTE="0",
        EMAIL_RATE_PER_HOUR="0",
        RECONCILE_INTERVAL_SECONDS="3600",
    )
    return Settings(**(values | overrides))
