"""llm/rollup_sql.py, the shared reading's written-out SQL, and the newest failure per error type
(metrics.latest_errors): for windows at arbitrary minutes, with and without a model filter, every
row equals what plain Python computes from the raw calls (sums, failures and histograms exactly:
a roll-up's histogram is the count of its calls per bucket, rollup_math.bucket_index)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import metrics, rollup_math, rollup_sql, rollups
from llm.models import LLMRequestLog, MetricWatermark
from tests.factories import drawn_traffic, make_logs, random_calls

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 31, 10, 52, 23, tzinfo=UTC)
MODELS = ["model-a", "model-b"]
TYPES = ["timeout", "rate_limit", "server_error"]
# Windows at odd minutes: by hour (hours and raw edges, the last one subtracted) and by day
# (whole local days, hours and raw edges).
WINDOWS = [
    (NOW - timedelta(hours=20, minutes=17), NOW - timedelta(minutes=4), "hour"),
    (NOW - timedelta(days=2, hours=19, minutes=41), NOW - timedelta(minutes=9), "day"),
]


@pytest.fixture
def calls() -> list[LLMRequestLog]:
    """300 calls over 3 days and 40 in the current hour, rolled up."""
    rng = random.Random(7)
    moments = [NOW - timedelta(seconds=rng.uniform(0, 3 * 86400)) for _ in range(300)]
    moments += [rollup_math.floor_hour(NOW) + timedelta(seconds=rng.uniform(0, 3599)) for _ in range(40)]
    traffic = drawn_traffic(rng, prompt=900, completion=300, sigma=0.9, cost=9_000_000)
    failures = {"failure_share": 0.25, "error_types": TYPES, "message": "failure {}"}
    random_calls(rng, len(moments), timestamp=lambda i: moments[i], models=MODELS, **failures, **traffic)
    rollups.roll_up()
    return list(LLMRequestLog.objects.all())


def the_plan(start, end, period, model=""):
    rows = LLMRequestLog.objects.in_window(start, end).for_model(model)
    chosen = metrics.Selection(rows, start, end, model, rollups_apply=True)
    return metrics.plan(chosen, period, subtract=True)


def in_spans(log, days, hours) -> bool:
    zone = timezone.get_current_timezone()
    return (bool(days) and days[0] <= timezone.localtime(log.timestamp, zone).date() <= days[-1]) or any(
        low <= log.timestamp < high for low, high in hours
    )


def period_of(log, days) -> tuple:
    """The roll-up row a call is in: its local day when among `days`, else its UTC hour (epoch)."""
    day = timezone.localtime(log.timestamp).date()
    if days and days[0] <= day <= days[-1]:
        return (day, None)
    return (None, int(rollup_math.floor_hour(log.timestamp).timestamp()))


def test_latency_rows_equal_the_raw_calls(calls):
    for (start, end, period), model in [(window, model) for window in WINDOWS for model in ("", "model-b")]:
        with time_machine.travel(NOW, tick=False):
            split = the_plan(start, end, period, model).split
        assert split.hours and (split.days or period == "hour")
        expected = defaultdict(list)
        for log in calls:
            if model in ("", log.model_name) and in_spans(log, split.days, split.hours):
                expected[(*period_of(log, split.days), log.model_name)].append(log)
        rows = rollup_sql.latency_rows(split.days, split.hours, model)
        assert expected and len(rows) == len(expected)
        names = ("model_name", *rollup_sql.SUMS, "errors", "histogram")
        for day, epoch, *values in rows:
            row = dict(zip(names, values, strict=True))
            group = expected[(day, epoch, row["model_name"])]
            assert (row["requests"], row["errors"]) == (len(group), sum(log.is_error for log in group))
            assert (row["prompt_tokens"], row["total_tokens"]) == (
                sum(log.prompt_tokens for log in group),
                sum(log.total_tokens for log in group),
            )
            assert row["cost_units"] == sum(int(log.cost_estimate * rollups.COST_SCALE) for log in group)
            assert row["latency_sum_ms"] == pytest.approx(sum(log.latency_ms for log in group), rel=1e-12)
            dense = rollup_math.add_encoded(rollup_math.empty(), row["histogram"])
            assert {index: int(dense[index]) for index in dense.nonzero()[0]} == Counter(
                rollup_math.bucket_index(log.latency_ms) for log in group
            )


def test_failure_rows_equal_the_raw_calls(calls):
    for (start, end, period), model in [(window, model) for window in WINDOWS for model in ("", "model-a")]:
        with time_machine.travel(NOW, tick=False):
            split = the_plan(start, end, period, model).split
        edges = sorted({rollup_math.floor_hour(low) for low, _high in split.outside})
        assert edges  # the window's last hour reaches beyond it
        failed = [
            log
            for log in calls
            if log.is_error and model in ("", log.model_name) and in_spans(log, split.days, split.hours)
        ]
        expected = Counter()
        latest = {}
        for log in failed:
            day, epoch = period_of(log, split.days)
            edge = epoch if epoch is not None and rollup_math.floor_hour(log.timestamp) in edges else 0
            key = (log.error_type, day is not None, edge)
            expected[key] += 1
            latest[key] = max(latest.get(key, day or epoch), day or epoch)
        rows = rollup_sql.failure_rows(split.days, split.hours, model, edges)
        assert expected and any(edge for _type, _day, edge in expected)
        assert {(error_type, day is not None, edge): int(count) for error_type, count, day, edge, _hour in rows} == (
            dict(expected)
        )
        for error_type, _count, day, edge, hour in rows:
            assert (day if day is not None else hour) == latest[(error_type, day is not None, edge)]


def test_the_watermark_and_newest_id(calls):
    assert rollup_sql.watermark() == MetricWatermark.objects.get(name=rollups.ROLLUPS).last_id
    assert rollup_sql.newest_id() == max(log.id for log in calls)
    MetricWatermark.objects.filter(name=rollups.ROLLUPS).delete()
    assert rollup_sql.watermark() == 0


def test_the_written_out_readings_are_logged_as_queries(calls):
    start, end, period = WINDOWS[1]
    with time_machine.travel(NOW, tick=False):
        split = the_plan(start, end, period).split
    with CaptureQueriesContext(connection) as queries:
        rollup_sql.latency_rows(split.days, split.hours, "")
        rollup_sql.failure_rows(split.days, split.hours, "", [])
    assert len(queries) == 2
    assert '"llm_dailylatency"' in queries[0]["sql"] and '"llm_hourlylatency"' in queries[0]["sql"]


def test_the_newest_failure_per_type_within_bounds(calls):
    """latest_errors with a bound before which each type's newest failure lies (`until`), on rows
    of one model and window: one query, the newest by (time, id) among the calls."""
    start, end = NOW - timedelta(days=2, minutes=13), NOW - timedelta(hours=3, minutes=7)
    failed = LLMRequestLog.objects.in_window(start, end).for_model("model-a").failed()
    since = {TYPES[0]: start, TYPES[1]: start + timedelta(hours=9), TYPES[2]: end}
    until = {TYPES[0]: end - timedelta(hours=5, minutes=31), TYPES[2]: end + timedelta(hours=1)}
    with CaptureQueriesContext(connection) as queries:
        found = metrics.latest_errors(failed, since, until)
    assert len(queries) == 1
    for error_type, moment in since.items():
        chosen = [
            log
            for log in calls
            if log.is_error
            and log.model_name == "model-a"
            and log.error_type == error_type
            and start <= log.timestamp < end
            and moment <= log.timestamp < until.get(error_type, end)
        ]
        newest = max(chosen, key=lambda log: (log.timestamp, log.id), default=None)
        expected = newest and {"error_message": newest.error_message, "timestamp": newest.timestamp}
        assert found[error_type] == expected
    assert found[TYPES[0]] is not None and found[TYPES[2]] is None


def test_the_latest_failed_hour_per_type(calls):
    start = NOW - timedelta(days=2, hours=7, minutes=29)
    spans = {TYPES[0]: (start, NOW), TYPES[1]: (start, NOW - timedelta(hours=30)), "no such type": (start, NOW)}
    for model in ("", "model-b"):
        found = dict(rollup_sql.latest_failed_hours(spans, model))
        expected = {}
        for log in calls:
            hour = rollup_math.floor_hour(log.timestamp)
            low, high = spans.get(log.error_type, (NOW, NOW))
            if log.is_error and model in ("", log.model_name) and low <= hour < high:
                expected[log.error_type] = max(expected.get(log.error_type, 0), int(hour.timestamp()))
        assert found == expected and set(found) == set(TYPES[:2])


def test_recent_rows_read_nothing_when_every_call_is_rolled_up(calls):
    watermark = rollup_sql.watermark()
    assert watermark == max(log.id for log in calls)
    with CaptureQueriesContext(connection) as queries:
        recent = metrics.recent_rows(watermark)
    assert len(queries) == 1  # the newest id only
    assert (recent.hours, recent.groups, recent.failed_hours) == ({}, [], {})
    with time_machine.travel(NOW, tick=False):
        late = make_logs(3, timestamp=NOW - timedelta(hours=2), status="error", error_type=TYPES[0])
    recent = metrics.recent_rows(watermark)
    hour = int(rollup_math.floor_hour(NOW - timedelta(hours=2)).timestamp())
    assert sum(count for count, _units in recent.hours.values()) == len(late)
    assert {key[0] for key in recent.hours} == {hour}
