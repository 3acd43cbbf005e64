from datetime import date, datetime, timedelta, timezone

import pytest

from shared.service.quota import HOUR, MINUTE, SendQuota, WarmupSchedule, parse_warmup

START = date(2026, 11, 1)


def on(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


def days_after_start(days: int, hour: int = 12) -> datetime:
    return on(START + timedelta(days=days), hour)


def test_the_warm_up_cap_steps_up_every_step_days_and_lifts_after_the_last_step():
    warmup = WarmupSchedule(START, (50, 100, 200), step_days=2)

    caps = [warmup.hourly_cap(days_after_start(k)) for k in range(7)]

    assert caps == [50, 50, 100, 100, 200, 200, None]


def test_before_its_start_the_warm_up_applies_its_first_step():
    warmup = WarmupSchedule(START, (50, 100))
    assert warmup.hourly_cap(days_after_start(-30)) == 50
    assert warmup.next_change(days_after_start(-30)) == days_after_start(1, hour=0)


def test_warm_up_days_are_counted_in_utc_whatever_the_time_zone_of_now():
    warmup = WarmupSchedule(START, (50, 100))
    late_evening_in_seattle = datetime(2026, 11, 1, 17, tzinfo=timezone(timedelta(hours=-8)))  # 01:00 UTC on day 1
    assert warmup.hourly_cap(late_evening_in_seattle) == 100


def test_the_next_change_is_the_midnight_when_the_step_ends_and_none_after_the_schedule():
    warmup = WarmupSchedule(START, (50, 100))
    assert warmup.next_change(days_after_start(0, hour=23)) == days_after_start(1, hour=0)
    assert warmup.next_change(days_after_start(1)) == days_after_start(2, hour=0)
    assert warmup.next_change(days_after_start(2)) is None


def test_the_hourly_limit_is_the_lower_of_per_hour_and_the_warm_up_cap():
    quota = SendQuota(per_minute=30, per_hour=100, warmup=WarmupSchedule(START, (50, 100, 200)))

    assert quota.limits(days_after_start(0)) == [(MINUTE, 30), (HOUR, 50)]
    assert quota.limits(days_after_start(2)) == [(MINUTE, 30), (HOUR, 100)]
    assert quota.limits(days_after_start(9)) == [(MINUTE, 30), (HOUR, 100)]


def test_a_warm_up_alone_caps_the_hour_until_it_ends():
    quota = SendQuota(per_minute=None, per_hour=None, warmup=WarmupSchedule(START, (50,)))
    assert quota.limits(days_after_start(0)) == [(HOUR, 50)]
    assert quota.limits(days_after_start(1)) == []


@pytest.mark.parametrize("per_minute, per_hour", [(None, None), (0, 0), (0, None)])
def test_none_or_zero_means_unlimited(per_minute, per_hour):
    quota = SendQuota(per_minute=per_minute, per_hour=per_hour)
    assert quota.limits(days_after_start(0)) == []
    assert quota.blocked_until([(days_after_start(0), 10**6)], 1, days_after_start(0)) is None


def test_blocked_until_names_when_enough_old_units_leave_every_window():
    quota = SendQuota(per_minute=3, per_hour=4)
    t0 = days_after_start(0)
    taken = [(t0, 1), (t0 + timedelta(seconds=10), 1), (t0 + timedelta(minutes=5), 2)]
    now = t0 + timedelta(minutes=5, seconds=30)

    # The minute window holds 2 of 3 (one unit fits); the hour holds 4 of 4, and needs 2 units
    # to leave for 2 more, so both early rows: the second leaves at t0 + 1 h + 10 s.
    assert quota.blocked_until(taken, 1, now) == t0 + HOUR
    assert quota.blocked_until(taken, 2, now) == t0 + HOUR + timedelta(seconds=10)


def test_parse_warmup_reads_a_start_date_and_comma_separated_hourly_steps():
    assert parse_warmup("2026-11-01", "50, 100,200") == WarmupSchedule(START, (50, 100, 200))


@pytest.mark.parametrize("start, steps", [(None, None), ("", ""), ("  ", None)])
def test_parse_warmup_without_either_setting_means_no_warm_up(start, steps):
    assert parse_warmup(start, steps) is None


@pytest.mark.parametrize(
    "start, steps, message",
    [
        ("2026-11-01", None, "hourly steps is missing"),
        ("", "50,100", "start date is missing"),
        ("01/11/2026", "50", "YYYY-MM-DD"),
        ("2026-13-01", "50", "YYYY-MM-DD"),
        ("2026-11-01", "50,,100", "whole numbers separated by commas"),
        ("2026-11-01", "50,lots", "whole numbers separated by commas"),
        ("2026-11-01", "50,0", "must be positive"),
        ("2026-11-01", "-5", "must be positive"),
    ],
)
def test_parse_warmup_rejects_bad_settings_with_a_clear_message(start, steps, message):
    with pytest.raises(ValueError, match=message):
        parse_warmup(start, steps)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SendQuota(per_minute=-1, per_hour=None), "per_minute must not be negative"),
        (lambda: SendQuota(per_minute=None, per_hour=-100), "per_hour must not be negative"),
        (lambda: WarmupSchedule(START, ()), "at least one hourly step"),
        (lambda: WarmupSchedule(START, (50, 0)), "must be positive"),
        (lambda: WarmupSchedule(START, (50,), step_days=0), "step_days"),
    ],
)
def test_quotas_and_schedules_refuse_impossible_values(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_asking_for_no_units_is_a_mistake():
    with pytest.raises(ValueError, match="units"):
        SendQuota(per_minute=1, per_hour=None).blocked_until([], 0, days_after_start(0))
