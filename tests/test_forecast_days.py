"""The forecasts' history read by days (llm/forecast.py, "Reading the history by days"): the days
every scenario reads whole come from the daily roll-ups, placed on their first hour. The figures
must be those of the calls read hour by hour: checked against the projection of hourly costs
summed in plain Python from the stored calls, in a zone with a daylight saving change inside the
history, with calls not rolled up yet, and with a first call on the very day that decides whether
the oldest scenario has history."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import forecast, rollups
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

ZONE = "Europe/Paris"  # summer time from 29 March 2026: a week of 167 local hours in the history
NOW = datetime(2026, 4, 15, 10, 37, 12, tzinfo=UTC)  # a Wednesday, not on the hour
PERIODS = ["day", "week", "month"]
MODEL = "model-a"
SCOPES = [forecast.Scope(), forecast.Scope("model", MODEL)]


@pytest.fixture
def paris(settings):
    settings.TIME_ZONE = ZONE


def random_calls(first: datetime, count: int, seed: int, now: datetime = NOW) -> None:
    """`count` calls between `first` and `now` of two models, at random times and costs."""
    rng = random.Random(seed)
    seconds = int((now - first).total_seconds())
    make_logs(
        count,
        timestamp=lambda index: first + timedelta(seconds=rng.randrange(seconds)),
        model_name=lambda index: MODEL if index % 3 else "model-b",
        cost_estimate=lambda index: Decimal(rng.randrange(1, 10**6)) / Decimal(10**7),
    )


def expected(
    scope: forecast.Scope, period: str, now: datetime = NOW, periods: tuple[str, ...] = tuple(PERIODS)
) -> tuple[forecast.Forecast, Decimal]:
    """The forecast and the period's spend from hourly costs summed in Python over the stored calls
    of the weeks a reading of `periods` covers (HISTORY_WEEKS + 1 before the earliest start)."""
    first = min(forecast.period_bounds(name, now)[0] for name in periods) - (forecast.HISTORY_WEEKS + 1) * forecast.WEEK
    start, end = forecast.period_bounds(period, now)
    hourly: dict[datetime, Decimal] = defaultdict(Decimal)
    spent = Decimal(0)
    for moment, model_name, cost in LLMRequestLog.objects.values_list("timestamp", "model_name", "cost_estimate"):
        if moment >= first and (scope.kind == "all" or model_name == scope.value):
            hourly[moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)] += cost
            spent += cost if start <= moment < end else 0
    usd = {hour: float(cost) for hour, cost in hourly.items()}
    return forecast.project(usd, float(spent), period, start, end, now, min(hourly, default=None)), spent


def assert_same(found: forecast.Forecast, wanted: forecast.Forecast) -> None:
    assert found.method == wanted.method
    assert found.weeks == wanted.weeks
    for name in ("spent_so_far", "forecast", "low", "high"):
        assert getattr(found, name) == pytest.approx(getattr(wanted, name), rel=1e-12, abs=1e-12), name
    assert (found.scale is None) == (wanted.scale is None)
    if found.scale is not None:
        assert found.scale == pytest.approx(wanted.scale, rel=1e-12)


def test_days_read_whole_give_the_figures_of_every_hour(paris):
    random_calls(NOW - timedelta(weeks=11), 400, seed=14)
    rollups.rebuild()
    # Written after the roll-ups: read from the calls (a late one in an old day, one today).
    make_logs(2, timestamp=lambda index: [NOW - timedelta(days=20, minutes=7), NOW - timedelta(minutes=3)][index])
    with CaptureQueriesContext(connection) as queries:
        reading = forecast.read(SCOPES, PERIODS, NOW)
    # The whole days came from the daily roll-ups (DailyLatency: a row per day and model), and no
    # more hours were read than the days read in part.
    assert any("dailylatency" in query["sql"] for query in queries.captured_queries)
    zone = timezone.get_current_timezone()
    bounds = {period: forecast.period_bounds(period, NOW) for period in PERIODS}
    partial = forecast.detail_days(bounds, NOW, zone)
    assert len(partial) < 30  # of the 10 weeks read
    hours_read = {hour for costs in reading.history.values() for hour in costs}
    assert len(hours_read) < 24 * (len(partial) + 3) + 70  # days placed on one hour each, not 1,700 hours
    for scope in SCOPES:
        for period in PERIODS:
            wanted, spent = expected(scope, period)
            assert rollups.usd(reading.spent_units(scope, period)) == spent, (scope, period)
            assert_same(reading.forecast(scope, period), wanted)


# No daylight saving change in the weeks before: the oldest scenario's oldest hour is a local midnight.
SUMMER = datetime(2026, 6, 17, 10, 37, 12, tzinfo=UTC)


@pytest.mark.parametrize("offset_hours", [0, 2])
def test_the_oldest_scenario_is_kept_exactly_when_its_hour_has_calls(paris, offset_hours):
    """A first call at, or two hours after, the oldest scenario's oldest hour
    (a local midnight: the second case on that very day, whose total alone would place it at
    midnight): 4 and 3 weeks of scenarios, as with every hour read."""
    start, end = forecast.period_bounds("week", SUMMER)
    oldest = datetime.fromtimestamp(forecast._all_terms(start, end, SUMMER, forecast.HISTORY_WEEKS)[-1].oldest, UTC)
    assert timezone.localtime(oldest).hour == 0
    make_logs(1, timestamp=oldest + timedelta(hours=offset_hours, minutes=10), cost_estimate=Decimal("0.25"))
    # A call before the weeks read, so the daily roll-ups cover them all (they start on its day).
    make_logs(1, timestamp=start - (forecast.HISTORY_WEEKS + 2) * forecast.WEEK)
    random_calls(oldest + timedelta(days=1), 150, seed=offset_hours + 5, now=SUMMER)
    rollups.rebuild()
    with CaptureQueriesContext(connection) as queries:
        found = forecast.forecasts([forecast.Scope()], "week", SUMMER)[forecast.Scope()]
    assert any("dailylatency" in query["sql"] for query in queries.captured_queries)
    assert found.weeks == (forecast.HISTORY_WEEKS if offset_hours <= 0 else forecast.HISTORY_WEEKS - 1)
    assert_same(found, expected(forecast.Scope(), "week", SUMMER, ("week",))[0])


def test_a_zone_half_an_hour_from_utc_reads_every_hour(settings):
    """Local days that do not start on a UTC hour have no first hour to hold their total: the
    history is read hour by hour, and the figures are still those of the calls."""
    settings.TIME_ZONE = "Asia/Kolkata"
    random_calls(NOW - timedelta(weeks=10), 300, seed=21)
    rollups.rebuild()
    reading = forecast.read(SCOPES, PERIODS, NOW)
    for scope in SCOPES:
        for period in PERIODS:
            wanted, spent = expected(scope, period)
            assert rollups.usd(reading.spent_units(scope, period)) == spent, (scope, period)
            assert_same(reading.forecast(scope, period), wanted)
