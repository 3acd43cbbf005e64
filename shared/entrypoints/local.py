"""The local stack: the same handlers as in Azure, on the embedded queue and ledger.

``python -m shared run`` starts three processes and stops all of them on one Ctrl-C:

* the ACS emulator (``python -m acs_emulator``),
* the HTTP API on 127.0.0.1:7071 (uvicorn serving the app Azure Functions serves),
* the worker: the dispatcher consuming the embedded queue with peek-lock, the intake of the
  requests queue (what the Service Bus intake trigger does in Azure), plus the reconciliation timer
  and the status event relay (worker-1 only, as timers fire once in Azure).

Separate processes, as in Azure, so a dispatcher can be killed and restarted on its own.
"""

from __future__ import annotations

import json
import logging
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from .. import bootstrap, telemetry
from ..domain.errors import LockLost
from ..service.handlers import DeadLettered
from ..service.ports import MessageConsumer, ReceivedMessage
from . import triggers

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_local_settings(root: Path = REPO_ROOT) -> Path | None:
    """Put ``local.settings.json`` (else the sample) into the environment, as ``func start``
    would; variables already set win."""
    for name in ("local.settings.json", "local.settings.sample.json"):
        path = root / name
        if path.exists():
            values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
            for key, value in values.items():
                os.environ.setdefault(key, str(value))
            return path
    return None


# ------------------------------------------------------------------------------ worker


class Worker:
    """Receives from the embedded queue and runs the dispatcher, ``concurrency`` at a time.

    Settlement mirrors the Functions host: complete when the handler returns, abandon when it
    raises (redelivered at once, until the delivery count dead-letters it), and dead-letter with
    the handler's own reason when it gives up.
    """

    def __init__(
        self, services: bootstrap.Services, *, poll_seconds: float = 0.5, reconcile: bool = True, intake: bool = True
    ) -> None:
        self.services = services
        self.reconcile = reconcile
        self.intake = intake
        self.concurrency = services.settings.dispatch_concurrency
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()
        self._slots = threading.Semaphore(self.concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="dispatch")

    def _settle(self, message: ReceivedMessage, future: Future) -> None:
        queue = self.services.queue
        try:
            try:
                outcome = future.result()
            except Exception:
                log.exception("dispatch of message %s raised; abandoning it", message.message_id)
                queue.abandon(message)
                return
            if isinstance(outcome, DeadLettered):
                queue.dead_letter(message, outcome.reason, outcome.description)
            else:
                queue.complete(message)
        except LockLost:
            log.warning("lock on message %s was lost before settlement; it will be redelivered", message.message_id)
        finally:
            self._slots.release()

    def run_once(self) -> int:
        """Receive what free slots allow and start dispatching it; returns how many started."""
        free = 0
        while free < self.concurrency and self._slots.acquire(blocking=False):
            free += 1
        if free == 0:
            time.sleep(0.01)
            return 0
        messages = self.services.queue.receive(max_messages=free, max_wait=self.poll_seconds)
        for _ in range(free - len(messages)):
            self._slots.release()
        for message in messages:
            future = self._pool.submit(
                triggers.dispatch_queue_message, json.dumps(message.body), message.application_properties, message.enqueued_at
            )
            future.add_done_callback(lambda f, m=message: self._settle(m, f))
        return len(messages)

    def _reconcile_loop(self) -> None:
        interval = self.services.settings.reconcile_interval_seconds
        while not self.stopping.wait(interval):
            try:
                triggers.run_reconciliation()
            except Exception:
                log.exception("reconciliation failed; will try again in %.0fs", interval)

    def _relay_loop(self) -> None:
        # Its own thread: a slow or failing subscriber never holds up the dispatcher.
        interval = self.services.settings.status_relay_interval_seconds
        while not self.stopping.wait(interval):
            try:
                triggers.relay_status_events()
            except Exception:
                log.exception("status event relay failed; will try again in %.1fs", interval)

    def run(self) -> None:
        if self.reconcile:
            threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True).start()
        if self.intake:
            requests = RequestIntake(self.services, self.services.requests_queue, poll_seconds=max(self.poll_seconds, 0.5))
            threading.Thread(target=requests.run, args=(self.stopping,), name="requests", daemon=True).start()
            threading.Thread(target=self._relay_loop, name="status-relay", daemon=True).start()
        log.info("worker consuming queue %r, %d at a time", self.services.settings.notifications_queue, self.concurrency)
        while not self.stopping.is_set():
            self.run_once()
        self._pool.shutdown(wait=True)
        log.info("worker stopped")


class RequestIntake:
    """Receives from the requests queue and runs the intake trigger's code, one message at a time.

    Settlement mirrors the Azure function: complete once accepted, dead-letter with the reason
    when refused (``ValidationFailed``, ``IdempotencyConflict``), abandon when it raised (a
    transient failure: delivered again at once, until the delivery count dead-letters it).
    """

    def __init__(self, services: bootstrap.Services, queue: MessageConsumer, *, poll_seconds: float = 0.5) -> None:
        self.services = services
        self.queue = queue
        self.poll_seconds = poll_seconds

    def run_once(self) -> int:
        messages = self.queue.receive(max_messages=10)
        for message in messages:
            self.handle(message)
        return len(messages)

    def handle(self, message: ReceivedMessage) -> None:
        try:
            try:
                outcome = triggers.accept_request_message(triggers.request_from_queue(message), self.services)
            except Exception:
                log.exception("request message %s raised; abandoning it", message.message_id)
                self.queue.abandon(message)
                return
            if isinstance(outcome, triggers.RequestRefused):
                self.queue.dead_letter(message, outcome.reason, outcome.description)
            else:
                self.queue.complete(message)
        except LockLost:
            log.warning("lock on request message %s was lost before settlement; it will be redelivered", message.message_id)

    def run(self, stopping: threading.Event) -> None:
        log.info("intake consuming queue %r", self.services.settings.requests_queue)
        while not stopping.is_set():
            try:
                # One look per interval while idle: every look at the embedded queue takes the
                # file's write lock, which the dispatchers need far more often.
                if self.run_once() == 0:
                    stopping.wait(self.poll_seconds)
            except Exception:
                # The queue file itself failed (locked, disk full): keep the worker, try again.
                log.exception("receiving from the requests queue failed; trying again")
                stopping.wait(1.0)


def run_worker(reconcile: bool = True) -> None:
    worker = Worker(bootstrap.services(), reconcile=reconcile)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.stopping.set()
        worker._pool.shutdown(wait=True)
    finally:
        telemetry.flush()


def serve_with_gc_tuned() -> None:
    """Before a server starts taking requests: what is loaded by then (modules, the app, its
    schemas) lives as long as the process, so it is frozen out of the collector's passes, and the
    young generation is collected every 20,000 allocations rather than 700. A request builds
    thousands of short-lived objects (a batch of a hundred, tens of thousands), and with the
    defaults the collector's passes over the long-lived heap were a quarter of the API's CPU per
    request (``bench/intake_latency.py``, ``bench/batch_intake.py``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run_api(host: str, port: int) -> None:
    import uvicorn

    from .api import create_api

    bootstrap.services()  # fail fast on bad settings, before listening
    app = create_api()
    serve_with_gc_tuned()
    # log_config=None: uvicorn's own loggers propagate to the root handlers, so its lines (an
    # unhandled error's traceback among them) get the ids and the recipient masking like ours.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, log_config=None)


# ------------------------------------------------------------------------------ the whole stack


def _eventgrid_key() -> str:
    for pair in os.environ.get("NOTIFY_DEV_KEYS", "").split(","):
        role, _, key = pair.strip().partition("=")
        if role.strip() == "eventgrid" and key.strip():
            return key.strip()
    raise SystemExit("NOTIFY_DEV_KEYS has no eventgrid key, so the emulator could not post delivery reports")


#: Set for dispatcher processes (the supervisor's workers here; an app setting in infra/ for the
#: Functions host). glibc gives each thread that allocates its own malloc arena, up to 8 per core,
#: and keeps their freed pages: with DISPATCH_CONCURRENCY send threads the dispatcher's resident
#: memory grew 14-16 % over 50,000 sends with the default and under 1 % with two arenas
#: (bench/memory_flat.py). glibc reads it at process start, so it cannot be set from inside.
DISPATCHER_ENV = {"MALLOC_ARENA_MAX": "2"}


def run_stack(
    *, api_port: int, emulator_port: int, data_dir: str | None, report_delay_ms: int | None, workers: int = 1
) -> int:
    host = "127.0.0.1"
    env = dict(os.environ)
    if data_dir:
        env["NOTIFY_DATA_DIR"] = data_dir
    env["ACS_ENDPOINT"] = f"http://{host}:{emulator_port}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    emulator_env = env | {
        "ACS_EMULATOR_HOST": host,
        "ACS_EMULATOR_PORT": str(emulator_port),
        "ACS_EMULATOR_ACCESS_KEY": env.get("ACS_ACCESS_KEY", ""),
        "ACS_EMULATOR_WEBHOOK_URL": f"http://{host}:{api_port}/api/events",
        "ACS_EMULATOR_WEBHOOK_TOKEN": _eventgrid_key(),
        "ACS_EMULATOR_RESOURCE_ID": env["ACS_RESOURCE_ID"],
    }
    if report_delay_ms is not None:
        emulator_env["ACS_EMULATOR_REPORT_DELAY_MS"] = str(report_delay_ms)

    python = sys.executable
    specs = {
        "emulator": ([python, "-m", "acs_emulator"], emulator_env),
        "api": ([python, "-m", "shared", "api", "--host", host, "--port", str(api_port)], env),
    }
    for index in range(1, workers + 1):
        # One reconciliation timer for the stack, as the timer trigger fires once in Azure.
        flag = "--reconcile" if index == 1 else "--no-reconcile"
        specs[f"worker-{index}"] = ([python, "-m", "shared", "worker", flag], DISPATCHER_ENV | env)
    children: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    def start(name: str) -> None:
        argv, child_env = specs[name]
        children[name] = subprocess.Popen(argv, env=child_env, cwd=REPO_ROOT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name in specs:
        start(name)
    print(
        f"Notification service on http://{host}:{api_port}/api  (ACS emulator on http://{host}:{emulator_port},"
        f" {workers} worker(s), data in {env.get('NOTIFY_DATA_DIR', '.data')}). Ctrl-C stops everything.",
        flush=True,
    )
    exit_code = 0
    restarts: list[float] = []
    while not stopping.is_set():
        for name, child in list(children.items()):
            if child.poll() is None or stopping.is_set():
                continue
            # A dead dispatcher is restarted, as the Functions host restarts a worker: its locked
            # messages come back when their locks expire. Anything else dying stops the stack.
            recent = [t for t in restarts if time.monotonic() - t < 60]
            if name.startswith("worker") and child.returncode != 0 and len(recent) < 10:
                print(f"{name} died with code {child.returncode}; restarting it", file=sys.stderr, flush=True)
                restarts[:] = recent + [time.monotonic()]
                start(name)
                continue
            print(f"{name} exited with code {child.returncode}; stopping the stack", file=sys.stderr, flush=True)
            exit_code = child.returncode or 1
            stopping.set()
        stopping.wait(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children.values():
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
    return exit_code


def emulator_port_from(endpoint: str | None, default: int = 7072) -> int:
    if not endpoint:
        return default
    return urlparse(endpoint).port or default
