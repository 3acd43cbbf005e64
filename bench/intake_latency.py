"""Intake on the local stack against a bare endpoint of the same framework: requests per second and
p50/p99 latency of ``POST /api/notifications``, side by side in one run.

    .venv/bin/python bench/intake_latency.py [--requests 3000] [--warmup 200] [--threads 4] [--rounds 3]

Two servers, each a subprocess on a free loopback port, both up for the whole run:

* ours: the real API exactly as the local stack serves it, ``python -m shared api --port P`` (uvicorn
  serving ``create_api()``), with the settings of ``local.settings.sample.json`` (as
  ``tests/e2e/stack.py`` sets them) and a temp ``NOTIFY_DATA_DIR``. Every request goes the whole
  intake path: dev-key check, JSON parse, validation, SQLite ledger write, enqueue on the embedded
  queue, ``queued`` write (requests that arrive together share these writes: the API's group
  commit, ``shared/entrypoints/group_commit.py``). No worker runs, so nothing is sent and the
  queue just fills.
* bare: a FastAPI app whose only route answers ``POST /api/notifications`` with an empty ``202``
  and does nothing else, served the way ``run_api`` serves ours (the collector tuned by
  ``serve_with_gc_tuned``, then ``uvicorn.run(app, host, port, log_level="warning",
  access_log=False)``); it is this script run with ``--serve-bare PORT``.

Both run under uvicorn with what it picks when installed, as ``requirements-dev.txt`` installs
them: the ``uvloop`` event loop and the ``httptools`` parser (the server's choices are printed).
Both are loaded by the same client in this process: ``--threads`` threads, each with its own
keep-alive ``httpx.Client``, posting the same body (a valid one-recipient email, pre-encoded, with
the sender dev key ``dev-sender-key``). After ``--warmup`` requests per side (not counted), the
``--requests`` per side are split into ``--rounds`` rounds that alternate bare and ours, so drift
(CPU frequency, the ledger growing) hits both. Every answer must be ``202``. Latency is measured per
request with ``time.perf_counter``; requests/s is the measured requests over the summed wall time
of that side's rounds; each server's CPU time (user + system, from ``/proc``) over its measured
rounds, per request, is printed beside it, steadier than the rates when the machine is busy. Each side's load stops at ``--max-seconds`` whatever it has done (loopback
only: the servers bind 127.0.0.1). The result is the ratio of requests/s, ours / bare (target: at
least 0.5). Client and servers share this machine's cores, so the figures are for comparing the two,
not for capacity planning.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.batch_intake import cpu_seconds  # noqa: E402

TARGET_RATIO = 0.5
HOST = "127.0.0.1"
PATH = "/api/notifications"
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
HEADERS = {"Authorization": "Bearer dev-sender-key", "Content-Type": "application/json"}
BODY = json.dumps(
    {"channel": "email", "to": ["jane@example.com"], "subject": "Your order has shipped", "text": "It is on its way."}
).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ the bare server


def serve_bare(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    from shared.entrypoints.local import serve_with_gc_tuned

    app = FastAPI()

    @app.post(PATH, status_code=202)
    async def accept() -> Response:
        return Response(status_code=202)

    serve_with_gc_tuned()  # as run_api does for ours
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------ servers


def start(argv: list[str], env: dict[str, str], log_path: Path, port: int, what: str) -> subprocess.Popen:
    log = open(log_path, "w")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            # A real intake request: it must be 202 before the server counts as up.
            if httpx.post(f"http://{HOST}:{port}{PATH}", content=BODY, headers=HEADERS, timeout=1).status_code == 202:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(process)
    raise SystemExit(f"{what} did not answer 202 within 30 s: {log_path.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ours_environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "NOTIFY_"))}
    env.update(SAMPLE)
    env.update({"NOTIFY_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    return env


# ------------------------------------------------------------------------------ load


def load(url: str, count: int, threads: int, max_seconds: float) -> tuple[list[float], float, int]:
    """Post ``count`` requests over ``threads`` keep-alive clients; returns the latencies of the 202s
    (seconds), the wall time, and how many answers were not 202 or failed."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    deadline = time.perf_counter() + max_seconds
    share = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    ready = threading.Barrier(threads + 1)

    def run(index: int) -> None:
        mine = latencies[index]
        with httpx.Client(headers=HEADERS, timeout=10) as client:
            ready.wait()
            for _ in range(share[index]):
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                try:
                    status = client.post(url, content=BODY).status_code
                except httpx.HTTPError:
                    status = None
                elapsed = time.perf_counter() - t0
                if status == 202:
                    mine.append(elapsed)
                else:
                    errors[index] += 1

    workers = [threading.Thread(target=run, args=(i,), name=f"client-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    ready.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    return [x for xs in latencies for x in xs], wall, sum(errors)


def server_stack() -> str:
    """What uvicorn's "auto" loop and HTTP settings pick in this environment, for both servers."""
    import importlib.util

    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {uvicorn.__version__}, loop {loop}, HTTP parser {http}"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per side")
    parser.add_argument("--warmup", type=int, default=200, help="requests per side before measuring (not counted)")
    parser.add_argument("--threads", type=int, default=4, help="client threads, each with a keep-alive connection")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds the measured requests are split into")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time bound of each side's load, in all")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_bare:
        serve_bare(args.serve_bare)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    servers: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        ours_port, bare_port = free_port(), free_port()
        (work / "data").mkdir()
        servers["ours"] = start(
            [sys.executable, "-m", "shared", "api", "--port", str(ours_port)],
            ours_environment(work / "data"), work / "ours.log", ours_port, "the API (python -m shared api)",
        )
        servers["bare"] = start(
            [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(bare_port)],
            dict(os.environ, PYTHONUNBUFFERED="1"), work / "bare.log", bare_port, "the bare FastAPI app",
        )
        urls = {"ours": f"http://{HOST}:{ours_port}{PATH}", "bare": f"http://{HOST}:{bare_port}{PATH}"}

        for side in ("bare", "ours"):
            _, _, errors = load(urls[side], args.warmup, args.threads, args.max_seconds)
            assert errors == 0, f"{side}: {errors} warm-up requests were not answered 202"

        latencies: dict[str, list[float]] = {"bare": [], "ours": []}
        wall = {"bare": 0.0, "ours": 0.0}
        errors = {"bare": 0, "ours": 0}
        cpu = {"bare": 0.0, "ours": 0.0}
        per_round = [args.requests // args.rounds + (1 if r < args.requests % args.rounds else 0) for r in range(args.rounds)]
        for r, count in enumerate(per_round):
            for side in (("bare", "ours") if r % 2 == 0 else ("ours", "bare")):
                left = args.max_seconds - wall[side]
                if left <= 0:
                    continue
                before = cpu_seconds(servers[side].pid)
                lat, seconds, errs = load(urls[side], count, args.threads, left)
                cpu[side] += cpu_seconds(servers[side].pid) - before
                latencies[side] += lat
                wall[side] += seconds
                errors[side] += errs
        ledger_files = sum(f.stat().st_size for f in (work / "data").rglob("*") if f.is_file())
    finally:
        for process in servers.values():
            stop(process)
        shutil.rmtree(work, ignore_errors=True)

    rate = {side: len(latencies[side]) / wall[side] for side in latencies}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}")
    print(f"servers (both): {server_stack()}")
    print(f"load: {args.threads} client threads (httpx.Client keep-alive each), same body ({len(BODY)} bytes, one email "
          f"recipient), warm-up {args.warmup} per side, {args.requests} measured per side in {args.rounds} alternating rounds")
    names = {
        "bare": "bare FastAPI (202, nothing else)",
        "ours": "ours (python -m shared api: auth, validation, ledger + queue)",
    }
    for side in ("bare", "ours"):
        lat = latencies[side]
        print(
            f"{names[side]}: {len(lat)} x 202 in {wall[side]:.2f} s, {rate[side]:,.0f} requests/s, "
            f"p50 {statistics.median(lat) * 1000:.2f} ms, p99 {percentile(lat, 99) * 1000:.2f} ms, "
            f"max {max(lat) * 1000:.2f} ms, errors {errors[side]}, server CPU {cpu[side] / len(lat) * 1000:.2f} ms/request"
        )
    print(f"data dir after the run (ledger + queue): {ledger_files / 1e6:.1f} MB")
    short = [side for side in latencies if len(latencies[side]) + errors[side] < args.requests]
    if short:
        print(f"stopped by --max-seconds before all requests were made: {', '.join(short)}")
    ratio = rate["ours"] / rate["bare"]
    met = ratio >= TARGET_RATIO and not any(errors.values())
    # The CPU figure is steadier than the rates on a busy machine: it is what the rate would be
    # bound by if the server had a core to itself.
    print(f"server CPU per request, ours / bare: {cpu['ours'] / len(latencies['ours']) / (cpu['bare'] / len(latencies['bare'])):.1f}x")
    print(f"ratio (requests/s, ours / bare): {ratio:.2f} (target: at least {TARGET_RATIO})")
    print(f"RESULT intake_vs_bare_ratio {ratio:.2f} >={TARGET_RATIO} {'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
