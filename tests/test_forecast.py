"""The spend forecast (llm/forecast.py) on traffic with a known rhythm: a repeating week is
forecast exactly, a week at twice the cost is forecast at twice the cost; and the endpoint
GET /api/metrics/forecast/ answers the same figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from llm import forecast, rollups
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

ZONE = "Europe/Paris"  # UTC+2 all June: the periods start at 22:00 UTC
NOW = datetime(2026, 6, 17, 15, 0, tzinfo=UTC)  # a Wednesday, on the hour
HISTORY_START = datetime(2026, 4, 6, 0, 0, tzinfo=UTC)  # a Monday, after the spring DST change
MONDAY = datetime(2026, 4, 6, tzinfo=UTC)
# The stated tolerance: a repeating week is forecast within a millionth of a cent.
TOLERANCE_USD = 1e-8


def pattern_cost(hour: datetime) -> Decimal:
    """A weekly rhythm: busy afternoons, quiet nights, a slower weekend; exact in 10 places."""
    hour_of_week = int((hour - MONDAY) / timedelta(hours=1)) % 168
    day, hour_of_day = divmod(hour_of_week, 24)
    daily = 1 + (hour_of_day if hour_of_day < 18 else 36 - hour_of_day)
    return Decimal(daily * (3 if day < 5 else 1)) / Decimal(10_000)


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    count = int((end - start) / timedelta(hours=1))
    return [start + timedelta(hours=index) for index in range(count)]


def make_week_rhythm(until: datetime, scale_from: datetime | None = None, factor: int = 2) -> None:
    """One call per hour from HISTORY_START to `until` costing pattern_cost (times `factor` from
    `scale_from` on), at a quarter past the hour."""
    hours = hours_between(HISTORY_START, until)

    def cost(index: int) -> Decimal:
        hour = hours[index]
        scaled = scale_from is not None and hour >= scale_from
        return pattern_cost(hour) * (factor if scaled else 1)

    make_logs(
        len(hours),
        timestamp=lambda index: hours[index] + timedelta(minutes=15),
        cost_estimate=cost,
        prompt_tokens=10,
        completion_tokens=5,
    )


def true_total(start: datetime, end: datetime, factor: int = 1) -> float:
    return float(sum(pattern_cost(hour) for hour in hours_between(start, end))) * factor


@pytest.fixture
def paris(settings):
    settings.TIME_ZONE = ZONE


def test_period_bounds_follow_the_local_calendar(paris):
    assert forecast.period_bounds("day", NOW) == (
        datetime(2026, 6, 16, 22, tzinfo=UTC),
        datetime(2026, 6, 17, 22, tzinfo=UTC),
    )
    assert forecast.period_bounds("week", NOW) == (  # Monday 15 June, local midnight
        datetime(2026, 6, 14, 22, tzinfo=UTC),
        datetime(2026, 6, 21, 22, tzinfo=UTC),
    )
    assert forecast.period_bounds("month", NOW) == (
        datetime(2026, 5, 31, 22, tzinfo=UTC),
        datetime(2026, 6, 30, 22, tzinfo=UTC),
    )
    # 23:30 UTC on the 17th is already the 18th in Paris: the local day counts.
    late = datetime(2026, 6, 17, 23, 30, tzinfo=UTC)
    assert forecast.period_bounds("day", late)[0] == datetime(2026, 6, 17, 22, tzinfo=UTC)


@pytest.mark.parametrize(("period", "rolled_up"), [("day", False), ("week", False), ("month", False), ("month", True)])
def test_a_repeating_week_is_forecast_exactly(paris, period, rolled_up):
    make_week_rhythm(NOW)
    if rolled_up:
        rollups.rebuild()
    start, end = forecast.period_bounds(period, NOW)
    found = forecast.forecasts([forecast.Scope()], period, NOW)[forecast.Scope()]
    assert found.method == forecast.METHOD_RHYTHM
    assert found.weeks == forecast.HISTORY_WEEKS
    assert found.spent_so_far == pytest.approx(true_total(start, NOW), abs=TOLERANCE_USD)
    assert found.forecast == pytest.approx(true_total(start, end), abs=TOLERANCE_USD)
    # Every week was the same: each scenario projects the same figure.
    assert found.low == pytest.approx(found.forecast, abs=TOLERANCE_USD)
    assert found.high == pytest.approx(found.forecast, abs=TOLERANCE_USD)
    assert found.scale == pytest.approx(1.0)


@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_a_period_at_twice_the_cost_is_forecast_at_twice_the_cost(paris, period):
    start, end = forecast.period_bounds(period, NOW)
    make_week_rhythm(NOW, scale_from=start)
    found = forecast.forecasts([forecast.Scope()], period, NOW)[forecast.Scope()]
    assert found.scale == pytest.approx(2.0)
    assert found.spent_so_far == pytest.approx(true_total(start, NOW, factor=2), abs=TOLERANCE_USD)
    assert found.forecast == pytest.approx(true_total(start, end, factor=2), abs=TOLERANCE_USD)
    if period == "day":
        # Not a straight line from the period's start, which would be off by a fifth here.
        linear = found.spent_so_far * (end - start) / (NOW - start)
        assert abs(linear - found.forecast) > 0.1 * found.forecast


def test_scenarios_differ_and_give_the_range(paris):
    """Weeks of different levels: low and high are the scenarios' extremes, the forecast their mean."""
    make_week_rhythm(NOW)
    # Add last week's Thursday (the next day's hours, one week back): scenario 1 reads it.
    thursday = datetime(2026, 6, 10, 22, tzinfo=UTC)
    hours = hours_between(thursday, thursday + timedelta(days=1))
    make_logs(len(hours), timestamp=lambda index: hours[index] + timedelta(minutes=30), cost_estimate=Decimal("0.5"))
    found = forecast.forecasts([forecast.Scope()], "week", NOW)[forecast.Scope()]
    start, end = forecast.period_bounds("week", NOW)
    base = true_total(start, end)
    extra = 0.5 * 24
    assert found.high == pytest.approx(base + extra, abs=TOLERANCE_USD)
    assert found.low == pytest.approx(base, abs=TOLERANCE_USD)
    assert found.forecast == pytest.approx(base + extra / forecast.HISTORY_WEEKS, abs=TOLERANCE_USD)


def test_without_history_the_forecast_is_a_straight_line(paris):
    start, end = forecast.period_bounds("day", NOW)
    make_logs(3, timestamp=lambda index: start + timedelta(hours=index), cost_estimate=Decimal("0.25"))
    found = forecast.forecasts([forecast.Scope()], "day", NOW)[forecast.Scope()]
    assert found.method == forecast.METHOD_LINEAR
    elapsed_hours = (NOW - start) / timedelta(hours=1)
    assert found.forecast == pytest.approx(0.75 * 24 / elapsed_hours)
    assert found.low == pytest.approx(0.75)


def test_scopes_read_only_their_calls(paris):
    start, _ = forecast.period_bounds("day", NOW)
    base = start + timedelta(hours=1)
    make_logs(
        6,
        timestamp=lambda index: base + timedelta(minutes=index),
        model_name=lambda index: "model-a" if index < 4 else "model-b",
        user_id=lambda index: f"user-{index % 2}",
        api_key_name=lambda index: "ci" if index == 5 else "",
        tags=lambda index: {"feature": "chat" if index % 3 == 0 else "search"},
        cost_estimate=lambda index: Decimal(index + 1) / 100,
    )
    costs = [Decimal(index + 1) / 100 for index in range(6)]
    scopes = {
        forecast.Scope(): sum(costs),
        forecast.Scope("model", "model-a"): sum(costs[:4]),
        forecast.Scope("user", "user-1"): costs[1] + costs[3] + costs[5],
        forecast.Scope("api_key", "ci"): costs[5],
        forecast.Scope("tag", "feature:chat"): costs[0] + costs[3],
        forecast.Scope("tag", "feature:none"): 0,
    }
    found = forecast.costs(scopes, start, NOW)
    for scope, expected in scopes.items():
        assert rollups.usd(sum(found[scope].values())) == expected, scope


def test_forecast_endpoint_answers_the_figures(api_client, paris, time_machine):
    time_machine.move_to(NOW, tick=False)
    make_week_rhythm(NOW)
    response = api_client.get("/api/metrics/forecast/", {"period": "week"})
    assert response.status_code == 200, response.content
    answer = response.json()
    start, end = forecast.period_bounds("week", NOW)
    assert datetime.fromisoformat(answer["start"]) == start
    assert datetime.fromisoformat(answer["end"]) == end
    assert answer["forecast"] == pytest.approx(true_total(start, end), abs=TOLERANCE_USD)
    assert answer["spent_so_far"] == pytest.approx(true_total(start, NOW), abs=TOLERANCE_USD)
    assert answer["method"] == forecast.METHOD_RHYTHM
    assert LLMRequestLog.objects.count() > 0


@pytest.mark.parametrize("query", [{"period": "year"}, {"period": "\x00"}, {"model": "x" * 300}, {"colour": "red"}])
def test_forecast_endpoint_refuses_bad_input(api_client, query):
    response = api_client.get("/api/metrics/forecast/", query)
    assert response.status_code == 400
    assert set(query) <= set(response.json()["fields"])


def test_a_tag_scope_counts_only_calls_with_that_exact_value(paris):
    start, _ = forecast.period_bounds("day", NOW)
    values = ["chat", "Chat", "chat-2", "über", 'say "hi"', "x"]
    make_logs(
        len(values),
        timestamp=lambda index: start + timedelta(minutes=index),
        tags=lambda index: {"feature": values[index], "other": "chat"},
        cost_estimate=lambda index: Decimal(index + 1),
    )
    make_logs(1, timestamp=start, tags={"feature2": "chat"}, cost_estimate=Decimal(100))
    scopes = [forecast.Scope("tag", f"feature:{value}") for value in values]
    found = forecast.costs(scopes, start, NOW)
    for index, scope in enumerate(scopes):
        assert rollups.usd(sum(found[scope].values())) == Decimal(index + 1), scope
