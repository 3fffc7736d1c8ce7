"""Every figure of llm.metrics against an independent recomputation (NumPy, statistics) of the same rows."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime, timedelta

import numpy as np
import pytest
from rest_framework.exceptions import ValidationError

from llm import metrics
from llm.filters import filter_logs
from llm.models import LLMRequestLog
from tests.read_api_data import NOW, make_logs, period_key, select

pytestmark = pytest.mark.django_db

FILTERS = [
    {},
    {"model": "llama-3.1-8b-instant"},
    {"status": "error"},
    {"user_id": "u-2", "start": NOW - timedelta(days=10)},
    {"start": NOW - timedelta(days=3), "end": NOW - timedelta(hours=5)},
]


def params_for(selection: dict) -> dict:
    """The query string of a selection; a missing bound covers all the data (not the default 24 hours)."""
    params = {key: value for key, value in selection.items() if key not in ("start", "end")}
    params["start_date"] = selection.get("start", NOW - timedelta(days=60)).isoformat()
    params["end_date"] = selection.get("end", NOW + timedelta(seconds=1)).isoformat()
    return params


def percentile(values, fraction):
    return float(np.percentile(values, fraction * 100)) if values else None


def period_percentile(values, fraction):
    """A period's percentile: none from fewer than MIN_CALLS_FOR_PERCENTILE calls."""
    return percentile(values, fraction) if len(values) >= metrics.MIN_CALLS_FOR_PERCENTILE else None


@pytest.fixture
def logs(model_prices):
    return make_logs()


@pytest.mark.parametrize("selection", FILTERS)
def test_overview_equals_recomputation(logs, selection):
    rows = select(logs, **selection)
    figures = metrics.overview(filter_logs(params_for(selection)).queryset)

    latencies = [log.latency_ms for log in rows]
    failed = [log for log in rows if log.is_error]
    assert figures["total_requests"] == len(rows) > 0
    assert figures["failed_requests"] == len(failed)
    assert figures["successful_requests"] == len(rows) - len(failed)
    assert figures["error_rate"] == pytest.approx(100 * len(failed) / len(rows))
    assert figures["prompt_tokens"] == sum(log.prompt_tokens for log in rows)
    assert figures["completion_tokens"] == sum(log.completion_tokens for log in rows)
    assert figures["total_tokens"] == sum(log.total_tokens for log in rows)
    assert figures["total_cost"] == pytest.approx(float(sum(log.cost_estimate for log in rows)), abs=1e-9)
    assert figures["avg_latency_ms"] == pytest.approx(statistics.fmean(latencies))
    for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert figures[f"{name}_latency_ms"] == pytest.approx(percentile(latencies, fraction), rel=1e-9)
    assert figures["unique_users"] == len({log.user_id for log in rows if log.user_id})


def test_percentile_matches_numpy_on_small_and_even_sets(db):
    for values in ([5.0], [1.0, 2.0], [3.0, 1.0, 4.0, 1.5], [float(n) for n in range(1, 11)]):
        LLMRequestLog.objects.all().delete()
        LLMRequestLog.objects.bulk_create([LLMRequestLog(model_name="m", latency_ms=value) for value in values])
        for fraction in (0, 0.25, 0.5, 0.9, 0.95, 0.99, 1):
            [got] = LLMRequestLog.objects.aggregate(p=metrics.Percentiles("latency_ms", fraction))["p"]
            assert got == pytest.approx(float(np.percentile(values, fraction * 100)))


@pytest.mark.parametrize("group_by", ["hour", "day", "month"])
@pytest.mark.parametrize("selection", FILTERS[:3])
def test_token_usage_and_timeseries_per_period(logs, selection, group_by):
    rows = select(logs, **selection)
    expected = defaultdict(list)
    for log in rows:
        expected[period_key(log.timestamp, group_by)].append(log)
    queryset = filter_logs(params_for(selection)).queryset

    usage = metrics.token_usage(queryset, group_by)
    assert [row["period"] for row in usage] == sorted(expected)
    for row in usage:
        group = expected[row["period"]]
        assert row["requests"] == len(group)
        assert row["prompt_tokens"] == sum(log.prompt_tokens for log in group)
        assert row["completion_tokens"] == sum(log.completion_tokens for log in group)
        assert row["total_tokens"] == sum(log.total_tokens for log in group)

    series = metrics.timeseries(queryset, group_by)
    assert len(series) == len(expected)
    for row in series:
        group = expected[row["period"]]
        latencies = [log.latency_ms for log in group]
        assert row["errors"] == sum(log.is_error for log in group)
        assert row["cost"] == pytest.approx(float(sum(log.cost_estimate for log in group)), abs=1e-9)
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert row[f"{name}_latency_ms"] == pytest.approx(period_percentile(latencies, fraction))


def test_daily_stats(logs):
    rows = select(logs)
    by_day = defaultdict(list)
    for log in rows:
        by_day[period_key(log.timestamp, "day")[:10]].append(log)
    stats = metrics.daily_stats(LLMRequestLog.objects.all())
    assert [row["date"] for row in stats] == sorted(by_day)
    for row in stats:
        group = by_day[row["date"]]
        latencies = [log.latency_ms for log in group]
        assert row["requests"] == len(group)
        assert row["errors"] == sum(log.is_error for log in group)
        assert row["total_tokens"] == sum(log.total_tokens for log in group)
        assert row["avg_latency_ms"] == pytest.approx(statistics.fmean(latencies))
        assert row["p95_latency_ms"] == pytest.approx(period_percentile(latencies, 0.95))
        assert row["p99_latency_ms"] == pytest.approx(period_percentile(latencies, 0.99))


@pytest.mark.parametrize("selection", FILTERS)
def test_latency_and_model_usage_per_model(logs, selection):
    rows = select(logs, **selection)
    by_model = defaultdict(list)
    for log in rows:
        by_model[log.model_name].append(log)
    queryset = filter_logs(params_for(selection)).queryset

    latency = {row["model"]: row for row in metrics.latency_by_model(queryset)}
    usage = {row["model"]: row for row in metrics.model_usage(queryset)}
    assert set(latency) == set(usage) == set(by_model)
    assert all("model_name" not in row for row in usage.values())
    for model, group in by_model.items():
        latencies = [log.latency_ms for log in group]
        assert latency[model]["requests"] == usage[model]["requests"] == len(group)
        assert latency[model]["avg_latency_ms"] == pytest.approx(statistics.fmean(latencies))
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert latency[model][f"{name}_latency_ms"] == pytest.approx(percentile(latencies, fraction))
        failed = sum(log.is_error for log in group)
        assert usage[model]["errors"] == failed
        assert usage[model]["error_rate"] == pytest.approx(100 * failed / len(group))
        assert usage[model]["total_tokens"] == sum(log.total_tokens for log in group)
        assert usage[model]["cost"] == pytest.approx(float(sum(log.cost_estimate for log in group)), abs=1e-9)
        assert usage[model]["priced"] is (model != "unpriced-model")
    costs = metrics.cost_by_model(queryset)
    expected_costs = {model: float(sum(log.cost_estimate for log in group)) for model, group in by_model.items()}
    assert {row["model"]: row["cost"] for row in costs} == pytest.approx(expected_costs, abs=1e-9)
    assert [row["cost"] for row in costs] == sorted((row["cost"] for row in costs), reverse=True)


@pytest.mark.parametrize("selection", FILTERS)
def test_errors_per_type(logs, selection):
    rows = select(logs, **selection)
    failed = [log for log in rows if log.is_error]
    by_type = defaultdict(list)
    for log in failed:
        by_type[log.error_type].append(log)
    result = metrics.errors(filter_logs(params_for(selection)).queryset)
    assert result["total_errors"] == len(failed)
    assert result["total_requests"] == len(rows)
    assert {row["error_type"] for row in result["errors"]} == set(by_type)
    for row in result["errors"]:
        group = by_type[row["error_type"]]
        latest = max(group, key=lambda log: log.timestamp)
        assert row["count"] == len(group)
        assert row["share"] == pytest.approx(100 * len(group) / len(failed))
        assert row["latest_message"] == latest.error_message
    assert sum(row["share"] for row in result["errors"]) == pytest.approx(100 if failed else 0)


def test_top_users(logs):
    per_user = defaultdict(list)
    for log in logs:
        if log.user_id:
            per_user[log.user_id].append(log)
    by_requests = metrics.user_usage(LLMRequestLog.objects.all(), "requests", limit=2)
    expected = sorted(per_user, key=lambda user: (-len(per_user[user]), user))[:2]
    assert [row["user_id"] for row in by_requests] == expected
    by_cost = metrics.user_usage(LLMRequestLog.objects.all(), "cost", limit=10)
    costs = [row["cost"] for row in by_cost]
    assert costs == sorted(costs, reverse=True)
    assert len(by_cost) == len(per_user)


def test_empty_window_answers_zeros_and_nulls(logs):
    empty = LLMRequestLog.objects.filter(model_name="no-such-model")
    figures = metrics.overview(empty)
    assert figures["total_requests"] == figures["total_tokens"] == figures["total_cost"] == 0
    assert figures["error_rate"] == 0
    assert figures["p95_latency_ms"] is None and figures["avg_latency_ms"] is None
    assert metrics.token_usage(empty, "hour") == []
    assert metrics.errors(empty) == {"total_errors": 0, "total_requests": 0, "error_rate": 0.0, "errors": []}
    assert metrics.model_usage(empty) == metrics.cost_by_model(empty) == metrics.daily_stats(empty) == []


def test_filter_defaults_to_last_24_hours_and_says_so(db):
    filtered = filter_logs({})
    assert filtered.window_defaulted
    assert filtered.end - filtered.start == timedelta(hours=24)
    assert not filter_logs({"start_date": "2026-11-01"}).window_defaulted


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start_date": "yesterday"}, "start_date"),
        ({"end_date": "2026-13-01"}, "end_date"),
        ({"start_date": "2026-11-10", "end_date": "2026-11-01"}, "end_date"),
        ({"status": "maybe"}, "status"),
    ],
)
def test_bad_filters_name_the_field(db, params, field):
    with pytest.raises(ValidationError) as error:
        filter_logs(params)
    assert field in error.value.detail


def test_date_only_end_includes_the_whole_day(logs):
    day = (NOW - timedelta(days=2)).date()
    filtered = filter_logs({"start_date": day.isoformat(), "end_date": day.isoformat()})
    expected = [log for log in logs if log.timestamp.date() == day]
    assert filtered.queryset.count() == len(expected) > 0


@pytest.mark.parametrize("time_zone", ["America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("group_by", ["hour", "day", "month"])
def test_periods_follow_time_zone(logs, settings, time_zone, group_by):
    # New York changes offset on 1 November (inside the data's 40 days); Kolkata is UTC+05:30, so
    # even hours differ from UTC hours.
    settings.TIME_ZONE = time_zone
    expected = defaultdict(int)
    for log in logs:
        expected[period_key(log.timestamp, group_by)] += 1
    usage = metrics.token_usage(LLMRequestLog.objects.all(), group_by)
    assert {row["period"]: row["requests"] for row in usage} == expected
    assert any(row["period"].endswith(("-05:00", "-04:00", "+05:30")) for row in usage)


def make_calls(moment, latencies, **fields):
    LLMRequestLog.objects.bulk_create(
        [LLMRequestLog(model_name="m", timestamp=moment, latency_ms=value, **fields) for value in latencies]
    )


@pytest.mark.parametrize("group_by", ["hour", "day"])
def test_a_period_needs_min_calls_for_its_percentiles(db, group_by):
    assert metrics.MIN_CALLS_FOR_PERCENTILE == 20
    fewer = [float(100 + (n * 37) % 400) for n in range(19)]
    enough = [float(200 + (n * 53) % 900) for n in range(20)]
    make_calls(NOW - timedelta(days=3), fewer)
    make_calls(NOW - timedelta(days=2), enough)

    series = metrics.timeseries(LLMRequestLog.objects.all(), group_by)
    daily = metrics.daily_stats(LLMRequestLog.objects.all())
    assert [row["requests"] for row in series] == [row["requests"] for row in daily] == [19, 20]
    short, full = series
    assert short["p50_latency_ms"] is short["p95_latency_ms"] is short["p99_latency_ms"] is None
    assert daily[0]["p95_latency_ms"] is daily[0]["p99_latency_ms"] is None
    # The counts and the average of the short period are still there: only percentiles need a sample.
    assert short["avg_latency_ms"] == pytest.approx(statistics.fmean(fewer))
    for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert full[f"{name}_latency_ms"] == pytest.approx(float(np.percentile(enough, fraction * 100)))
    assert daily[1]["p95_latency_ms"] == pytest.approx(float(np.percentile(enough, 95)))
    # Totals over the whole window are not periods: 39 calls give percentiles, 19 do too.
    assert metrics.overview(LLMRequestLog.objects.all())["p95_latency_ms"] == pytest.approx(
        float(np.percentile(fewer + enough, 95))
    )


def test_partial_periods_mid_hour(db, time_machine):
    # 12:20 UTC: the 12:00 hour has 20 minutes behind it, the 11:00 hour is over.
    time_machine.move_to(NOW + timedelta(minutes=20), tick=False)
    now = NOW + timedelta(minutes=20)
    for minutes in (5, 65, 125, 175):
        make_calls(now - timedelta(minutes=minutes), [100.0])
    start = now - timedelta(hours=3)  # 09:20: the window starts inside the 09:00 hour
    logs = LLMRequestLog.objects.in_window(start, now)

    series = metrics.timeseries(logs, "hour", start=start, end=now)
    assert [(row["period"][11:16], row["partial"]) for row in series] == [
        ("09:00", True),
        ("10:00", False),
        ("11:00", False),
        ("12:00", True),
    ]
    # Without a window, only the running hour is partial; a window that ended on the hour has none.
    assert [row["partial"] for row in metrics.timeseries(logs, "hour")] == [False, False, False, True]
    ended = metrics.timeseries(LLMRequestLog.objects.in_window(NOW - timedelta(hours=2), NOW), "hour")
    assert [row["partial"] for row in ended] == [False, False]
    days = metrics.daily_stats(logs, start=start, end=now)
    assert [(row["date"], row["partial"]) for row in days] == [("2026-11-20", True)]


def test_period_end_follows_local_days_and_months(db, settings):
    settings.TIME_ZONE = "Europe/Paris"
    from django.utils import timezone

    with timezone.override("Europe/Paris"):
        # 25 October 2026: Paris leaves summer time, the day lasts 25 hours.
        day = timezone.make_aware(datetime(2026, 10, 25))
        # (Subtracting datetimes of one zone compares wall clocks: compare timestamps instead.)
        assert metrics.period_end(day, "day").timestamp() - day.timestamp() == 25 * 3600
        month = timezone.make_aware(datetime(2026, 12, 1))
        assert metrics.period_end(month, "month") == timezone.make_aware(datetime(2027, 1, 1))
        assert metrics.period_end(month, "hour") - month == timedelta(hours=1)
