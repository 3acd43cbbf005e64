"""Intake throughput of the batch route against single requests, on the local API, in one run.

    .venv/bin/python bench/batch_intake.py [--notifications 2000] [--batch-size 100] [--threads 4]

Starts the HTTP API the way users do (``python -m shared api``, uvicorn, the settings of
``local.settings.sample.json``, a fresh temporary ``NOTIFY_DATA_DIR``; intake only, so no worker and
no emulator), then sends the same number of notifications twice with the same ``httpx.Client``
(keep-alive) from the same number of threads: (a) one ``POST /api/notifications`` each, (b) in
``POST /api/notifications/batch`` requests of ``--batch-size``. Both sides are warmed up first and
every notification is checked to be accepted. The two sides take turns in rounds, so load on the
machine that changes during the run weighs on both alike. The figure is notifications accepted per second,
with p50/p99 latency per HTTP request (with 20 batch requests, the batch p99 is close to the slowest);
the result is the ratio (target: at least 5x; the script exits 1 below it). The API process's CPU
time per notification (Linux) is printed too: it moves less than wall-clock rates on a busy machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
SENDER = {"Authorization": "Bearer dev-sender-key"}
TARGET = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(port: int, data_dir: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "NOTIFY_"))}
    env |= SAMPLE | {"NOTIFY_DATA_DIR": data_dir, "PYTHONUNBUFFERED": "1"}
    log = open(Path(data_dir) / "api.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "shared", "api", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited with {process.returncode}:\n{(Path(data_dir) / 'api.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=0.5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise SystemExit("the API did not answer within 30 s")


_counter = itertools.count()


def email() -> dict:
    n = next(_counter)
    return {"channel": "email", "to": [f"bench{n}+{uuid.uuid4().hex[:6]}@example.com"], "subject": "Bench", "text": f"Hello {n}"}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; Linux only, else 0."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(client: httpx.Client, requests: list[Callable[[httpx.Client], int]], threads: int) -> tuple[float, list[float], int]:
    """Run the requests from ``threads`` threads; seconds, per-request latencies, notifications accepted."""
    pending = iter(requests)
    lock = threading.Lock()
    latencies: list[float] = []
    accepted = [0]
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                request = next(pending, None)
            if request is None:
                return
            started = time.perf_counter()
            try:
                count = request(client)
            except BaseException as exc:  # reported after the run
                errors.append(exc)
                return
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                accepted[0] += count

    pool = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed, latencies, accepted[0]


def single_request(body: dict) -> Callable[[httpx.Client], int]:
    def send(client: httpx.Client) -> int:
        response = client.post("/api/notifications", json=body, headers=SENDER)
        assert response.status_code == 202, response.text
        return 1

    return send


def batch_request(bodies: list[dict]) -> Callable[[httpx.Client], int]:
    def send(client: httpx.Client) -> int:
        response = client.post("/api/notifications/batch", json={"notifications": bodies}, headers=SENDER)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["accepted"] == len(bodies) and result["failed"] == 0, result
        return result["accepted"]

    return send


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=2000, help="notifications per side")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=4, help="concurrent client threads, both sides")
    parser.add_argument("--warmup", type=int, default=200, help="notifications per side before measuring")
    parser.add_argument("--rounds", type=int, default=4, help="turns each side takes (the total is split between them)")
    args = parser.parse_args()
    if args.notifications % (args.rounds * args.batch_size):
        parser.error("--notifications must be a multiple of --rounds times --batch-size")
    size = args.batch_size

    def singles(count: int) -> list:
        return [single_request(email()) for _ in range(count)]

    def batches(count: int) -> list:
        return [batch_request([email() for _ in range(min(size, count - start))]) for start in range(0, count, size)]

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="batch-intake-") as data_dir:
        api = start_api(port, data_dir)
        try:
            limits = httpx.Limits(max_connections=args.threads, max_keepalive_connections=args.threads)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
                run(client, singles(args.warmup), args.threads)
                run(client, batches(args.warmup), args.threads)
                # The sides take turns (single, batch, batch, single, ...), so a change in the
                # machine's load during the run, or the ledger's growth, weighs on both alike.
                per_round = args.notifications // args.rounds
                sides = {"single": (singles, [0.0, [], 0, 0.0]), "batch": (batches, [0.0, [], 0, 0.0])}
                for index in range(args.rounds):
                    order = ("single", "batch") if index % 2 == 0 else ("batch", "single")
                    for side in order:
                        make, totals = sides[side]
                        work = make(per_round)  # built before the clock starts
                        cpu = cpu_seconds(api.pid)
                        seconds, latencies, accepted = run(client, work, args.threads)
                        totals[0] += seconds
                        totals[1] += latencies
                        totals[2] += accepted
                        totals[3] += cpu_seconds(api.pid) - cpu
                single_s, single_lat, single_n, single_cpu = sides["single"][1]
                batch_s, batch_lat, batch_n, batch_cpu = sides["batch"][1]
        finally:
            api.terminate()
            api.wait(timeout=20)

    assert single_n == batch_n == args.notifications, (single_n, batch_n)
    load = os.getloadavg()[0]
    single_rate, batch_rate = single_n / single_s, batch_n / batch_s
    ratio = batch_rate / single_rate
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}")
    print(f"load average at the end: {load:.1f}")
    print(
        f"local API: python -m shared api (uvicorn), SQLite ledger + embedded queue; client: httpx.Client keep-alive,"
        f" {args.threads} threads, {args.rounds} rounds per side"
    )
    print(describe("single (POST /api/notifications)", single_n, single_rate, single_lat, single_cpu))
    print(describe(f"batch (POST /api/notifications/batch, {size} per request)", batch_n, batch_rate, batch_lat, batch_cpu))
    if single_cpu and batch_cpu:
        print(f"API process CPU per notification, single over batch: {single_cpu / single_n / (batch_cpu / batch_n):.1f}x")
    print(f"ratio: {ratio:.1f}x (target: at least {TARGET:.0f}x)")
    print(f"RESULT batch_vs_single_ratio {ratio:.2f} >={TARGET:g} {'met' if ratio >= TARGET else 'missed'}")


def describe(name: str, count: int, rate: float, latencies: list[float], cpu: float) -> str:
    line = (
        f"{name}: {count} notifications in {len(latencies)} requests, {rate:.0f} notifications/s;"
        f" per request p50 {percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms"
    )
    if cpu:
        line += f"; API process CPU {cpu / count * 1e6:.0f} us per notification"
    return line

if __name__ == "__main__":
    main()
