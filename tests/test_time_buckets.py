"""One time-bucketing rule (llm/metrics.py): which period a window is shown by, and which periods it touches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from llm import metrics


@pytest.mark.parametrize(
    ("length", "group_by"),
    [
        (timedelta(minutes=1), "minute"),
        (timedelta(hours=1), "minute"),
        (timedelta(hours=2), "minute"),
        (timedelta(hours=2, seconds=1), "hour"),
        (timedelta(hours=24), "hour"),
        (timedelta(days=7), "hour"),
        (timedelta(days=7, seconds=1), "day"),
        (timedelta(days=30), "day"),
        (timedelta(days=90), "day"),
        (timedelta(days=180), "day"),
        (timedelta(days=181), "month"),
        (timedelta(days=366), "month"),
    ],
)
def test_one_bucket_rule(length, group_by):
    assert metrics.group_by_for(length) == group_by


def test_hours_of_a_day_that_loses_one_are_23(settings):
    settings.TIME_ZONE = "Europe/Paris"
    with timezone.override("Europe/Paris"):
        start = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # midnight in Paris, the night clocks go forward
        periods = metrics.period_starts(start, start + timedelta(hours=23), "hour")
        assert len(periods) == 23
        instants = [period.astimezone(UTC) for period in periods]  # same-zone subtraction is wall time
        assert all(
            later - earlier == timedelta(hours=1) for earlier, later in zip(instants, instants[1:], strict=False)
        )
        assert {period.minute for period in periods} == {0}
        assert [period.hour for period in periods[:4]] == [0, 1, 3, 4]
        days = metrics.period_starts(start, start + timedelta(days=3, hours=-1), "day")  # to Apr 1, 00:00
        assert [(day.day, day.hour) for day in days] == [(29, 0), (30, 0), (31, 0)]


def test_hours_of_a_day_that_gains_one_are_25(settings):
    settings.TIME_ZONE = "Europe/Paris"
    with timezone.override("Europe/Paris"):
        start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # midnight in Paris, the night clocks go back
        periods = metrics.period_starts(start, start + timedelta(hours=25), "hour")
        assert len({period.astimezone(UTC) for period in periods}) == len(periods) == 25
        assert [period.hour for period in periods[:5]] == [0, 1, 2, 2, 3]


def test_periods_start_where_the_database_truncates():
    start = datetime(2026, 3, 10, 12, 34, 56, 789, tzinfo=UTC)
    periods = metrics.period_starts(start, start + timedelta(minutes=3), "minute")
    assert [timezone.localtime(period).replace(tzinfo=None).second for period in periods] == [0, 0, 0, 0]
    assert len(periods) == 4  # 12:34 (partial), 12:35, 12:36, 12:37 (partial)


def test_months_and_too_many_periods_are_not_filled():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert metrics.period_starts(start, start + timedelta(days=400), "month") is None
    assert metrics.period_starts(start, start + timedelta(days=2), "minute") is None  # 2,880 > MAX_FILLED_PERIODS
