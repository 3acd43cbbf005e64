"""In-memory state of the emulator (messages, email operations, SMS repeatability, faults) and the
simulator rules that decide each recipient's outcome. Every access goes through one lock: the
request handlers and the report thread both touch it.
"""

from __future__ import annotations

import random
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# -- simulator rules ----------------------------------------------------------------------------

EMAIL_SIMULATOR_LOCAL_PARTS = {
    "bounce": "Bounced",
    "suppressed": "Suppressed",
    "failed": "Failed",
    "quarantined": "Quarantined",
    "filteredspam": "FilteredSpam",
    "noreport": None,
}

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def email_outcome(address: str) -> str | None:
    """Simulated delivery status for an address; ``None`` means no report is ever sent.

    The local part is matched case-insensitively, ignoring a ``+tag`` suffix.
    """
    local = address.rpartition("@")[0].split("+", 1)[0].lower()
    return EMAIL_SIMULATOR_LOCAL_PARTS.get(local, "Delivered")


def sms_outcome(number: str) -> str | None:
    """Simulated SMS delivery status; ``None`` means no report is ever sent."""
    if number.endswith("0001"):
        return "Failed"
    if number.endswith("0002"):
        return None
    return "Delivered"


# -- records --------------------------------------------------------------------------------------

REPORT_PENDING = "pending"  # will be posted after the report delay
REPORT_POSTED = "posted"  # reached the webhook
REPORT_GAVE_UP = "gaveUp"  # the webhook never took it; dropped
REPORT_NONE = "none"  # the simulator sends no report for this recipient
REPORT_DISABLED = "disabled"  # SMS sent with enableDeliveryReport false


@dataclass
class RecipientReport:
    status: str | None
    report: str

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "report": self.report}


@dataclass
class MessageRecord:
    id: str
    channel: str  # "email" | "sms"
    sender: str
    recipients: list[str]
    received_at: str
    reports: dict[str, RecipientReport]
    operation_id: str | None = None
    repeatability_request_id: str | None = None
    status: str | None = None  # email operation status
    details: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "channel": self.channel,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "receivedAt": self.received_at,
            "reportStatus": {address: r.to_json() for address, r in self.reports.items()},
        }
        if self.channel == "email":
            out["operationId"] = self.operation_id
            out["status"] = self.status
        else:
            out["repeatabilityRequestId"] = self.repeatability_request_id
        out.update(self.details)
        return out


@dataclass
class EmailOperation:
    id: str
    status: str
    body_hash: str
    record: MessageRecord


FAULT_KEYS = {
    "latencyMs": "latency_ms",
    "throttleRate": "throttle_rate",
    "retryAfterSeconds": "retry_after_seconds",
    "serverErrorRate": "server_error_rate",
    "duplicateReportRate": "duplicate_report_rate",
    "reportDelayJitterMs": "report_delay_jitter_ms",
    "foreignReportRate": "foreign_report_rate",
}
#: Fault keys that are probabilities (0..1); the others are whole numbers >= 0.
RATE_KEYS = frozenset({"throttleRate", "serverErrorRate", "duplicateReportRate", "foreignReportRate"})


@dataclass
class Faults:
    latency_ms: int = 0
    throttle_rate: float = 0.0
    retry_after_seconds: int = 1
    server_error_rate: float = 0.0
    #: Probability that a report event is posted a second time (same event id), later, in its own POST.
    duplicate_report_rate: float = 0.0
    #: Each report waits ``report_delay_ms + uniform(0, report_delay_jitter_ms)``.
    report_delay_jitter_ms: int = 0
    #: Probability that a copy of a report is also posted from a foreign ``topic`` with a new event id.
    foreign_report_rate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {wire: getattr(self, attr) for wire, attr in FAULT_KEYS.items()}

    @staticmethod
    def validate(changes: dict[str, Any]) -> dict[str, Any]:
        """Check a partial update; returns attribute name -> value or raises ValueError."""
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object")
        unknown = sorted(set(changes) - set(FAULT_KEYS))
        if unknown:
            raise ValueError("unknown keys: " + ", ".join(unknown) + "; known: " + ", ".join(FAULT_KEYS))
        out: dict[str, Any] = {}
        for wire, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{wire} must be a number")
            if wire in RATE_KEYS:
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{wire} must be between 0 and 1")
                out[FAULT_KEYS[wire]] = float(value)
            else:
                if value < 0 or int(value) != value:
                    raise ValueError(f"{wire} must be a whole number >= 0")
                out[FAULT_KEYS[wire]] = int(value)
        return out


#: A duplicate report is posted at least this long after the first delivery is due.
DUPLICATE_MIN_GAP_S = 0.001


@dataclass(frozen=True)
class ReportPlan:
    """Delays (seconds from now) of one report event: its first delivery, and the duplicate and
    the foreign copy to post too (``None``: none)."""

    delay_s: float
    duplicate_delay_s: float | None = None
    foreign_delay_s: float | None = None


class EmulatorState:
    """Thread-safe store. Methods return copies/JSON, never live records, to callers outside."""

    def __init__(self, *, request_log_size: int = 1000, rng: random.Random | None = None) -> None:
        self.lock = threading.RLock()
        self._messages: dict[str, MessageRecord] = {}
        self._operations: dict[str, EmailOperation] = {}
        self._sms_repeatability: dict[str, dict[str, Any]] = {}
        self._requests: deque[dict[str, Any]] = deque(maxlen=request_log_size)
        self._seq = 0
        self.faults = Faults()
        self._rng = rng or random.Random()

    # -- faults ---------------------------------------------------------------------------------
    def get_faults(self) -> Faults:
        with self.lock:
            return Faults(**vars(self.faults))

    def update_faults(self, changes: dict[str, Any]) -> Faults:
        with self.lock:
            for attr, value in changes.items():
                setattr(self.faults, attr, value)
            return Faults(**vars(self.faults))

    def reset_faults(self) -> Faults:
        with self.lock:
            self.faults = Faults()
            return Faults()

    def plan_reports(self, count: int, delay_s: float) -> list[ReportPlan]:
        """When to post each of ``count`` report events, and which extra copies to post (the report
        faults). With every report fault at 0 each plan is ``ReportPlan(delay_s)``."""
        with self.lock:
            faults = self.faults
            jitter_s = faults.report_delay_jitter_ms / 1000.0
            plans = []
            for _ in range(count):
                first = delay_s + (self._rng.uniform(0.0, jitter_s) if jitter_s else 0.0)
                duplicate = foreign = None
                if faults.duplicate_report_rate > 0 and self._rng.random() < faults.duplicate_report_rate:
                    # Strictly later than the first delivery, by up to another delay + jitter.
                    duplicate = first + DUPLICATE_MIN_GAP_S + self._rng.uniform(0.0, delay_s + jitter_s)
                if faults.foreign_report_rate > 0 and self._rng.random() < faults.foreign_report_rate:
                    foreign = delay_s + (self._rng.uniform(0.0, jitter_s) if jitter_s else 0.0)
                plans.append(ReportPlan(first, duplicate, foreign))
            return plans

    def draw_fault(self) -> tuple[str | None, Faults]:
        """Decide whether this request is throttled (``"throttle"``), fails (``"server_error"``) or not."""
        with self.lock:
            faults = Faults(**vars(self.faults))
            if faults.throttle_rate > 0 and self._rng.random() < faults.throttle_rate:
                return "throttle", faults
            if faults.server_error_rate > 0 and self._rng.random() < faults.server_error_rate:
                return "server_error", faults
            return None, faults

    # -- messages -------------------------------------------------------------------------------
    def _add(self, record: MessageRecord) -> None:
        self._seq += 1
        record.seq = self._seq
        self._messages[record.id] = record

    def list_messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            records = sorted(self._messages.values(), key=lambda r: r.seq)
            return [r.to_json() for r in records if channel is None or r.channel == channel]

    def get_message(self, message_id: str) -> dict[str, Any] | None:
        with self.lock:
            record = self._messages.get(message_id)
            return record.to_json() if record else None

    def accepted_counts(self) -> dict[str, int]:
        """Messages accepted per channel (an email operation is one, an SMS recipient one)."""
        with self.lock:
            counts = {"email": 0, "sms": 0}
            for record in self._messages.values():
                counts[record.channel] += 1
            return counts

    def clear(self) -> int:
        with self.lock:
            count = len(self._messages)
            self._messages.clear()
            self._operations.clear()
            self._sms_repeatability.clear()
            self._requests.clear()
            return count

    # -- email ----------------------------------------------------------------------------------
    def find_operation(self, operation_id: str) -> tuple[str, str] | None:
        """``(id, status)`` of a known email operation."""
        with self.lock:
            op = self._operations.get(operation_id)
            return (op.id, op.status) if op else None

    def operation_body_hash(self, operation_id: str) -> str | None:
        with self.lock:
            op = self._operations.get(operation_id)
            return op.body_hash if op else None

    def add_email(self, record: MessageRecord, body_hash: str) -> tuple[bool, str]:
        """Record an accepted email unless its operation id is known.

        Returns ``(created, status)``; ``created`` is False for a repeated Operation-Id.
        """
        assert record.operation_id is not None
        with self.lock:
            existing = self._operations.get(record.operation_id)
            if existing is not None:
                return False, existing.status
            record.status = "Running"
            self._operations[record.operation_id] = EmailOperation(record.operation_id, "Running", body_hash, record)
            self._add(record)
            return True, "Running"

    def email_reports_done(
        self, operation_id: str, outcome: str, record: MessageRecord, recipients: list[str] | None = None
    ) -> None:
        """A report job of an email finished: mark the reports of ``recipients`` (all pending ones
        when None) and complete the operation once no report is pending."""
        with self.lock:
            op = self._operations.get(operation_id)
            if op is None or op.record is not record:
                return  # cleared in the meantime
            for address, report in record.reports.items():
                if report.report == REPORT_PENDING and (recipients is None or address in recipients):
                    report.report = outcome
            if any(report.report == REPORT_PENDING for report in record.reports.values()):
                return
            op.status = "Succeeded"
            record.status = "Succeeded"

    # -- sms ------------------------------------------------------------------------------------
    def sms_repeat(self, repeatability_request_id: str) -> dict[str, Any] | None:
        with self.lock:
            item = self._sms_repeatability.get(repeatability_request_id)
            return dict(item) if item else None

    def add_sms_result(
        self, repeatability_request_id: str | None, item: dict[str, Any], record: MessageRecord | None
    ) -> dict[str, Any]:
        """Store an SMS recipient result (and its message). If another request stored a result for
        the same repeatability id first, that one wins and is returned instead."""
        with self.lock:
            if repeatability_request_id is not None:
                earlier = self._sms_repeatability.get(repeatability_request_id)
                if earlier is not None:
                    return dict(earlier)
                self._sms_repeatability[repeatability_request_id] = dict(item)
            if record is not None:
                self._add(record)
            return dict(item)

    def sms_report_done(self, message_id: str, outcome: str, record: MessageRecord) -> None:
        with self.lock:
            if self._messages.get(message_id) is not record:
                return
            for report in record.reports.values():
                if report.report == REPORT_PENDING:
                    report.report = outcome

    # -- request log ----------------------------------------------------------------------------
    def log_request(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self._requests.append(entry)

    def list_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(e) for e in self._requests]
