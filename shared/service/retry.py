"""Retry policy, in one place.

* Transient failures (throttling, 5xx, timeouts) are retried with exponential backoff and full
  jitter: the delay is uniform in ``[0, min(max_seconds, base_seconds * 2**(attempt-1))]``, so a
  burst of failures does not come back as a burst. ACS's ``Retry-After`` is a floor (sending sooner
  is refused and counts against the quota) and ``max_seconds`` the cap.
* Permanent and configuration failures are never retried: more attempts cannot help, and a
  wrong key retried in a hot loop only burns quota. They are dead-lettered at once with their own
  reason, so an operator can fix the cause and replay.
* When ``max_attempts`` attempts have failed, the notification is dead-lettered with
  ``MaxAttemptsExceeded`` and the last error as the description.

The delay becomes a scheduled enqueue of the next attempt, never a sleep in the worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from ..domain.errors import SendError, TransientSendError

MAX_ATTEMPTS_EXCEEDED = "MaxAttemptsExceeded"


@dataclass(frozen=True)
class RetryLater:
    delay_seconds: float


@dataclass(frozen=True)
class GiveUp:
    reason: str
    description: str


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 2.0
    max_seconds: float = 900.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.base_seconds <= self.max_seconds:
            raise ValueError("need 0 < base_seconds <= max_seconds")

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(attempt - 1, 0))
        delay = self.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_seconds)

    def decide(self, attempt: int, error: SendError) -> RetryLater | GiveUp:
        """What to do after ``attempt`` (1-based) failed with ``error``."""
        if not isinstance(error, TransientSendError):
            return GiveUp(error.reason, error.describe())
        if attempt >= self.max_attempts:
            return GiveUp(MAX_ATTEMPTS_EXCEEDED, f"{attempt} attempts failed; last: {error.describe()}")
        return RetryLater(self.backoff(attempt, error.retry_after))
