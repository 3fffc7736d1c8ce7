"""Roll-ups (llm/rollups.py) and the figures read from them (llm/metrics.py) against plain Python
over the raw rows: counts, tokens and cost exactly, percentiles within rollup_math.ERROR_BOUND of
NumPy's, whatever part of the rows has been rolled up, for windows not aligned to hours."""

from __future__ import annotations

import importlib
import random
import uuid
import zoneinfo
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from llm import metrics, retention, rollup_math, rollups
from llm.models import (
    DailyRollup,
    DailyUserRollup,
    DailyUserTotals,
    HourlyRollup,
    HourlyUserTotals,
    LLMRequestLog,
    MetricWatermark,
)
from tests.factories import build_log, make_logs
from tests.writers import run_writers

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
MODELS = ["model-a", "model-b", "model-c"]
ERROR_TYPES = ["timeout", "rate_limit", "server_error"]
BOUND = rollup_math.ERROR_BOUND


def random_logs(count: int, seed: int, *, days: int = 12, now: datetime = NOW) -> list[LLMRequestLog]:
    rng = random.Random(seed)

    def failed(index: int) -> bool:
        return rng.random() < 0.15

    statuses = ["error" if failed(i) else "success" for i in range(count)]
    return make_logs(
        count,
        timestamp=lambda i: now - timedelta(seconds=rng.randint(0, days * 86400)),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: statuses[i],
        error_type=lambda i: rng.choice(ERROR_TYPES) if statuses[i] == "error" else "",
        error_message=lambda i: f"message {i}" if statuses[i] == "error" else "",
        prompt_tokens=lambda i: rng.randint(0, 2000),
        completion_tokens=lambda i: rng.randint(0, 800),
        latency_ms=lambda i: rng.lognormvariate(6, 0.8),
        ttft_ms=lambda i: rng.choice([None, rng.uniform(5, 400)]),
        cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
        user_id=lambda i: rng.choice(["", "ann", "bob", "cy", "dee", "eve"]),
    )


def stored() -> list[LLMRequestLog]:
    return list(LLMRequestLog.objects.all())


def within(logs, start, end, model="", status=""):
    return [
        log
        for log in logs
        if start <= log.timestamp < end
        and (not model or log.model_name == model)
        and (not status or log.status == status)
    ]


def chosen(start, end, model="", status=""):
    queryset = LLMRequestLog.objects.in_window(start, end).for_model(model)
    if status:
        queryset = queryset.filter(status=status)
    return metrics.Selection(queryset, start, end, model, status, rollups_apply=True)


def cost(rows) -> float:
    return float(sum((log.cost_estimate for log in rows), Decimal(0)))


def assert_percentile(value, latencies, fraction):
    assert value == pytest.approx(float(np.percentile(latencies, fraction * 100)), rel=BOUND)


WINDOWS = [
    (NOW - timedelta(days=9, minutes=13, seconds=7), NOW - timedelta(minutes=41)),
    (NOW - timedelta(days=3, hours=5, minutes=2), NOW - timedelta(days=1, minutes=3)),
    (NOW - timedelta(hours=30, minutes=1), NOW),
]


@pytest.fixture(scope="module")
def half_rolled(module_transaction, django_db_blocker):
    """Random calls, part rolled up, then more (late ones among them) written after the roll-up;
    written once for the module (tests/conftest.py's module_transaction), undone after it."""
    with django_db_blocker.unblock():
        random_logs(900, seed=1)
        rollups.roll_up()
        random_logs(300, seed=2)  # above the watermark, old timestamps included
        return stored()


# Every window with every filter, over one data set (building it is the slow part).
OVERVIEW_CASES = [
    (start, end, model, status)
    for start, end in WINDOWS
    for model, status in [("", ""), ("model-b", ""), ("", "error"), ("model-a", "success")]
]


def test_overview_equals_raw_rows(half_rolled, subtests):
    for start, end, model, status in OVERVIEW_CASES:
        with subtests.test(start=start, end=end, model=model, status=status):
            assert_overview_equals_raw_rows(half_rolled, start, end, model, status)


def assert_overview_equals_raw_rows(half_rolled, start, end, model, status):
    rows = within(half_rolled, start, end, model, status)
    figures = metrics.overview(chosen(start, end, model, status))
    assert metrics.percentiles_kind(chosen(start, end, model, status)) == metrics.PERCENTILES_APPROXIMATE
    assert figures["total_requests"] == len(rows)
    assert figures["failed_requests"] == sum(log.is_error for log in rows)
    assert figures["prompt_tokens"] == sum(log.prompt_tokens for log in rows)
    assert figures["completion_tokens"] == sum(log.completion_tokens for log in rows)
    assert figures["total_tokens"] == sum(log.total_tokens for log in rows)
    assert figures["total_cost"] == cost(rows)
    assert figures["unique_users"] == len({log.user_id for log in rows if log.user_id})
    latencies = [log.latency_ms for log in rows]
    assert figures["avg_latency_ms"] == pytest.approx(float(np.mean(latencies)))
    for name, fraction in metrics.FRACTIONS.items():
        assert_percentile(figures[f"{name}_latency_ms"], latencies, fraction)


@pytest.mark.parametrize("group_by", ["hour", "day", "month"])
def test_timeseries_periods_equal_raw_rows(half_rolled, group_by):
    start, end = WINDOWS[1] if group_by == "hour" else WINDOWS[0]
    rows = within(half_rolled, start, end)
    expected = defaultdict(list)
    truncate = {"hour": {"minute": 0}, "day": {"hour": 0, "minute": 0}, "month": {"day": 1, "hour": 0, "minute": 0}}
    for log in rows:
        local = timezone.localtime(log.timestamp).replace(second=0, microsecond=0, **truncate[group_by])
        expected[local.isoformat()].append(log)
    series = metrics.timeseries(chosen(start, end), group_by)
    assert [row["period"] for row in series] == sorted(expected)
    for row in series:
        group = expected[row["period"]]
        assert row["requests"] == len(group)
        assert row["errors"] == sum(log.is_error for log in group)
        assert row["total_tokens"] == sum(log.total_tokens for log in group)
        assert row["cost"] == cost(group)
        if len(group) >= metrics.MIN_CALLS_FOR_PERCENTILE:
            assert_percentile(row["p95_latency_ms"], [log.latency_ms for log in group], 0.95)
    tokens = metrics.token_usage(chosen(start, end), group_by)
    assert {row["period"]: row["prompt_tokens"] for row in tokens} == {
        period: sum(log.prompt_tokens for log in group) for period, group in expected.items()
    }


def test_per_model_errors_and_users_equal_raw_rows(half_rolled):
    start, end = WINDOWS[0]
    rows = within(half_rolled, start, end)
    usage = {row["model"]: row for row in metrics.model_usage(chosen(start, end))}
    assert set(usage) == {log.model_name for log in rows}
    for model, row in usage.items():
        group = [log for log in rows if log.model_name == model]
        assert row["requests"] == len(group)
        assert row["errors"] == sum(log.is_error for log in group)
        assert row["cost"] == cost(group)
        assert_percentile(row["p99_latency_ms"], [log.latency_ms for log in group], 0.99)
    assert {row["model"]: row["cost"] for row in metrics.cost_by_model(chosen(start, end))} == {
        model: cost([log for log in rows if log.model_name == model]) for model in usage
    }
    latency = {row["model"]: row["requests"] for row in metrics.latency_by_model(chosen(start, end))}
    assert latency == {model: row["requests"] for model, row in usage.items()}

    errors = metrics.errors(chosen(start, end))
    failed = [log for log in rows if log.is_error]
    assert errors["total_requests"] == len(rows) and errors["total_errors"] == len(failed)
    for row in errors["errors"]:
        group = [log for log in failed if log.error_type == row["error_type"]]
        group.sort(key=lambda log: (log.timestamp, log.id))
        assert row["count"] == len(group)
        assert row["latest_message"] == group[-1].error_message
        assert row["last_seen"] == group[-1].timestamp.isoformat()

    per_user = defaultdict(list)
    for log in rows:
        if log.user_id:
            per_user[log.user_id].append(log)
    top = metrics.user_usage(chosen(start, end), "cost", 10)
    assert [row["user_id"] for row in top] == sorted(per_user, key=lambda user: (-cost(per_user[user]), user))
    for row in top:
        group = per_user[row["user_id"]]
        assert (row["requests"], row["errors"], row["total_tokens"], row["cost"]) == (
            len(group),
            sum(log.is_error for log in group),
            sum(log.total_tokens for log in group),
            cost(group),
        )


def test_short_windows_and_user_filters_stay_exact(half_rolled):
    start, end = NOW - timedelta(hours=2), NOW
    assert metrics.percentiles_kind(chosen(start, end)) == metrics.PERCENTILES_EXACT
    rows = within(half_rolled, start, end)
    figures = metrics.overview(chosen(start, end))
    assert figures["p95_latency_ms"] == pytest.approx(float(np.percentile([log.latency_ms for log in rows], 95)))
    by_user = metrics.Selection(LLMRequestLog.objects.filter(user_id="ann"), *WINDOWS[0], rollups_apply=False)
    assert metrics.percentiles_kind(by_user) == metrics.PERCENTILES_EXACT


def test_api_answers_say_how_percentiles_were_computed(api_client, half_rolled):
    long = api_client.get("/api/metrics/overview/", {"hours": 24 * 9}).json()
    assert long["percentiles"] == "approximate (<=1 %)"
    assert long["total_requests"] == len(within(half_rolled, timezone.now() - timedelta(hours=24 * 9), timezone.now()))
    assert api_client.get("/api/metrics/overview/", {"hours": 2}).json()["percentiles"] == "exact"
    assert api_client.get("/api/metrics/overview/", {"hours": 48, "user_id": "ann"}).json()["percentiles"] == "exact"


def rollup_contents():
    def rows(model, *key):
        return {
            tuple(getattr(row, name) for name in key): (
                row.requests,
                row.total_tokens,
                row.cost_units,
                *(bytes(getattr(row, name)) for name in ("latency_histogram", "ttft_histogram") if hasattr(row, name)),
            )
            for row in model.objects.all()
        }

    return (
        rows(HourlyRollup, "hour", "model_name", "status", "error_type"),
        rows(DailyRollup, "day", "model_name", "status", "error_type"),
        rows(DailyUserRollup, "day", "model_name", "status", "user_id"),
        {
            (row.day, row.user_id): (row.requests, row.errors, row.total_tokens, row.cost_units)
            for row in DailyUserTotals.objects.all()
        },
        {
            (row.hour, row.user_id): (row.requests, row.errors, row.total_tokens, row.cost_units)
            for row in HourlyUserTotals.objects.all()
        },
    )


def test_rebuild_equals_incremental_roll_ups(half_rolled):
    rollups.roll_up()
    incremental = rollup_contents()
    call_command("rebuild_rollups", verbosity=0)
    assert rollup_contents() == incremental
    call_command("rebuild_rollups", "--since", (NOW - timedelta(days=4)).date().isoformat(), verbosity=0)
    assert rollup_contents() == incremental
    assert sum(HourlyRollup.objects.values_list("requests", flat=True)) == len(half_rolled)


def test_user_totals_equal_raw_rows_and_the_migration_fills_them_from_user_rollups(half_rolled):
    rollups.roll_up()
    zone = timezone.get_current_timezone()
    expected = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for log in half_rolled:
        if log.user_id:
            sums = expected[(rollup_math.local_date(log.timestamp, zone), log.user_id)]
            sums[0] += 1
            sums[1] += log.is_error
            sums[2] += log.total_tokens
            sums[3] += log.cost_estimate
    stored_totals = rollup_contents()[3]
    assert stored_totals == {
        key: (requests, errors, tokens, int(cost * rollups.COST_SCALE))
        for key, (requests, errors, tokens, cost) in expected.items()
    }
    DailyUserTotals.objects.all().delete()
    migration = importlib.import_module("llm.migrations.0011_user_totals")
    with connection.cursor() as cursor:
        cursor.execute(migration.fill_sql(DailyUserTotals._meta.db_table, DailyUserRollup._meta.db_table))
    assert rollup_contents()[3] == stored_totals

    hourly = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for log in half_rolled:
        if log.user_id:
            sums = hourly[(rollup_math.floor_hour(log.timestamp), log.user_id)]
            sums[0] += 1
            sums[1] += log.is_error
            sums[2] += log.total_tokens
            sums[3] += log.cost_estimate
    stored_hourly = rollup_contents()[4]
    assert stored_hourly == {
        key: (requests, errors, tokens, int(cost * rollups.COST_SCALE))
        for key, (requests, errors, tokens, cost) in hourly.items()
    }
    HourlyUserTotals.objects.all().delete()
    migration.fill_hourly_users(django_apps, None)
    assert rollup_contents()[4] == stored_hourly


@pytest.mark.parametrize("window", [WINDOWS[0], WINDOWS[2]])
def test_top_users_without_a_whole_day_or_with_days_equal_raw_rows(half_rolled, window):
    start, end = window
    per_user = defaultdict(list)
    for log in within(half_rolled, start, end):
        if log.user_id:
            per_user[log.user_id].append(log)
    top = metrics.user_usage(chosen(start, end), "cost", 10)
    assert [row["user_id"] for row in top] == sorted(per_user, key=lambda user: (-cost(per_user[user]), user))
    for row in top:
        group = per_user[row["user_id"]]
        assert (row["requests"], row["errors"], row["total_tokens"], row["cost"]) == (
            len(group),
            sum(log.is_error for log in group),
            sum(log.total_tokens for log in group),
            cost(group),
        )
    assert metrics.overview(chosen(start, end))["unique_users"] == len(per_user)


def test_top_and_unique_users_of_one_model_equal_raw_rows(half_rolled):
    start, end = WINDOWS[0]
    rows = within(half_rolled, start, end, "model-b")
    per_user = defaultdict(list)
    for log in rows:
        if log.user_id:
            per_user[log.user_id].append(log)
    top = metrics.user_usage(chosen(start, end, "model-b"), "requests", 3)
    assert [row["user_id"] for row in top] == sorted(per_user, key=lambda user: (-len(per_user[user]), user))[:3]
    assert [row["errors"] for row in top] == [sum(log.is_error for log in per_user[row["user_id"]]) for row in top]
    assert metrics.overview(chosen(start, end, "model-b"))["unique_users"] == len(per_user)


def test_rebuild_since_adds_late_rows_before_the_day(half_rolled):
    rollups.roll_up()
    make_logs(3, timestamp=NOW - timedelta(days=11), latency_ms=5)  # late, before --since
    call_command("rebuild_rollups", "--since", (NOW - timedelta(days=2)).date().isoformat(), verbosity=0)
    assert sum(HourlyRollup.objects.values_list("requests", flat=True)) == len(half_rolled) + 3
    assert sum(DailyRollup.objects.values_list("requests", flat=True)) == len(half_rolled) + 3


def test_purge_keeps_the_history_in_the_roll_ups(half_rolled):
    # Beyond retention only whole hours remain: the window starts on one (its end is recent).
    start, end = rollup_math.floor_hour(WINDOWS[0][0]), WINDOWS[0][1]
    before = metrics.overview(chosen(start, end))
    result = retention.purge(5, now=NOW)
    assert result.logs == len([log for log in half_rolled if log.timestamp < NOW - timedelta(days=5)]) > 0
    after = metrics.overview(chosen(start, end))
    for name in ("total_requests", "failed_requests", "total_tokens", "total_cost", "p95_latency_ms"):
        assert after[name] == before[name]


def test_a_retried_event_counts_once():
    log = build_log(request_id=uuid.uuid4(), timestamp=NOW - timedelta(days=3), latency_ms=10, prompt_tokens=7)
    assert LLMRequestLog.objects.record_many([log]) == (1, 0)
    again = build_log(request_id=log.request_id, timestamp=NOW - timedelta(days=3), latency_ms=10, prompt_tokens=7)
    assert LLMRequestLog.objects.record_many([again]) == (0, 1)
    rollups.roll_up()
    assert LLMRequestLog.objects.record_many([again]) == (0, 1)
    rollups.roll_up()
    assert [(row.requests, row.prompt_tokens) for row in HourlyRollup.objects.all()] == [(1, 7)]
    figures = metrics.overview(chosen(NOW - timedelta(days=6), NOW))
    assert figures["total_requests"] == 1 and figures["prompt_tokens"] == 7


@pytest.mark.parametrize("zone_name", ["Europe/Paris", "Asia/Kolkata"])
def test_daily_figures_follow_local_days(settings, zone_name):
    settings.TIME_ZONE = zone_name
    zone = zoneinfo.ZoneInfo(zone_name)
    now = datetime(2026, 3, 31, 6, 47, tzinfo=UTC)  # Paris went to summer time on the 29th
    with timezone.override(zone):
        random_logs(800, seed=3, days=6, now=now)
        rollups.roll_up()
        random_logs(100, seed=4, days=6, now=now)
        logs = stored()
        start, end = now - timedelta(days=5, hours=3, minutes=10), now
        expected = defaultdict(list)
        for log in within(logs, start, end):
            expected[log.timestamp.astimezone(zone).date().isoformat()].append(log)
        daily = metrics.daily_stats(chosen(start, end))
        assert [row["date"] for row in daily] == sorted(expected)
        for row in daily:
            group = expected[row["date"]]
            assert (row["requests"], row["errors"], row["total_tokens"], row["cost"]) == (
                len(group),
                sum(log.is_error for log in group),
                sum(log.total_tokens for log in group),
                cost(group),
            )
        assert metrics.overview(chosen(start, end))["unique_users"] == len(
            {log.user_id for log in within(logs, start, end) if log.user_id}
        )
        assert MetricWatermark.objects.get(name=rollups.ROLLUPS).time_zone == zone_name


def test_a_time_zone_change_stops_trusting_daily_rows(settings, half_rolled):
    rollups.roll_up()
    settings.TIME_ZONE = "Asia/Kolkata"
    with timezone.override(zoneinfo.ZoneInfo("Asia/Kolkata")):
        from llm import checks

        assert [warning.id for warning in checks.rollups_current(None)] == ["llm.W005"]
        start, end = WINDOWS[0]
        assert metrics.overview(chosen(start, end))["total_requests"] == len(within(half_rolled, start, end))
        call_command("rebuild_rollups", verbosity=0)
        assert checks.rollups_current(None) == []
        expected = defaultdict(int)
        for log in within(half_rolled, start, end):
            expected[timezone.localtime(log.timestamp).date().isoformat()] += 1
        assert {row["date"]: row["requests"] for row in metrics.daily_stats(chosen(start, end))} == expected


def test_bucket_index_in_sql_equals_python_and_percentiles_keep_their_bound():
    values = [0, 0.0004, 0.001, 0.5, 1, 1.02, 99.9, 250.0, 1234.5, 60_000, 2e9]
    make_logs(len(values), latency_ms=lambda i: values[i])
    in_sql = dict(
        LLMRequestLog.objects.annotate(bucket=rollups.bucket_of("latency_ms")).values_list("latency_ms", "bucket")
    )
    assert in_sql == {value: rollup_math.bucket_index(value) for value in values}
    rng = np.random.default_rng(5)
    sample = rng.lognormal(5, 1.5, 5000)
    dense = rollup_math.from_counts((rollup_math.bucket_index(v), 1) for v in sample)
    assert rollup_math.merge([rollup_math.encode(dense)]).tolist() == dense.tolist()
    for fraction in (0.01, 0.5, 0.9, 0.95, 0.99, 1.0):
        estimate = rollup_math.percentiles(dense, [fraction])[0]
        assert abs(estimate / float(np.percentile(sample, fraction * 100)) - 1) <= BOUND


def test_split_window_covers_it_once():
    zone = zoneinfo.ZoneInfo("Asia/Kolkata")
    start, end = datetime(2026, 3, 1, 7, 20, tzinfo=UTC), datetime(2026, 3, 5, 2, 5, tzinfo=UTC)
    split = rollup_math.split_window(start, end, zone)
    spans = sorted([*split.raw, *split.rolled_up_spans(zone)])
    assert spans[0][0] == start and spans[-1][1] == end
    assert all(left[1] == right[0] for left, right in zip(spans, spans[1:], strict=False))
    assert split.days and all(rollup_math.day_start(day, zone).minute == 30 for day in split.days)


WRITER = """
import os, sys, uuid, random
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from llm import rollups
from llm.models import LLMRequestLog
seed = int(sys.argv[1])
rng = random.Random(seed)
now = datetime(2026, 3, 31, 10, tzinfo=UTC)
shared = [uuid.UUID(int=index) for index in range(50)]  # every writer retries these
for batch in range(8):
    logs = [
        LLMRequestLog(
            request_id=rng.choice(shared) if rng.random() < 0.1 else uuid.uuid4(),
            timestamp=now - timedelta(minutes=rng.randint(0, 3 * 1440)),
            model_name=rng.choice(["model-a", "model-b"]),
            prompt_tokens=rng.randint(0, 100),
            latency_ms=rng.uniform(1, 900),
            cost_estimate=Decimal(rng.randint(0, 10**6)) / 10**10,
        )
        for _ in range(60)
    ]
    LLMRequestLog.objects.record_many(logs)
    rollups.roll_up(limit=100, try_lock=bool(batch % 2))
"""


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_in_several_processes_count_each_call_once(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers.")
    run_writers(tmp_path, WRITER, range(4))
    rollups.catch_up()
    logs = stored()
    assert len({log.request_id for log in logs}) == len(logs)
    assert sum(HourlyRollup.objects.values_list("requests", flat=True)) == len(logs)
    assert sum(DailyRollup.objects.values_list("requests", flat=True)) == len(logs)
    assert sum(HourlyRollup.objects.values_list("cost_units", flat=True)) == sum(
        int(log.cost_estimate * 10**10) for log in logs
    )
    start, end = NOW - timedelta(days=2, minutes=7), NOW
    assert metrics.overview(chosen(start, end))["total_requests"] == len(within(logs, start, end))


def test_merged_histograms_equal_the_sum_of_their_counts():
    rng = random.Random(5)
    dense, groups = [], []
    for _ in range(200):
        histogram = rollup_math.empty()
        for _ in range(rng.randint(0, 40)):
            histogram[rng.randint(0, rollup_math.TOP_BUCKET)] += rng.randint(1, 10**6)
        dense.append(histogram)
        groups.append(rng.randrange(4))
    stored = [rollup_math.encode(histogram) for histogram in dense]
    merged = rollup_math.merge_grouped(groups, stored, 5)
    for group in range(5):
        expected = sum((h for h, g in zip(dense, groups, strict=True) if g == group), rollup_math.empty())
        assert merged[group].tolist() == expected.tolist()
    assert rollup_math.merge([*stored, b"", None]).tolist() == sum(dense, rollup_math.empty()).tolist()
