"""The operator dashboard's figures: what happened to the notifications accepted in each hour, per
channel, and the failure rate against the thresholds the reconciler alerts on.

The hours are whole clock hours, the last one the current hour, so a figure does not change its
bucket between two refreshes. Each hour is one ``Ledger.status_counts`` call: both ledgers already
read a window by its hours (an index range in SQLite, an hour partition in Table Storage), so
twenty-four calls read what one call over the day would (see ``bench/dashboard_buckets.py``).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from ..domain.commands import FailureRateThresholds
from ..domain.model import Channel
from .handlers import FAILURE_STATUSES, SENT_OR_LATER, StatusCounts, count_statuses, summarise_counts
from .ports import Clock, Ledger

MAX_HOURS = 24 * 7
#: What each hour shows per channel, in the order the page draws them.
SERIES = ("sent", "delivered", "bounced", "failed", "deadLettered")


def dashboard_figures(*, ledger: Ledger, clock: Clock, hours: int, thresholds: FailureRateThresholds) -> dict:
    if not 1 <= hours <= MAX_HOURS:
        raise ValueError(f"hours must be 1 to {MAX_HOURS}")
    now = clock.now()
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    starts = [first + timedelta(hours=i) for i in range(hours)]
    channels = list(Channel)

    per_hour: list[StatusCounts] = [ledger.status_counts(start=s, end=s + timedelta(hours=1)) for s in starts]
    window: Counter = Counter()
    for counts in per_hour:
        window.update(counts)
    hourly = [{c: summarise_counts(counts, [c]) for c in channels} for counts in per_hour]

    return {
        "from": first.isoformat(),
        "to": (starts[-1] + timedelta(hours=1)).isoformat(),
        "generatedAt": now.isoformat(),
        "bucketMinutes": 60,
        "hours": [s.isoformat() for s in starts],
        "channels": {
            c.value: {
                "series": {name: [figures[c][name] for figures in hourly] for name in SERIES},
                "totals": summarise_counts(window, [c]),
            }
            for c in channels
        },
        "failureRate": _failure_rate(ledger, thresholds, now),
    }


def _failure_rate(ledger: Ledger, thresholds: FailureRateThresholds, now: datetime) -> dict:
    """The rate exactly as the reconciler judges it: over the last ``window_minutes``, not the
    dashboard's hours, so the page and the alert never disagree."""
    start = now - timedelta(minutes=thresholds.window_minutes)
    counts = ledger.status_counts(start=start, end=now)

    def judged(channel: Channel) -> dict:
        sent = count_statuses(counts, [channel], *SENT_OR_LATER, reached=True)
        failures = count_statuses(counts, [channel], *FAILURE_STATUSES, reached=True)
        rate = round(failures / sent, 4) if sent else 0.0
        if sent < thresholds.min_sent:
            level = "too-few-sends"
        else:
            level = thresholds.level(rate, sent) or "ok"
        return {"sent": sent, "failures": failures, "rate": rate, "level": level}

    return {
        "from": start.isoformat(),
        "to": now.isoformat(),
        "windowMinutes": thresholds.window_minutes,
        "minSent": thresholds.min_sent,
        "warning": thresholds.warning,
        "critical": thresholds.critical,
        "channels": {c.value: judged(c) for c in Channel},
    }
