"""Send quotas, in one place.

* ACS refuses sends past its per-subscription limits with 429 and counts the refused request
  against the quota anyway (custom email domain: 30 sends a minute and 100 an hour; an
  Azure-managed domain: 5 and 10; SMS toll-free: 200 message units a minute per number). So the
  dispatcher asks a shared ``RateLimiter`` for units *before* sending and, when refused, defers the
  notification to the time the limiter names: a quota is a reason to wait, never a failure.
* A ``SendQuota`` is a set of rolling windows: never more than ``limit`` units in any window of that
  length, wherever it starts. Rolling, not fixed buckets, because ACS does not promise bucket
  boundaries and a fixed bucket lets twice the limit through around its edge.
* A new sending domain should ramp up over 2-4 weeks ("warm-up"): mail providers judge a domain by
  its history, and a sudden burst from an unknown domain reads as spam. A ``WarmupSchedule`` caps
  the hourly volume by the day (UTC) since its start, and the effective hourly limit is the lower of
  the warm-up cap and ``per_hour``. When the schedule ends it stops capping.
* A request for more units than a limit can ever hold (a large SMS batch) is let into an *empty*
  window only, so it is never stuck forever and is still the only thing in its window.
* ``None`` or ``0`` means unlimited, so an unset setting switches a limit off.

This module is pure (no clock, no I/O): adapters hand it what they have logged and the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterable

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class WarmupSchedule:
    """Hourly caps by day: on day ``k`` after ``start`` (UTC) the cap is
    ``hourly_steps[k // step_days]``; before ``start`` the first step applies; after the last step
    ends there is no cap."""

    start: date
    hourly_steps: tuple[int, ...]
    step_days: int = 1

    def __post_init__(self) -> None:
        if not self.hourly_steps:
            raise ValueError("a warm-up needs at least one hourly step")
        if any(step < 1 for step in self.hourly_steps):
            raise ValueError(f"warm-up hourly steps must be positive, got {list(self.hourly_steps)}")
        if self.step_days < 1:
            raise ValueError("warm-up step_days must be at least 1")

    def _step(self, now: datetime) -> int:
        days = (now.astimezone(timezone.utc).date() - self.start).days
        return max(days, 0) // self.step_days

    def hourly_cap(self, now: datetime) -> int | None:
        step = self._step(now)
        return self.hourly_steps[step] if step < len(self.hourly_steps) else None

    def next_change(self, now: datetime) -> datetime | None:
        """Midnight (UTC) when the cap next changes, or None once the schedule has ended."""
        step = self._step(now)
        if step >= len(self.hourly_steps):
            return None
        day = self.start + timedelta(days=(step + 1) * self.step_days)
        return datetime.combine(day, time(0), timezone.utc)


@dataclass(frozen=True)
class SendQuota:
    per_minute: int | None
    per_hour: int | None
    warmup: WarmupSchedule | None = None

    def __post_init__(self) -> None:
        for name in ("per_minute", "per_hour"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")

    def limits(self, now: datetime) -> list[tuple[timedelta, int]]:
        """The (window, limit) pairs in force at ``now``; empty when nothing limits."""
        limits = [(MINUTE, self.per_minute)] if self.per_minute else []
        hourly = [cap for cap in (self.per_hour or None, self.warmup and self.warmup.hourly_cap(now)) if cap]
        if hourly:
            limits.append((HOUR, min(hourly)))
        return limits

    @property
    def horizon(self) -> timedelta:
        """The longest window this quota can ever use: older log entries no longer matter."""
        if self.per_hour or self.warmup:
            return HOUR
        return MINUTE if self.per_minute else timedelta(0)

    def blocked_until(self, taken: Iterable[tuple[datetime, int]], units: int, now: datetime) -> datetime | None:
        """None when ``units`` fit every limit at ``now``, given the ``(time, units)`` already
        taken; otherwise the earliest time they could fit if nothing more is taken meanwhile.

        Exact while the limits stay the same; when a warm-up step changes them sooner, that moment
        is returned instead (a caller retrying then gets an exact answer under the new limits).
        """
        if units < 1:
            raise ValueError(f"units must be at least 1, got {units}")
        taken = sorted(taken)
        retry_at: datetime | None = None
        for window, limit in self.limits(now):
            inside = [(t, n) for t, n in taken if t > now - window]
            # Oversized requests only enter an empty window (see the module docstring).
            excess = sum(n for _, n in inside) - (limit - units if units <= limit else 0)
            if excess <= 0:
                continue
            # The oldest entries leave first: there is room once the entry that brings the excess
            # down to zero has left, at its time + window.
            for t, n in inside:
                excess -= n
                if excess <= 0:
                    break
            retry_at = t + window if retry_at is None else max(retry_at, t + window)
        if retry_at is not None and self.warmup is not None:
            change = self.warmup.next_change(now)
            if change is not None and change < retry_at:
                retry_at = change
        return retry_at


def parse_warmup(start: str | None, steps: str | None) -> WarmupSchedule | None:
    """A schedule from settings such as ``EMAIL_WARMUP_START=2026-11-01`` and
    ``EMAIL_WARMUP_HOURLY=50,100,200,400,800`` (one step a day). Both empty: no warm-up."""
    start, steps = (start or "").strip(), (steps or "").strip()
    if not start and not steps:
        return None
    if not start or not steps:
        missing = "start date" if not start else "hourly steps"
        raise ValueError(f"a warm-up needs both a start date and hourly steps; the {missing} is missing")
    try:
        first_day = date.fromisoformat(start)
    except ValueError:
        raise ValueError(f"warm-up start must be a date as YYYY-MM-DD, got {start!r}") from None
    try:
        hourly = tuple(int(part) for part in steps.split(","))
    except ValueError:
        raise ValueError(f"warm-up hourly steps must be whole numbers separated by commas, got {steps!r}") from None
    return WarmupSchedule(first_day, hourly)
