"""Chaos soak: thousands of notifications through the local stack while dispatcher workers are
SIGKILLed at random moments, ACS throttles, fails and stalls, and Event Grid duplicates, reorders
and forges delivery reports. It cannot pass silently: every invariant is checked and printed, and
any breach makes the script exit non-zero.

    .venv/bin/python bench/chaos_soak.py [--notifications 10000] [--seed 7] [--data-dir DIR]

``tests/soak/test_chaos_soak.py`` runs a small one in CI through ``run()``.

What it does: starts ``python -m shared run`` with two workers (the supervisor restarts a worker
that dies), sets the emulator's faults (15 % throttling with ``Retry-After: 0``, 10 % server errors,
latency spikes toggled between 0 and 300 ms, 30 % duplicated reports, up to 800 ms of report
jitter, 10 % forged reports from another resource), submits the notifications (a mix of email
simulator outcomes and SMS, unique addresses), SIGKILLs a random worker every 2-5 s (seeded RNG)
while the work is being sent, then clears the faults and waits until everything settles, including
the delivery-report deadline, so recipients that never get a report end ``unconfirmed``.

The invariants (each breach is listed in ``Report.breaches``):

* accepted == delivered + bounced + failed + suppressed + unconfirmed + dead-lettered, per channel
  and in total, from ``/api/reconciliation`` over the run's window, and accepted == submitted;
* nothing lost: every accepted id, read back with ``GET``, is terminal (or dead-lettered), and the
  ``GET``s agree with the reconciliation's counts;
* no duplicate sends at the emulator: each email notification id once in ``/emulator/messages``,
  SMS message ids unique and one per SMS recipient, matching the ledger's message ids;
* the ledger's counts equal the emulator's (``/emulator/stats`` unique reports), and each
  notification ends on the status its simulator recipient implies;
* the chaos happened: workers were killed, the supervisor logged each restart, and killed attempts
  were made again (more than one ``send_attempt`` in some history).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.stack import OPERATOR, SENDER, LocalStack  # noqa: E402

#: Faults while the chaos runs. ``latencyMs`` is toggled separately (the spikes).
SEND_FAULTS = {"throttleRate": 0.15, "serverErrorRate": 0.1, "retryAfterSeconds": 0}
REPORT_FAULTS = {"duplicateReportRate": 0.3, "reportDelayJitterMs": 800, "foreignReportRate": 0.1}

#: The supervisor (``shared run``) restarts a dead worker at most 10 times in 60 s and stops the
#: whole stack after that (crash-loop protection). The soak stays under it with a margin.
SUPERVISOR_RESTARTS_PER_MINUTE = 10
KILL_BUDGET_PER_MINUTE = SUPERVISOR_RESTARTS_PER_MINUTE - 2

TERMINAL = {"delivered", "bounced", "failed", "suppressed", "unconfirmed", "dead_lettered"}
OUTCOMES = ("delivered", "bounced", "failed", "suppressed", "unconfirmed", "deadLettered")

# Valid North American area codes; each gives 800 exchanges (200-999), so numbers stay unique.
AREAS = (425, 206, 212, 312, 415, 617, 702, 303, 503, 602)

#: One cycle of the mix: (kind, channel, simulator local part or number suffix, expected final status).
MIX = [
    ("email-delivered", "email", "user", "delivered"),
    ("email-delivered", "email", "user", "delivered"),
    ("email-bounced", "email", "bounce", "bounced"),
    ("email-failed", "email", "failed", "failed"),
    ("email-suppressed", "email", "suppressed", "suppressed"),
    ("email-quarantined", "email", "quarantined", "failed"),
    ("email-filteredspam", "email", "filteredspam", "failed"),
    ("email-noreport", "email", "noreport", "unconfirmed"),
    ("sms-delivered", "sms", "1234", "delivered"),
    ("sms-failed", "sms", "0001", "failed"),
    ("sms-noreport", "sms", "0002", "unconfirmed"),
]
EXPECTED = {kind: status for kind, _channel, _part, status in MIX}


def request_body(index: int, run_tag: str) -> tuple[str, str, dict]:
    kind, channel, part, _status = MIX[index % len(MIX)]
    serial = index // len(MIX)
    if channel == "email":
        # Unique addresses: a bounce or suppression must not put the next one on the list.
        address = f"{part}+{run_tag}-{serial}@example.com"
        return kind, channel, {"channel": "email", "to": [address], "subject": f"Chaos {index}", "text": "Hello"}
    if serial >= len(AREAS) * 800:
        raise ValueError("too many notifications for the soak's phone numbers")
    number = f"+1{AREAS[serial // 800]}{200 + serial % 800}{part}"
    return kind, channel, {"channel": "sms", "to": [number], "message": f"Chaos {index}"}


@dataclass
class Report:
    notifications: int
    seed: int
    data_dir: str
    workers: int = 2
    #: Where the ledger lived: "sqlite" (the embedded file) or "table" (Table Storage on Azurite).
    ledger: str = "sqlite"
    email: int = 0
    sms: int = 0
    submitted: int = 0
    # chaos
    kills: int = 0
    kills_deferred: int = 0
    kill_times: list[float] = field(default_factory=list)
    restarts_logged: int = 0
    stack_stopped_itself: bool = False
    latency_spikes: int = 0
    chaos_errors: list[str] = field(default_factory=list)
    workers_at_end: int = 0
    # timing
    submit_s: float = 0.0
    at_acs_s: float | None = None
    chaos_s: float = 0.0
    settled_s: float | None = None
    elapsed_s: float = 0.0
    # what the service and the emulator say
    reconciliation: dict = field(default_factory=dict)
    emulator: dict = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    wrong_status: Counter = field(default_factory=Counter)
    dead_lettered: dict[str, str] = field(default_factory=dict)
    duplicate_sends: int = 0
    missing_sends: int = 0
    unexpected_sends: int = 0
    retried: int = 0
    max_attempts: int = 0
    attempts: Counter = field(default_factory=Counter)
    repeated_sent_records: int = 0
    queue_active: int = 0
    queue_dead_letters: Counter = field(default_factory=Counter)
    repeated_report_records: int = 0
    breaches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches

    @property
    def throughput(self) -> float:
        """Notifications handed to ACS (or dead-lettered) per second, from the first submit."""
        span = self.at_acs_s or self.elapsed_s
        return self.notifications / span if span else 0.0

    def breach(self, message: str) -> None:
        self.breaches.append(message)

    def render(self) -> str:
        total = self.reconciliation.get("total", {})
        channels = self.emulator.get("channels", {})
        answers = self.emulator.get("webhook", {}).get("responses", {})
        lines = [
            f"chaos soak: {self.notifications} notifications ({self.email} email, {self.sms} sms), seed {self.seed},"
            f" ledger {self.ledger}",
            f"  chaos: {self.kills} workers SIGKILLed (kills paused {self.kills_deferred} times to stay under the"
            f" supervisor's {SUPERVISOR_RESTARTS_PER_MINUTE} restarts/min), {self.restarts_logged} restarts logged,"
            f" {self.latency_spikes} latency spikes, workers alive at the end: {self.workers_at_end}",
            f"  kills at: {', '.join(f'{t:.1f}' for t in self.kill_times) or '-'} s",
            f"  timing: submitted in {self.submit_s:.1f} s ({self.submitted / self.submit_s if self.submit_s else 0:.0f}/s),"
            f" all at ACS after {self.at_acs_s if self.at_acs_s is not None else float('nan'):.1f} s"
            f" ({self.throughput:.1f} notifications/s under chaos), chaos for {self.chaos_s:.1f} s,"
            f" settled after {self.settled_s if self.settled_s is not None else float('nan'):.1f} s,"
            f" elapsed {self.elapsed_s:.1f} s",
            "  reconciliation: " + ", ".join(f"{k} {total.get(k)}" for k in (
                "accepted", "pending", "awaitingReport", "sent", *OUTCOMES)),
            f"  identity: accepted {total.get('accepted')} == "
            + " + ".join(f"{total.get(k)}" for k in OUTCOMES)
            + f" = {sum(total.get(k, 0) for k in OUTCOMES)}",
            "  emulator: " + "; ".join(
                f"{name} accepted {c.get('accepted')}, reports {dict(sorted(c.get('reports', {}).items()))},"
                f" duplicates {c.get('duplicatesPosted')}, foreign {c.get('foreignPosted')}, gave up {c.get('gaveUp')}"
                for name, c in sorted(channels.items())),
            f"  webhook: {dict(sorted(answers.items()))}, failed attempts"
            f" {self.emulator.get('webhook', {}).get('failedAttempts')}",
            f"  ids read back: {dict(sorted(self.statuses.items()))}; lost {len(self.lost)}",
            f"  sends: duplicates {self.duplicate_sends}, missing {self.missing_sends}, unexpected {self.unexpected_sends}",
            f"  retries: {self.retried} notifications with more than one send_attempt (max {self.max_attempts});"
            f" attempts histogram {dict(sorted(self.attempts.items()))}",
            f"  dead-lettered: {len(self.dead_lettered)} {dict(Counter(self.dead_lettered.values())) or ''};"
            f" embedded queue: {self.queue_active} messages left, dead-letter sub-queue"
            f" {dict(self.queue_dead_letters) or 0}",
            f"  history: {self.repeated_sent_records} with more than one 'sent', {self.repeated_report_records}"
            f" with more than one 'delivery_report'",
        ]
        if self.breaches:
            lines.append(f"  BREACHES ({len(self.breaches)}):")
            lines.extend(f"    - {b}" for b in self.breaches)
        else:
            lines.append("  OK: no breach")
        return "\n".join(lines)


class Chaos(threading.Thread):
    """SIGKILLs a random worker every ``kill_interval`` seconds and toggles latency spikes."""

    def __init__(self, stack: LocalStack, rng: random.Random, report: Report, started: float, *,
                 kill_interval: tuple[float, float], latency_ms: int, latency_interval: tuple[float, float]) -> None:
        super().__init__(name="chaos", daemon=True)
        self.stack, self.rng, self.report, self.started = stack, rng, report, started
        self.kill_interval, self.latency_ms, self.latency_interval = kill_interval, latency_ms, latency_interval
        self.stopping = threading.Event()
        self.latency_on = False

    def run(self) -> None:
        try:
            with httpx.Client(timeout=10) as client:
                now = time.monotonic()
                next_kill = now + self.rng.uniform(1.0, 2.0)  # the first one while the work is in flight
                next_latency = now + self.rng.uniform(*self.latency_interval)
                recent: list[float] = []
                while not self.stopping.wait(0.05):
                    now = time.monotonic()
                    if now >= next_latency:
                        self.latency_on = not self.latency_on
                        client.put(f"{self.stack.emulator}/emulator/faults",
                                   json={"latencyMs": self.latency_ms if self.latency_on else 0}).raise_for_status()
                        self.report.latency_spikes += self.latency_on
                        next_latency = now + self.rng.uniform(*self.latency_interval)
                    if now >= next_kill:
                        recent = [t for t in recent if now - t < 60]
                        if len(recent) >= KILL_BUDGET_PER_MINUTE:
                            self.report.kills_deferred += 1
                            next_kill = recent[0] + 60.5
                            continue
                        if self.kill_one():
                            recent.append(now)
                        next_kill = now + self.rng.uniform(*self.kill_interval)
        except Exception as exc:  # noqa: BLE001 - reported as a breach, never swallowed
            self.report.chaos_errors.append(f"{type(exc).__name__}: {exc}")

    def kill_one(self) -> bool:
        pids = sorted(self.stack.worker_pids())
        if not pids:
            return False
        pid = self.rng.choice(pids)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.report.kills += 1
        self.report.kill_times.append(time.monotonic() - self.started)
        return True


def run(
    notifications: int,
    *,
    data_dir: Path,
    seed: int,
    workers: int = 2,
    report_deadline_s: int = 20,
    kill_interval: tuple[float, float] = (2.0, 5.0),
    latency_ms: int = 300,
    latency_interval: tuple[float, float] = (1.5, 4.0),
    min_chaos_s: float = 8.0,
    chaos_timeout_s: float | None = None,
    settle_timeout_s: float | None = None,
    senders: int = 8,
    ledger: str = "sqlite",
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the chaos soak and return what it found; never raises for a breach, lists it.

    ``ledger="table"`` keeps the ledger, the suppression list and the rate limiter in Table
    Storage (Azurite, started for the run), as in Azure, instead of the embedded SQLite file.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if ledger not in ("sqlite", "table"):
        raise ValueError(f"ledger is sqlite or table, got {ledger!r}")
    from tests import azurite

    with azurite.table_endpoint(data_dir) if ledger == "table" else nullcontext() as connection_string:
        backend = {} if connection_string is None else {
            "LEDGER_BACKEND": "table", "TABLES_CONNECTION_STRING": connection_string,
            # The Table backends come with blob attachments; the soak sends none, so nothing
            # listens there and any use of the store would show as a failure.
            "ATTACHMENTS_CONTAINER_URL": "https://127.0.0.1:9/devstoreaccount1/attachments",
        }
        return _run(notifications, data_dir=data_dir, seed=seed, workers=workers, report_deadline_s=report_deadline_s,
                    kill_interval=kill_interval, latency_ms=latency_ms, latency_interval=latency_interval,
                    min_chaos_s=min_chaos_s, chaos_timeout_s=chaos_timeout_s, settle_timeout_s=settle_timeout_s,
                    senders=senders, progress=progress, backend=backend)


def _run(
    notifications: int,
    *,
    data_dir: Path,
    seed: int,
    workers: int,
    report_deadline_s: int,
    kill_interval: tuple[float, float],
    latency_ms: int,
    latency_interval: tuple[float, float],
    min_chaos_s: float,
    chaos_timeout_s: float | None,
    settle_timeout_s: float | None,
    senders: int,
    progress: Callable[[str], None] | None,
    backend: dict[str, str],
) -> Report:
    say = progress or (lambda _msg: None)
    rng = random.Random(seed)
    run_tag = uuid.UUID(int=rng.getrandbits(128)).hex[:6]
    items = [request_body(i, run_tag) for i in range(notifications)]
    report = Report(notifications=notifications, seed=seed, data_dir=str(data_dir), workers=workers,
                    ledger=backend.get("LEDGER_BACKEND", "sqlite"))
    report.email = sum(channel == "email" for _, channel, _ in items)
    report.sms = notifications - report.email
    chaos_timeout_s = chaos_timeout_s or max(120.0, notifications * 0.06)
    settle_timeout_s = settle_timeout_s or max(180.0, report_deadline_s + 120 + notifications * 0.03)

    stack = LocalStack(
        data_dir, workers=workers, report_delay_ms=50,
        MAX_SEND_ATTEMPTS="12", RETRY_BASE_SECONDS="0.2", RETRY_MAX_SECONDS="2", ACS_TIMEOUT_SECONDS="2",
        QUEUE_LOCK_SECONDS="5", DELIVERY_REPORT_DEADLINE_SECONDS=str(report_deadline_s),
        RECONCILE_INTERVAL_SECONDS="1",
        # The local sample turns the quotas off; say so here too, since 10,000 sends must not wait on them.
        EMAIL_RATE_PER_MINUTE="0", EMAIL_RATE_PER_HOUR="0", SMS_RATE_PER_MINUTE="0", SMS_RATE_PER_HOUR="0",
        **backend,
    )
    started = time.monotonic()
    with stack, httpx.Client(timeout=30) as probe:
        say(f"stack up (api {stack.api}, emulator {stack.emulator}, {len(stack.worker_pids())} workers)")
        window = {
            "from": (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat(),
            "to": (datetime.now(timezone.utc) + timedelta(days=1)).isoformat(),
        }

        def reconciliation() -> dict:
            response = probe.get(f"{stack.api}/api/reconciliation", params=window, headers=OPERATOR)
            response.raise_for_status()
            return response.json()

        def emulator_stats() -> dict:
            response = probe.get(f"{stack.emulator}/emulator/stats")
            response.raise_for_status()
            return response.json()

        def stack_alive() -> bool:
            return stack.process.poll() is None

        stack.set_faults(**SEND_FAULTS, **REPORT_FAULTS, latencyMs=0)
        started = time.monotonic()
        chaos = Chaos(stack, rng, report, started, kill_interval=kill_interval, latency_ms=latency_ms,
                      latency_interval=latency_interval)
        chaos.start()

        # -- submit as fast as a few keep-alive clients can, while the chaos runs
        submitted: list[tuple[str, str, str]] = []  # (kind, channel, id)
        with httpx.Client(base_url=stack.api, headers=SENDER, timeout=30) as client:

            def submit(item: tuple[str, str, dict]) -> tuple[str, str, str, int | str]:
                kind, channel, body = item
                try:
                    response = client.post("/api/notifications", json=body)
                except httpx.HTTPError as exc:
                    return kind, channel, "", f"{type(exc).__name__}: {exc}"
                return kind, channel, response.json().get("id", "") if response.status_code == 202 else "", response.status_code

            with ThreadPoolExecutor(senders) as pool:
                answers = list(pool.map(submit, items))
        report.submit_s = time.monotonic() - started
        refused = Counter(str(code) for *_, code in answers if code != 202)
        if refused:
            report.breach(f"submits not accepted with 202: {dict(refused)}")
        submitted = [(kind, channel, nid) for kind, channel, nid, code in answers if code == 202 and nid]
        report.submitted = len(submitted)
        say(f"submitted {report.submitted} in {report.submit_s:.1f} s; chaos continues until all are at ACS")

        # -- keep the chaos going until every notification has been handed to ACS (or dead-lettered)
        chaos_deadline = started + chaos_timeout_s
        while True:
            now = time.monotonic()
            if not stack_alive():
                break
            total = reconciliation()["total"]
            if total["pending"] == 0 and total["accepted"] == report.submitted:
                if report.at_acs_s is None:
                    report.at_acs_s = now - started
                if now - started >= min_chaos_s:
                    break
            if now > chaos_deadline:
                report.breach(f"still {total['pending']} pending after {chaos_timeout_s:.0f} s of chaos")
                break
            time.sleep(0.5)
        chaos.stopping.set()
        chaos.join(timeout=15)
        report.chaos_s = time.monotonic() - started
        if chaos.is_alive():
            report.breach("the chaos thread did not stop")
        say(f"chaos over after {report.chaos_s:.1f} s: {report.kills} kills; clearing the faults and settling")

        # -- clear the faults and wait until everything settles, the report deadline included
        if stack_alive():
            probe.delete(f"{stack.emulator}/emulator/faults").raise_for_status()
        settle_deadline = time.monotonic() + settle_timeout_s
        last: tuple = ()
        while stack_alive():
            emulated = emulator_stats()
            total = reconciliation()["total"]
            pending_reports = sum(c["pending"] for c in emulated["channels"].values())
            last = (pending_reports, total)
            if (pending_reports == 0 and total["accepted"] == report.submitted and total["pending"] == 0
                    and total["awaitingReport"] == 0):
                report.settled_s = time.monotonic() - started
                break
            if time.monotonic() > settle_deadline:
                report.breach(f"not settled after {settle_timeout_s:.0f} s: emulator pending reports {last[0]},"
                              f" reconciliation {last[1]}")
                break
            time.sleep(0.5)

        if not stack_alive():
            report.stack_stopped_itself = True
            report.breach(f"the stack stopped itself (exit {stack.process.returncode}): "
                          f"{stack.log_text()[-1500:]}")
            report.restarts_logged = stack.log_text().count("; restarting it")
            report.elapsed_s = time.monotonic() - started
            return report

        say(f"settled after {report.settled_s or float('nan'):.1f} s; reading back every notification")
        report.reconciliation = reconciliation()
        report.emulator = emulator_stats()
        report.workers_at_end = len(stack.worker_pids())
        email_messages = probe.get(f"{stack.emulator}/emulator/messages", params={"channel": "email"}).json()
        sms_messages = probe.get(f"{stack.emulator}/emulator/messages", params={"channel": "sms"}).json()

        with httpx.Client(base_url=stack.api, headers=SENDER, timeout=30) as client:

            def read(nid: str) -> dict | None:
                for _ in range(3):
                    try:
                        response = client.get(f"/api/notifications/{nid}")
                    except httpx.HTTPError:
                        time.sleep(0.5)
                        continue
                    return response.json() if response.status_code == 200 else None
                return None

            with ThreadPoolExecutor(senders) as pool:
                views = dict(zip([nid for *_, nid in submitted], pool.map(read, [nid for *_, nid in submitted])))
        log = stack.log_text()
        report.restarts_logged = len(re.findall(r"worker-\d+ died with code -?\d+; restarting it", log))
        report.elapsed_s = time.monotonic() - started

    # The embedded queue, read once the stack has stopped: its dead-letter sub-queue must hold only
    # what the ledger dead-lettered (a crash-looping message dead-lettered by the queue alone is lost).
    from shared.adapters.embedded_queue import EmbeddedQueue

    queue = EmbeddedQueue(data_dir / "queue.sqlite3", "notifications")
    try:
        report.queue_active = queue.active_count()
        queue_dead = queue.dead_letters(limit=max(100, notifications * 2))
    finally:
        queue.close()
    report.queue_dead_letters = Counter(d.reason for d in queue_dead)
    check(report, submitted, views, email_messages, sms_messages, log)
    for dead in queue_dead:
        nid = dead.body.get("notificationId")
        if nid not in report.dead_lettered:
            report.breach(f"queue dead-lettered {nid} ({dead.reason}: {dead.description}) but the ledger has it"
                          f" {(views.get(nid) or {}).get('status', 'missing')}")
    return report


def check(report: Report, submitted: list[tuple[str, str, str]], views: dict[str, dict | None],
          email_messages: list[dict], sms_messages: list[dict], log: str) -> None:
    rec = report.reconciliation
    total = rec["total"]

    # -- the identity, per channel and in total
    for name, counts in [("total", total), *sorted(rec["channels"].items())]:
        outcomes = sum(counts[k] for k in OUTCOMES)
        if counts["accepted"] != outcomes:
            report.breach(f"{name}: accepted {counts['accepted']} != outcomes {outcomes} "
                          f"({', '.join(f'{k} {counts[k]}' for k in ('pending', 'awaitingReport', *OUTCOMES))})")
    if total["accepted"] != report.submitted:
        report.breach(f"the ledger holds {total['accepted']} notifications in the window, {report.submitted} were accepted")

    # -- nothing lost: every id terminal, and the GETs agree with the reconciliation
    kind_of = {nid: kind for kind, _channel, nid in submitted}
    for nid, view in views.items():
        status = view["status"] if view else "missing"
        report.statuses[status] += 1
        if status not in TERMINAL:
            report.lost.append(nid)
            continue
        if status == "dead_lettered":
            report.dead_lettered[nid] = (view.get("deadLetter") or {}).get("reason", "?")
        elif status != EXPECTED[kind_of[nid]]:
            report.wrong_status[f"{kind_of[nid]} -> {status}"] += 1
        events = Counter(h["event"] for h in view["history"])
        report.attempts[events["send_attempt"]] += 1
        report.retried += events["send_attempt"] > 1
        report.max_attempts = max(report.max_attempts, events["send_attempt"])
        report.repeated_sent_records += events["sent"] > 1
        report.repeated_report_records += events["delivery_report"] > 1
    if report.lost:
        report.breach(f"lost: {len(report.lost)} notifications not terminal, e.g. "
                      + ", ".join(f"{nid} ({views[nid]['status'] if views[nid] else 'missing'})" for nid in report.lost[:5]))
    by_ledger = {"delivered": total["delivered"], "bounced": total["bounced"], "failed": total["failed"],
                 "suppressed": total["suppressed"], "unconfirmed": total["unconfirmed"],
                 "dead_lettered": total["deadLettered"]}
    by_get = {k: report.statuses[k] for k in by_ledger}
    if by_get != by_ledger:
        report.breach(f"the notifications read back {by_get} disagree with the reconciliation {by_ledger}")
    if report.wrong_status:
        report.breach(f"notifications on the wrong status for their recipient: {dict(report.wrong_status)}")
    if report.repeated_sent_records:
        report.breach(f"{report.repeated_sent_records} notifications recorded 'sent' more than once")
    if report.repeated_report_records:
        report.breach(f"{report.repeated_report_records} notifications recorded a delivery report more than once")

    # -- no duplicate (or missing) sends at the emulator
    email_ids = {nid for _kind, channel, nid in submitted if channel == "email"}
    at_acs = Counter(m["id"] for m in email_messages)
    report.unexpected_sends += sum(n for mid, n in at_acs.items() if mid not in email_ids)
    for nid in email_ids:
        expected = 0 if nid in report.dead_lettered else 1
        report.duplicate_sends += max(0, at_acs[nid] - 1)
        if at_acs[nid] < expected:
            report.missing_sends += 1
        elif expected == 0 and at_acs[nid]:
            report.breach(f"email {nid} is dead-lettered in the ledger but ACS sent it")
    sms_views = [views[nid] for _kind, channel, nid in submitted if channel == "sms" and views.get(nid)]
    sms_ids = Counter(m["id"] for m in sms_messages)
    sms_numbers = Counter(m["recipients"][0] for m in sms_messages)
    report.duplicate_sends += sum(n - 1 for n in sms_ids.values() if n > 1)
    report.duplicate_sends += sum(n - 1 for n in sms_numbers.values() if n > 1)
    ledger_sms = {r["address"]: r["messageId"] for v in sms_views for r in v["recipients"] if v["status"] != "dead_lettered"}
    acs_sms = {m["recipients"][0]: m["id"] for m in sms_messages}
    report.missing_sends += sum(1 for number in ledger_sms if number not in acs_sms)
    report.unexpected_sends += sum(1 for number in acs_sms if number not in ledger_sms)
    mismatched = [n for n, mid in ledger_sms.items() if n in acs_sms and acs_sms[n] != mid]
    if mismatched:
        report.breach(f"{len(mismatched)} SMS recipients whose ledger message id is not the one ACS sent, e.g. {mismatched[:3]}")
    if len({m.get("repeatabilityRequestId") for m in sms_messages}) != len(sms_messages):
        report.breach("SMS repeatability ids repeat at the emulator")
    if report.duplicate_sends:
        report.breach(f"duplicate sends at the emulator: {report.duplicate_sends}")
    if report.missing_sends:
        report.breach(f"notifications the ledger sent that ACS never got: {report.missing_sends}")
    if report.unexpected_sends:
        report.breach(f"sends at the emulator the ledger does not know: {report.unexpected_sends}")

    # -- the ledger's counts equal the emulator's
    channels = report.emulator["channels"]
    for name in ("email", "sms"):
        ledger, acs = rec["channels"][name], channels[name]
        reports = acs["reports"]
        pairs = {
            "sent": (ledger["sent"], acs["accepted"]),
            "delivered": (ledger["delivered"], reports.get("Delivered", 0)),
            "bounced": (ledger["bounced"], reports.get("Bounced", 0)),
            "suppressed": (ledger["suppressed"], reports.get("Suppressed", 0)),
            "failed": (ledger["failed"], reports.get("Failed", 0) + reports.get("Quarantined", 0)
                       + reports.get("FilteredSpam", 0)),
            "unconfirmed": (ledger["unconfirmed"], acs["accepted"] - sum(reports.values())),
        }
        for what, (ours, theirs) in pairs.items():
            if ours != theirs:
                report.breach(f"{name} {what}: ledger {ours} != emulator {theirs}")
        if acs["gaveUp"]:
            report.breach(f"{name}: the emulator gave up on {acs['gaveUp']} report events (reports lost)")
        if acs["pending"]:
            report.breach(f"{name}: {acs['pending']} report events still pending at the emulator")
    answers = report.emulator["webhook"]["responses"]
    foreign = sum(c["foreignPosted"] for c in channels.values())
    if answers.get("rejected", 0) != foreign:
        report.breach(f"the webhook rejected {answers.get('rejected', 0)} events, {foreign} forged ones were posted")
    unique = sum(sum(c["reports"].values()) for c in channels.values())
    duplicates = sum(c["duplicatesPosted"] for c in channels.values())
    if answers.get("received", 0) != unique + duplicates + foreign:
        report.breach(f"the webhook received {answers.get('received', 0)} events, the emulator posted"
                      f" {unique} + {duplicates} duplicates + {foreign} forged")
    absorbed = answers.get("applied", 0) + answers.get("duplicates", 0) + answers.get("parked", 0)
    if absorbed != unique + duplicates:
        report.breach(f"the webhook applied + recognised + parked {absorbed} genuine events, {unique + duplicates} were posted")
    if answers.get("malformed", 0):
        report.breach(f"the webhook found {answers['malformed']} malformed events")

    # -- the chaos really happened
    if report.chaos_errors:
        report.breach(f"the chaos thread failed: {report.chaos_errors}")
    if report.kills == 0:
        report.breach("no worker was killed: the soak did not exercise crashes")
    if report.restarts_logged != report.kills:
        report.breach(f"{report.kills} workers killed but the supervisor logged {report.restarts_logged} restarts")
    if report.retried == 0 and report.restarts_logged == 0:
        report.breach("no notification needed a second send_attempt and no restart was logged")
    if "stopping the stack" in log:
        report.breach("the supervisor stopped the stack")
    if report.workers_at_end != report.workers:
        report.breach(f"{report.workers_at_end} workers alive at the end, {report.workers} configured")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed in the report")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory, removed after")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-deadline", type=int, default=20, help="DELIVERY_REPORT_DEADLINE_SECONDS")
    parser.add_argument("--ledger", choices=["sqlite", "table"], default="sqlite",
                        help="the embedded SQLite ledger, or Table Storage on Azurite (started for the run) as in Azure")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)

    def progress(message: str) -> None:
        print(f"[chaos soak] {message}", file=sys.stderr, flush=True)

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    report = run(args.notifications, data_dir=data_dir, seed=seed, workers=args.workers,
                 report_deadline_s=args.report_deadline, ledger=args.ledger, progress=progress)
    print(report.render(), flush=True)
    if report.ok and args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    elif not report.ok:
        print(f"  the stack's log and state are kept in {data_dir}", flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
