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
