"""The overview's readings written in plain SQL (llm/plain_sql.py): the previous window's totals
(metrics.window_totals: the roll-up cores in one UNION ALL query, the edges and short windows in
one grouped query), and the month forecast's history (forecast._day_placed_at). Every figure equals
a plain-Python recomputation over the raw rows, for windows not aligned to hours, of all models and
of one, with calls rolled up and calls above the watermark (late ones among them, inside the
previous windows): counts, tokens and cost exactly, p95 within the roll-ups' bound of NumPy's, a
short window's percentiles and failures of one type exactly; the forecast's spend and its history
per local day exactly, in UTC and in a zone with daylight saving time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import dashboard, forecast, metrics, rollup_math, rollup_sql, rollups
from llm.models import LLMRequestLog, MetricWatermark
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
# 37 minutes into its hour, 19 days into its month: the month's forecast reads five weeks before it.
NOW = datetime(2026, 3, 19, 14, 37, 11, 250000, tzinfo=UTC)
MODELS = ["model-a", "model-b", "model-c"]
ERROR_TYPES = ["timeout", "rate_limit"]
# Window lengths, none a whole number of hours: a few hours, a day, days (whole days from the
# daily roll-ups) and over a week.
LENGTHS = [
    timedelta(hours=3, minutes=7),
    timedelta(hours=26, minutes=41),
    timedelta(days=3, minutes=11),
    timedelta(days=8, hours=5, minutes=3),
]


def random_logs(count: int, seed: int, newest: timedelta, oldest: timedelta) -> None:
    rng = random.Random(seed)
    failed = [rng.random() < 0.2 for _ in range(count)]
    span = int((oldest - newest).total_seconds() * 1e6)
    make_logs(
        count,
        timestamp=lambda i: NOW - newest - timedelta(microseconds=rng.randint(1, span)),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: "error" if failed[i] else "success",
        error_type=lambda i: rng.choice(ERROR_TYPES) if failed[i] else "",
        total_tokens=lambda i: rng.randint(0, 3000),
        latency_ms=lambda i: rng.lognormvariate(6, 0.9),
        ttft_ms=lambda i: rng.lognormvariate(5, 0.5) if rng.random() < 0.7 else None,
        cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
        user_id=lambda i: rng.choice(["", "ann", "bob"]),
        tags=lambda i: rng.choice([{}, {"feature": "search"}, {"feature": "chat", "team": "x"}, {"team": "x"}]),
    )


@pytest.fixture(scope="module")
def calls(module_transaction, django_db_blocker) -> list[LLMRequestLog]:
    """Calls over 45 days, rolled up; then more above the watermark: recent ones (8 hours), and late ones
    stamped within the last 17 days (so within the previous windows too). Written once for the
    module (tests/conftest.py's module_transaction)."""
    with time_machine.travel(NOW, tick=False), django_db_blocker.unblock():
        random_logs(600, seed=31, newest=timedelta(0), oldest=timedelta(days=45))
        rollups.roll_up()
        random_logs(90, seed=32, newest=timedelta(0), oldest=timedelta(hours=8))
        random_logs(40, seed=33, newest=timedelta(hours=8), oldest=timedelta(days=17))
        return list(LLMRequestLog.objects.all())


@pytest.fixture
def at_now(time_machine) -> None:
    time_machine.move_to(NOW, tick=False)


def within(calls: list[LLMRequestLog], start: datetime, end: datetime, model: str = "") -> list[LLMRequestLog]:
    return [log for log in calls if start <= log.timestamp < end and model in ("", log.model_name)]


def cost(rows: list[LLMRequestLog]) -> float:
    return float(sum((log.cost_estimate for log in rows), Decimal(0)))


def test_previous_windows_equal_the_raw_rows(calls, at_now):
    state = metrics.rollup_state()
    recent = metrics.recent_rows(state.last_id, state)
    assert recent is not None and recent.hours  # the calls above the watermark, summed
    late = [log for log in calls if log.id > state.last_id and log.timestamp < NOW - timedelta(hours=8)]
    assert late  # the late calls: inside the previous windows, above the watermark
    for length in LENGTHS:
        for model in ("", "model-b"):
            window = dashboard.TimeRange("custom", NOW - length, NOW, model)
            found = dashboard.previous_figures(window, recent)
            rows = within(calls, NOW - 2 * length, NOW - length, model)
            assert rows, (length, model)
            failed = sum(log.status == "error" for log in rows)
            assert found["total_requests"] == len(rows), (length, model)
            assert found["error_rate"] == pytest.approx(failed * 100.0 / len(rows), rel=1e-12), (length, model)
            assert found["total_tokens"] == sum(log.total_tokens for log in rows), (length, model)
            assert found["total_cost"] == cost(rows), (length, model)
            exact = float(np.percentile([log.latency_ms for log in rows], 95))
            assert found["p95_latency_ms"] == pytest.approx(exact, rel=rollup_math.ERROR_BOUND), (length, model)
    assert any(within(late, NOW - 2 * length, NOW - length) for length in LENGTHS)


def test_short_windows_of_one_error_type_and_percentile_are_exact(calls, at_now):
    """Windows of at most metrics.EXACT_WINDOW are read from the rows in the grouped query: failures
    of one type, the p99 latency and p95 time to first token (NULLs left out) exactly."""
    end = NOW - timedelta(minutes=13)
    windows = [
        metrics.Window(end - timedelta(minutes=97), end, "", error_type="timeout"),
        metrics.Window(end - timedelta(minutes=97), end, "model-c", error_type="rate_limit"),
        metrics.Window(end - timedelta(minutes=61), end, "", percentile="p99_latency_ms"),
        metrics.Window(end - timedelta(minutes=119), end, "model-a", percentile="p95_ttft_ms"),
        metrics.Window(end - timedelta(minutes=119), end, "model-a", latency=True),
        # With a long window in the same reading: its edges join the grouped query.
        metrics.Window(end - timedelta(days=2, minutes=29), end, "model-b", latency=True),
    ]
    measured = metrics.window_totals(windows)
    for window in windows:
        rows = within(calls, window.start, window.end, window.model)
        assert rows, window
        totals = measured[window]
        failed = [log for log in rows if log.status == "error"]
        if window.error_type:
            failed = [log for log in failed if log.error_type == window.error_type]
        assert totals.requests == len(rows), window
        assert totals.errors == len(failed), window
        assert totals.total_tokens == sum(log.total_tokens for log in rows), window
        assert totals.cost == cost(rows), window
        short = window.end - window.start <= metrics.EXACT_WINDOW
        if window.percentile == "p99_latency_ms":
            assert totals.p99_latency_ms == float(np.percentile([log.latency_ms for log in rows], 99))
        elif window.percentile == "p95_ttft_ms":
            values = [log.ttft_ms for log in rows if log.ttft_ms is not None]
            assert totals.p95_ttft_ms == float(np.percentile(values, 95))
        elif window.latency:
            exact = float(np.percentile([log.latency_ms for log in rows], 95))
            assert totals.p95_latency_ms == pytest.approx(exact, rel=1e-12 if short else rollup_math.ERROR_BOUND)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_the_forecasts_history_and_spend_equal_the_raw_rows(settings, time_machine, zone):
    """The month's history read by days (whole days on their first hour, the others by hour) sums,
    per local day, to the raw rows' cost of that day; each period's spend is the raw rows' cost."""
    settings.TIME_ZONE = zone
    time_machine.move_to(NOW, tick=False)
    random_logs(500, seed=41, newest=timedelta(0), oldest=timedelta(days=60))
    rollups.roll_up()
    random_logs(30, seed=42, newest=timedelta(0), oldest=timedelta(hours=3))
    calls = list(LLMRequestLog.objects.all())
    state = metrics.rollup_state()
    recent = metrics.recent_rows(state.last_id, state)
    # A user (the user totals), a tag of a rolled-up key (ROLLUP_TAG_KEYS: the breakdown roll-ups)
    # and one of another key (its calls).
    scopes = [
        forecast.Scope(),
        forecast.Scope("model", "model-b"),
        forecast.Scope("user", "ann"),
        TAGGED,
        forecast.Scope("tag", "team:x"),
    ]
    reading = forecast.read(scopes, ["month", "week", "day"], NOW, recent=recent)
    tz = timezone.get_current_timezone()
    first = forecast.floor_hour(forecast.period_bounds("month", NOW)[0]) - (forecast.HISTORY_WEEKS + 1) * forecast.WEEK
    last = forecast.period_bounds("month", NOW)[1]
    for scope in scopes:
        calls_of = scoped(calls, scope)
        history = reading.history[scope]
        day = first.astimezone(tz).date() + timedelta(days=1)  # the first whole local day read
        checked = 0
        while rollup_math.day_start(day + timedelta(days=1), tz) <= NOW:
            start, end = rollup_math.day_start(day, tz), rollup_math.day_start(day + timedelta(days=1), tz)
            found = sum(units for hour, units in history.items() if start <= hour < end)
            wanted = sum(rollups.as_units(log.cost_estimate * 10**10) for log in within(calls_of, start, end))
            assert found == wanted, (scope, day)
            checked += bool(wanted)
            day += timedelta(days=1)
        assert checked > 30, scope  # the days held calls: the equalities could fail
        assert sum(history.values()) == sum(
            rollups.as_units(log.cost_estimate * 10**10) for log in within(calls_of, first, last)
        )
        for period in ("month", "week", "day"):
            start, end = forecast.period_bounds(period, NOW)
            spent = within(calls_of, start, end)
            assert spent, (scope, period)
            assert reading.spent_units(scope, period) == sum(
                rollups.as_units(log.cost_estimate * 10**10) for log in spent
            ), (scope, period)
    # The dashboard's month card reads the same figures.
    month = dashboard.spend(NOW, recent)["month"]
    assert month.spent_so_far == cost(within(calls, *forecast.period_bounds("month", NOW)))


TAGGED = forecast.Scope("tag", "feature:search")


def scoped(calls: list[LLMRequestLog], scope: forecast.Scope) -> list[LLMRequestLog]:
    if scope.kind == "model":
        return [log for log in calls if log.model_name == scope.value]
    if scope.kind == "user":
        return [log for log in calls if log.user_id == scope.value]
    if scope.kind == "tag":
        key, _, value = scope.value.partition(":")
        return [log for log in calls if log.tags.get(key) == value]
    return calls


def test_user_and_rolled_up_tag_histories_are_read_from_the_rollups(time_machine):
    """A user scope reads the user totals, a tag scope of a ROLLUP_TAG_KEYS key the breakdown
    roll-ups (no scan of their calls): the figures themselves are checked against the raw rows above."""
    time_machine.move_to(NOW, tick=False)
    random_logs(50, seed=43, newest=timedelta(0), oldest=timedelta(days=60))
    rollups.roll_up()
    bounds = {"month": forecast.period_bounds("month", NOW)}
    first = forecast.floor_hour(bounds["month"][0]) - (forecast.HISTORY_WEEKS + 1) * forecast.WEEK
    last = bounds["month"][1]

    def detail() -> set:
        return forecast.detail_days(bounds, NOW, timezone.get_current_timezone())

    with CaptureQueriesContext(connection) as queries:
        found = forecast._day_placed_tag_costs(TAGGED, detail, first, last)
    assert found is not None and sum(found.values()) > 0
    assert any("llm_dailybreakdownrollup" in query["sql"] for query in queries.captured_queries)
    assert forecast._day_placed_tag_costs(forecast.Scope("tag", "team:x"), detail, first, last) is None
    with CaptureQueriesContext(connection) as queries:
        found = forecast._day_placed_user_costs("ann", detail, first, last, None)
    assert found is not None and sum(found.values()) > 0
    assert any("llm_dailyusertotals" in query["sql"] for query in queries.captured_queries)


def test_the_watermark_read_in_plain_sql_is_the_states(calls, at_now):
    assert rollup_sql.watermark() == metrics.rollup_state().last_id > 0
    LLMRequestLog.objects.all().delete()
    MetricWatermark.objects.all().delete()
    assert rollup_sql.watermark() == metrics.rollup_state().last_id == 0
