"""Delivery reports: Event Grid-schema events for ACS, and the background thread that posts them.

Events follow the Event Grid schema of the ACS system events
(``Microsoft.Communication.EmailDeliveryReportReceived`` and
``Microsoft.Communication.SMSDeliveryReportReceived``). They are posted as a JSON array with the
headers Event Grid sends on a notification (``aeg-event-type: Notification`` and friends) plus
``Authorization: Bearer <webhook_token>``.

The :class:`ReportDispatcher` keeps due reports in a heap served by one daemon thread. Reports that
fall due together are sent in one POST (as Event Grid batches), except that one POST never carries
the same event id twice (a duplicate always goes in a POST of its own). A POST that fails or answers
non-2xx is retried every ``retry_interval_s`` until ``give_up_after_s`` have passed since the
reports fell due, then dropped with a log line, so reports survive the webhook's app starting late.

Each job has a kind: :data:`FIRST` (the report itself), :data:`DUPLICATE` (a second delivery of
the same event, as Event Grid's at-least-once delivery makes) or :data:`FOREIGN` (a copy from
another resource's ``topic``). The dispatcher counts events per channel and kind, and sums the
numeric fields of the webhook's JSON answers: see :meth:`ReportDispatcher.stats`.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

logger = logging.getLogger(__name__)

EMAIL_DELIVERY_REPORT = "Microsoft.Communication.EmailDeliveryReportReceived"
SMS_DELIVERY_REPORT = "Microsoft.Communication.SMSDeliveryReportReceived"

EMAIL_STATUS_MESSAGES = {
    "Delivered": "No error.",
    "Bounced": "550 5.1.1 The recipient's mailbox does not exist (simulated hard bounce).",
    "Suppressed": "The recipient is on the suppression list after an earlier hard bounce (simulated).",
    "Failed": "The message could not be delivered (simulated failure).",
    "Quarantined": "The recipient's mail server quarantined the message (simulated).",
    "FilteredSpam": "The recipient's mail server rejected the message as spam (simulated).",
}

SMS_STATUS_DETAILS = {
    "Delivered": "No error.",
    "Failed": "Message could not be delivered to the handset (simulated failure).",
}


#: The ``topic`` of foreign report copies: an ACS resource in someone else's subscription.
FOREIGN_RESOURCE_ID = (
    "/subscriptions/ffffffff-ffff-ffff-ffff-ffffffffffff/resourceGroups/foreign"
    "/providers/Microsoft.Communication/communicationServices/foreign"
)


def utc_now_iso() -> str:
    """ISO 8601 UTC time with seconds fraction and a ``Z``, as Event Grid writes ``eventTime``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def email_delivery_event(
    *,
    topic: str,
    sender: str,
    recipient: str,
    message_id: str,
    internet_message_id: str,
    status: str,
) -> dict[str, Any]:
    now = utc_now_iso()
    details: dict[str, Any] = {"statusMessage": EMAIL_STATUS_MESSAGES.get(status, status)}
    if status in ("Delivered", "Bounced", "Quarantined", "FilteredSpam"):
        details["recipientMailServerHostName"] = "mx." + recipient.rpartition("@")[2].lower()
    return {
        "id": str(uuid.uuid4()),
        "topic": topic,
        "subject": f"sender/{sender}/message/{message_id}",
        "data": {
            "sender": sender,
            "recipient": recipient,
            "messageId": message_id,
            "internetMessageId": internet_message_id,
            "status": status,
            "deliveryStatusDetails": details,
            "deliveryAttemptTimestamp": now,
        },
        "eventType": EMAIL_DELIVERY_REPORT,
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": now,
    }


def sms_segments(message: str) -> int:
    """Number of SMS segments: GSM-7-ish ASCII 160/153 characters, otherwise UCS-2 70/67."""
    if message.isascii():
        single, multi = 160, 153
    else:
        single, multi = 70, 67
    length = len(message)
    if length <= single:
        return 1
    return -(-length // multi)


def sms_delivery_event(
    *,
    topic: str,
    message_id: str,
    sender: str,
    to: str,
    status: str,
    segments: int,
    sent_at: str,
    tag: str | None,
) -> dict[str, Any]:
    now = utc_now_iso()
    delivered = status == "Delivered"
    data: dict[str, Any] = {
        "messageId": message_id,
        "from": sender,
        "to": to,
        "deliveryStatus": status,
        "deliveryStatusDetails": SMS_STATUS_DETAILS.get(status, status),
        "receivedTimestamp": now,
        "deliveryAttempts": [
            {
                "timestamp": sent_at,
                "segmentsSucceeded": segments if delivered else 0,
                "segmentsFailed": 0 if delivered else segments,
            }
        ],
    }
    if tag is not None:
        data["tag"] = tag
    return {
        "id": message_id,
        "topic": topic,
        "subject": "/phonenumber/" + to.lstrip("+"),
        "data": data,
        "eventType": SMS_DELIVERY_REPORT,
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": now,
    }


def foreign_copy(event: dict[str, Any], topic: str = FOREIGN_RESOURCE_ID) -> dict[str, Any]:
    """The same report as if another ACS resource had published it: other ``topic``, new ``id``."""
    return {**copy.deepcopy(event), "id": str(uuid.uuid4()), "topic": topic}


def event_channel(event: dict[str, Any]) -> str:
    return "sms" if event.get("eventType") == SMS_DELIVERY_REPORT else "email"


def event_status(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    return str(data.get("deliveryStatus") or data.get("status") or "unknown")


#: Outcome passed to a job's ``on_done``: the events reached the webhook, or were dropped.
POSTED = "posted"
GAVE_UP = "gaveUp"

#: Job kinds: the report's first delivery, a redelivery of it, a copy from a foreign topic.
FIRST = "first"
DUPLICATE = "duplicate"
FOREIGN = "foreign"
KINDS = (FIRST, DUPLICATE, FOREIGN)


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    events: list[dict[str, Any]] = field(compare=False)
    on_done: Callable[[str], None] | None = field(compare=False)
    generation: int = field(compare=False)
    deadline: float = field(compare=False)
    attempts: int = field(default=0, compare=False)
    kind: str = field(default=FIRST, compare=False)


class ReportDispatcher:
    """Posts scheduled report batches to a webhook from one daemon thread."""

    def __init__(
        self,
        webhook_url: str,
        webhook_token: str = "",
        *,
        retry_interval_s: float = 0.5,
        give_up_after_s: float = 60.0,
        max_batch: int = 100,
        timeout_s: float = 10.0,
    ) -> None:
        self._url = webhook_url
        self._token = webhook_token
        self._retry_interval_s = retry_interval_s
        self._give_up_after_s = give_up_after_s
        self._max_batch = max_batch
        self._timeout_s = timeout_s
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._generation = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._in_flight = 0
        self._reset_counters()

    def _reset_counters(self) -> None:
        """Zero the statistics (the caller holds ``_cond`` or is the constructor)."""
        self._posted: dict[tuple[str, str], dict[str, int]] = {}  # (channel, kind) -> status -> events
        self._event_pending: dict[str, int] = {"email": 0, "sms": 0}
        self._gave_up: dict[str, int] = {"email": 0, "sms": 0}
        self._webhook_posts = 0
        self._webhook_failures = 0
        self._webhook_totals: dict[str, int] = {}

    # -- scheduling -----------------------------------------------------------------------------
    def schedule(
        self,
        delay_s: float,
        events: list[dict[str, Any]],
        on_done: Callable[[str], None] | None,
        *,
        kind: str = FIRST,
    ) -> None:
        """Post ``events`` after ``delay_s``; call ``on_done(POSTED | GAVE_UP)`` afterwards.

        A job without events (or with reports turned off) only waits and then calls
        ``on_done(POSTED)``, which lets the caller move an operation on at the same pace.
        ``kind`` (:data:`FIRST`, :data:`DUPLICATE`, :data:`FOREIGN`) only matters to :meth:`stats`.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        due = time.monotonic() + max(delay_s, 0.0)
        with self._cond:
            job = _Job(
                due, next(self._seq), list(events), on_done, self._generation, due + self._give_up_after_s, kind=kind
            )
            for event in job.events:
                self._event_pending[event_channel(event)] += 1
            heapq.heappush(self._heap, job)
            self._ensure_started()
            self._cond.notify()

    def clear(self) -> int:
        """Drop every report not yet posted (including batches being retried). Returns how many jobs."""
        with self._cond:
            dropped = len(self._heap)
            self._heap.clear()
            self._generation += 1
            self._reset_counters()
            self._cond.notify()
        return dropped

    def pending(self) -> int:
        """Jobs waiting or being posted right now."""
        with self._cond:
            return len(self._heap) + self._in_flight

    def stats(self) -> dict[str, Any]:
        """Counters since the start (or the last :meth:`clear`), in events, per channel:

        * ``reports``: first deliveries posted, by status (the unique reports);
        * ``duplicatesPosted`` / ``foreignPosted``: redeliveries and foreign copies posted;
        * ``pending``: events of every kind scheduled and not yet posted or dropped;
        * ``gaveUp``: events dropped after ``give_up_after_s`` of failed POSTs;

        and ``webhook``: 2xx POSTs, failed attempts (error or non-2xx) and ``responses``, the sums
        of the integer fields of the webhook's JSON object answers.
        """
        with self._cond:
            channels: dict[str, Any] = {}
            for channel in ("email", "sms"):
                channels[channel] = {
                    "reports": dict(sorted(self._posted.get((channel, FIRST), {}).items())),
                    "duplicatesPosted": sum(self._posted.get((channel, DUPLICATE), {}).values()),
                    "foreignPosted": sum(self._posted.get((channel, FOREIGN), {}).values()),
                    "pending": self._event_pending[channel],
                    "gaveUp": self._gave_up[channel],
                }
            return {
                "channels": channels,
                "webhook": {
                    "posts": self._webhook_posts,
                    "failedAttempts": self._webhook_failures,
                    "responses": dict(self._webhook_totals),
                },
            }

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.pending() == 0:
                return True
            time.sleep(0.01)
        return self.pending() == 0

    # -- thread lifecycle -----------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="acs-emulator-reports", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        with self._cond:
            self._stopping = True
            left = len(self._heap)
            self._cond.notify()
            thread = self._thread
        if left:
            logger.info("Report dispatcher stopping with %d report batch(es) not posted", left)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # -- worker ---------------------------------------------------------------------------------
    def _take_due(self) -> list[_Job] | None:
        """Block until jobs are due; return them (None when stopping)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0].due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                jobs: list[_Job] = []
                count = 0
                ids: set[Any] = set()
                now = time.monotonic()
                while self._heap and self._heap[0].due <= now:
                    head = self._heap[0]
                    if jobs and count + len(head.events) > self._max_batch:
                        break
                    head_ids = {event.get("id") for event in head.events}
                    if ids & head_ids:
                        break  # a duplicate of an event in this batch: it goes in the next POST
                    job = heapq.heappop(self._heap)
                    jobs.append(job)
                    count += len(job.events)
                    ids |= head_ids
                self._in_flight += len(jobs)
                return jobs

    def _run(self) -> None:
        client = httpx.Client(timeout=self._timeout_s)
        try:
            while True:
                jobs = self._take_due()
                if jobs is None:
                    return
                try:
                    self._deliver(client, jobs)
                finally:
                    with self._cond:
                        self._in_flight -= len(jobs)
        finally:
            client.close()

    def _deliver(self, client: httpx.Client, jobs: list[_Job]) -> None:
        events = [event for job in jobs for event in job.events]
        ok = True
        answer: Any = None
        if events and self._url:
            attempt = max(job.attempts for job in jobs) + 1
            ok, answer = self._post(client, events, attempt)
        elif events:
            logger.debug("Reports are turned off (no webhook_url); %d event(s) not posted", len(events))
        now = time.monotonic()
        finished: list[tuple[_Job, str]] = []
        with self._cond:
            if events and self._url and any(job.generation == self._generation for job in jobs):
                self._count_answer(ok, answer)
            for job in jobs:
                if job.generation != self._generation:
                    continue  # cleared while being posted
                if ok or now >= job.deadline or self._stopping:
                    self._count_done(job, (POSTED if self._url else None) if ok else GAVE_UP)
                if ok:
                    finished.append((job, POSTED))
                elif now >= job.deadline or self._stopping:
                    finished.append((job, GAVE_UP))
                else:
                    job.attempts += 1
                    job.due = now + self._retry_interval_s
                    heapq.heappush(self._heap, job)
            if any(outcome == GAVE_UP for _, outcome in finished):
                logger.warning(
                    "Gave up posting %d delivery report(s) after %.0f s of failures",
                    sum(len(job.events) for job, outcome in finished if outcome == GAVE_UP),
                    self._give_up_after_s,
                )
        for job, outcome in finished:
            if job.on_done is not None:
                try:
                    job.on_done(outcome)
                except Exception:  # noqa: BLE001 - a callback must not kill the thread
                    logger.exception("Report completion callback failed")

    def _count_done(self, job: _Job, outcome: str | None) -> None:
        """Count a finished job's events: posted, given up, or (None) dropped as reports are off."""
        for event in job.events:
            channel = event_channel(event)
            self._event_pending[channel] -= 1
            if outcome == POSTED:
                by_status = self._posted.setdefault((channel, job.kind), {})
                status = event_status(event)
                by_status[status] = by_status.get(status, 0) + 1
            elif outcome == GAVE_UP:
                self._gave_up[channel] += 1

    def _count_answer(self, ok: bool, answer: Any) -> None:
        if not ok:
            self._webhook_failures += 1
            return
        self._webhook_posts += 1
        if isinstance(answer, dict):
            for name, value in answer.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    self._webhook_totals[name] = self._webhook_totals.get(name, 0) + value

    def _post(self, client: httpx.Client, events: list[dict[str, Any]], attempt: int) -> tuple[bool, Any]:
        """POST one batch; returns whether the webhook took it (2xx) and its JSON answer, if any."""
        headers = {
            "Content-Type": "application/json",
            "aeg-event-type": "Notification",
            "aeg-subscription-name": "ACS-EMULATOR",
            "aeg-delivery-count": str(attempt - 1),
            "aeg-data-version": "1.0",
            "aeg-metadata-version": "1",
        }
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        try:
            response = client.post(self._url, content=json.dumps(events), headers=headers)
        except httpx.HTTPError as exc:
            if attempt == 1 or attempt % 20 == 0:
                logger.info("Webhook not reachable (attempt %d, %s); will retry", attempt, type(exc).__name__)
            return False, None
        if 200 <= response.status_code < 300:
            logger.info("Posted %d delivery report(s) to the webhook (attempt %d)", len(events), attempt)
            try:
                answer = response.json() if response.content else None
            except ValueError:
                answer = None
            return True, answer
        if attempt == 1 or attempt % 20 == 0:
            logger.info("Webhook answered %d (attempt %d); will retry", response.status_code, attempt)
        return False, None
