"""Start the real local stack (``python -m shared run``) in a subprocess, on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
SENDER = {"Authorization": "Bearer dev-sender-key"}
OPERATOR = {"Authorization": "Bearer dev-operator-key"}
EVENTGRID = {"Authorization": "Bearer dev-eventgrid-key"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class LocalStack:
    def __init__(
        self, data_dir: Path, *, only: str | None = None, report_delay_ms: int = 100, workers: int = 1, **settings: str
    ) -> None:
        self.data_dir = data_dir
        self.only = only
        self.workers = workers
        self.api_port = free_port()
        self.emulator_port = free_port()
        self.report_delay_ms = report_delay_ms
        self.settings = settings
        self.process: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def emulator(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "NOTIFY_"))}
        env.update(SAMPLE)
        env.update(
            {
                "NOTIFY_DATA_DIR": str(self.data_dir),
                "ACS_ENDPOINT": self.emulator,
                "RETRY_BASE_SECONDS": "0.2",
                "RETRY_MAX_SECONDS": "2",
                "RECONCILE_INTERVAL_SECONDS": "1",
                # Fault-injection tests run at 30 % failures per call; ten attempts make a
                # dead letter there a one-in-ten-thousand event rather than a flaky test.
                "MAX_SEND_ATTEMPTS": "10",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.settings)
        return env

    def start(self) -> LocalStack:
        if self.only == "api":
            argv = [sys.executable, "-m", "shared", "api", "--port", str(self.api_port)]
        else:
            argv = [
                sys.executable, "-m", "shared", "run",
                "--port", str(self.api_port),
                "--emulator-port", str(self.emulator_port),
                "--data-dir", str(self.data_dir),
                "--report-delay-ms", str(self.report_delay_ms),
                "--workers", str(self.workers),
            ]
        log = open(self.data_dir / f"stack-{self.api_port}.log", "w")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_until(self._healthy, timeout=30, what="the local stack to answer")
        return self

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the stack exited with {self.process.returncode}: {self.log_text()[-3000:]}")
        try:
            ok = httpx.get(f"{self.api}/api/health", timeout=1).status_code == 200
            if self.only is None:
                ok = ok and httpx.get(f"{self.emulator}/emulator/health", timeout=1).status_code == 200
            return ok
        except httpx.HTTPError:
            return False

    def worker_pids(self) -> list[int]:
        """Dispatcher processes of this stack, read from /proc."""
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
                stat = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if b"worker" in argv and b"shared" in argv and int(stat[2]) == self.process.pid and stat[0] != "Z":
                pids.append(int(cmdline.parent.name))
        return pids

    def log_text(self) -> str:
        path = self.data_dir / f"stack-{self.api_port}.log"
        return path.read_text() if path.exists() else ""

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Stop as a person would with Ctrl-C: SIGINT to the whole process group."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers for tests

    def send(self, body: dict, headers: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.api}/api/notifications", json=body, headers=SENDER | (headers or {}), timeout=10)

    def get(self, notification_id: str) -> dict:
        return httpx.get(f"{self.api}/api/notifications/{notification_id}", headers=SENDER, timeout=10).json()

    def wait_for_status(self, notification_id: str, *statuses: str, timeout: float = 20) -> dict:
        return wait_until(
            lambda: (n := self.get(notification_id)) and n["status"] in statuses and n,
            timeout=timeout,
            what=f"{notification_id} to reach {statuses}",
        )

    def emulator_messages(self, channel: str | None = None) -> list[dict]:
        params = {"channel": channel} if channel else None
        return httpx.get(f"{self.emulator}/emulator/messages", params=params, timeout=10).json()

    def emulator_requests(self) -> list[dict]:
        return httpx.get(f"{self.emulator}/emulator/requests", timeout=10).json()

    def set_faults(self, **faults) -> None:
        httpx.put(f"{self.emulator}/emulator/faults", json=faults, timeout=10).raise_for_status()
