"""A page's window read once (llm.metrics.share): every figure derived from the shared reading
equals the figure read on its own and the plain-Python recomputation over the raw rows (counts,
tokens and cost exactly, percentiles within rollup_math.ERROR_BOUND of NumPy's), and the pages
read the window's roll-ups once instead of once per figure."""

from __future__ import annotations

import importlib
import itertools
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import time_machine
from django.apps import apps as django_apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import dashboard, metrics, rollup_math, rollups
from llm.models import HourlyLatency, HourlyRollup, LLMRequestLog, MetricWatermark
from tests.factories import drawn_traffic, make_logs, random_calls

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
MODELS = ["model-a", "model-b", "model-c"]
ERROR_TYPES = ["timeout", "rate_limit", "server_error"]
BOUND = rollup_math.ERROR_BOUND
# Windows not aligned to hours: by hour (26 hours, 6 days) and by day (9 days).
WINDOWS = [
    (NOW - timedelta(hours=26, minutes=7), NOW - timedelta(minutes=3), "hour"),
    (NOW - timedelta(days=6, hours=5, minutes=2), NOW - timedelta(hours=3, minutes=11), "hour"),
    (NOW - timedelta(days=9, minutes=13, seconds=7), NOW - timedelta(minutes=41), "day"),
]


def random_logs(count: int, seed: int) -> None:
    rng = random.Random(seed)
    drawn = drawn_traffic(rng) | {"user_id": lambda i: rng.choice(["", "ann", "bob", "cy", "dee"])}
    within_ten_days = {"timestamp": lambda i: NOW - timedelta(seconds=rng.randint(0, 10 * 86400))}
    random_calls(rng, count, failure_share=0.15, models=MODELS, error_types=ERROR_TYPES, **within_ten_days, **drawn)


@pytest.fixture(scope="module")
def calls(module_transaction, django_db_blocker) -> list[LLMRequestLog]:
    """Calls over 10 days, part rolled up, then more (late ones among them) above the watermark;
    written once for the module (tests/conftest.py's module_transaction), undone after it."""
    with django_db_blocker.unblock():
        random_logs(700, seed=3)
        rollups.roll_up()
        random_logs(250, seed=4)
        return list(LLMRequestLog.objects.all())


def chosen(start, end, model="", status="") -> metrics.Selection:
    rows = LLMRequestLog.objects.in_window(start, end).for_model(model)
    if status:
        rows = rows.filter(status=status)
    return metrics.Selection(rows, start, end, model, status, rollups_apply=True)


def within(calls, start, end, model="", status=""):
    return [
        log
        for log in calls
        if start <= log.timestamp < end and model in ("", log.model_name) and status in ("", log.status)
    ]


def cost(rows) -> float:
    return float(sum((log.cost_estimate for log in rows), Decimal(0)))


def local_period(moment: datetime, group_by: str) -> str:
    local = timezone.localtime(moment).replace(minute=0, second=0, microsecond=0)
    return (local if group_by == "hour" else local.replace(hour=0)).isoformat()


FIGURES = [
    lambda selection, group_by: metrics.overview(selection),
    lambda selection, group_by: metrics.timeseries(selection, group_by),
    lambda selection, group_by: metrics.token_usage(selection, group_by),
    lambda selection, group_by: metrics.errors(selection),
    lambda selection, group_by: metrics.cost_by_model(selection),
    lambda selection, group_by: metrics.model_usage(selection),
    lambda selection, group_by: metrics.latency_by_model(selection),
    lambda selection, group_by: metrics.daily_stats(selection),
    lambda selection, group_by: metrics.breakdown(selection, "model", "cost", 10),
    lambda selection, group_by: metrics.breakdown(selection, "error_type", "errors", 10),
]


@pytest.mark.parametrize(("start", "end", "group_by"), WINDOWS)
@pytest.mark.parametrize(("model", "status"), [("", ""), ("model-b", ""), ("", "error")])
def test_every_figure_from_the_shared_reading_equals_the_figure_read_alone(calls, start, end, group_by, model, status):
    alone = chosen(start, end, model, status)
    shared = metrics.share(alone, group_by)
    assert shared.shared is not None and shared.shared.period == group_by
    for figure in FIGURES:
        assert_same(figure(shared, group_by), figure(alone, group_by))


def assert_same(left, right) -> None:
    """Equal, floats within rounding (sums of float latencies added in another order)."""
    assert type(left) is type(right)
    if isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            assert_same(left[key], right[key])
    elif isinstance(left, list):
        assert len(left) == len(right)
        for one, other in zip(left, right, strict=True):
            assert_same(one, other)
    elif isinstance(left, float):
        assert left == pytest.approx(right, rel=1e-12)
    else:
        assert left == right


@pytest.mark.parametrize(("start", "end", "group_by"), WINDOWS)
def test_shared_figures_equal_the_raw_rows(calls, start, end, group_by):
    rows = within(calls, start, end)
    shared = metrics.share(chosen(start, end), group_by)

    figures = metrics.overview(shared)
    assert figures["total_requests"] == len(rows)
    assert figures["failed_requests"] == sum(log.is_error for log in rows)
    assert figures["total_tokens"] == sum(log.total_tokens for log in rows)
    assert figures["total_cost"] == cost(rows)
    assert figures["unique_users"] == len({log.user_id for log in rows if log.user_id})
    latencies = [log.latency_ms for log in rows]
    assert figures["avg_latency_ms"] == pytest.approx(float(np.mean(latencies)))
    for name, fraction in metrics.FRACTIONS.items():
        exact = float(np.percentile(latencies, fraction * 100))
        assert figures[f"{name}_latency_ms"] == pytest.approx(exact, rel=BOUND)

    per_period = defaultdict(list)
    for log in rows:
        per_period[local_period(log.timestamp, group_by)].append(log)
    series = metrics.timeseries(shared, group_by)
    assert [row["period"] for row in series] == sorted(per_period)
    for row in series:
        group = per_period[row["period"]]
        assert (row["requests"], row["errors"], row["prompt_tokens"], row["cost"]) == (
            len(group),
            sum(log.is_error for log in group),
            sum(log.prompt_tokens for log in group),
            cost(group),
        )
        if len(group) >= metrics.MIN_CALLS_FOR_PERCENTILE:
            exact = float(np.percentile([log.latency_ms for log in group], 95))
            assert row["p95_latency_ms"] == pytest.approx(exact, rel=BOUND)

    usage = {row["model"]: row for row in metrics.model_usage(shared)}
    assert set(usage) == {log.model_name for log in rows}
    for model, row in usage.items():
        group = [log for log in rows if log.model_name == model]
        assert (row["requests"], row["errors"], row["total_tokens"], row["cost"]) == (
            len(group),
            sum(log.is_error for log in group),
            sum(log.total_tokens for log in group),
            cost(group),
        )
        exact = float(np.percentile([log.latency_ms for log in group], 99))
        assert row["p99_latency_ms"] == pytest.approx(exact, rel=BOUND)

    errors = metrics.errors(shared)
    failed = sorted((log for log in rows if log.is_error), key=lambda log: (log.timestamp, log.id))
    assert (errors["total_requests"], errors["total_errors"]) == (len(rows), len(failed))
    assert {row["error_type"] for row in errors["errors"]} == {log.error_type for log in failed}
    for row in errors["errors"]:
        group = [log for log in failed if log.error_type == row["error_type"]]
        assert row["count"] == len(group)
        assert (row["latest_message"], row["last_seen"]) == (group[-1].error_message, group[-1].timestamp.isoformat())


def test_a_window_the_roll_ups_do_not_answer_is_not_shared(calls):
    short = chosen(NOW - timedelta(hours=2), NOW)
    assert metrics.share(short, "minute").shared is None
    by_user = metrics.Selection(LLMRequestLog.objects.filter(user_id="ann"), *WINDOWS[2][:2], rollups_apply=False)
    assert metrics.share(by_user, "day").shared is None
    # A reading by day answers figures by day and over the window, not by hour.
    by_day = metrics.share(chosen(*WINDOWS[2][:2]), "day").shared
    assert by_day.answers("day") and by_day.answers(None) and not by_day.answers("hour")


def table_reads(model, queries) -> int:
    return sum(f'"{model._meta.db_table}"' in query["sql"] for query in queries)


def hourly_rollup_reads(queries) -> int:
    return table_reads(HourlyRollup, queries)


@pytest.mark.parametrize("key", ["24h", "7d"])
def test_the_overview_page_reads_the_window_once(calls, key):
    with time_machine.travel(NOW, tick=False):
        window = dashboard.time_range({"range": key})
        with CaptureQueriesContext(connection) as shared:
            figures = dashboard.overview(window)
    # The window's hours once (their sums, failures and histograms per hour and model from
    # HourlyLatency, the failures per error type from HourlyRollup), the previous window's (its
    # overview) and the month's spend (llm.forecast) from HourlyLatency, not once per figure.
    assert hourly_rollup_reads(shared.captured_queries) == 1
    assert table_reads(HourlyLatency, shared.captured_queries) == 3
    start, end = window.start, window.end
    rows = within(list(LLMRequestLog.objects.all()), start, end)
    assert figures["figures"]["total_requests"] == len(rows)
    assert sum(row["requests"] for row in figures["series"]) == len(rows)
    assert {row["model"]: row["cost"] for row in figures["cost_by_model"]} == {
        model: cost([log for log in rows if log.model_name == model]) for model in {log.model_name for log in rows}
    }
    assert sum(row["count"] for row in figures["errors_by_type"]) == sum(log.is_error for log in rows)


def test_the_analytics_page_reads_the_window_once(client, admin_user, calls):
    client.force_login(admin_user)
    with time_machine.travel(NOW, tick=False), CaptureQueriesContext(connection) as queries:
        response = client.get("/analytics/", {"range": "7d"})
    assert response.status_code == 200
    # The model table, the days and the breakdown by model: one reading of the window's hours.
    assert hourly_rollup_reads(queries.captured_queries) == 1
    window = response.context["window"]
    rows = within(list(LLMRequestLog.objects.all()), window.start, window.end)
    assert sum(row["requests"] for row in response.context["daily"]) == len(rows)
    assert {row["key"]: row["requests"] for row in response.context["breakdown"]["groups"]} == {
        model: sum(log.model_name == model for log in rows) for model in {log.model_name for log in rows}
    }


def hourly_latency() -> dict[tuple, list[int]]:
    stored = HourlyLatency.objects.values_list("hour", "model_name", "latency_histogram")
    return {(hour, model): rollup_math.add_encoded(rollup_math.empty(), blob).tolist() for hour, model, blob in stored}


def test_hourly_latency_is_each_hour_and_models_histogram_kept_and_rebuilt_and_filled(calls):
    """HourlyLatency equals the histogram of each UTC hour and model's calls, whether added after
    writes (late calls included), rebuilt, or filled by its migration from HourlyRollup."""
    rollups.roll_up()
    expected = defaultdict(rollup_math.empty)
    for log in calls:
        expected[(rollup_math.floor_hour(log.timestamp), log.model_name)][rollup_math.bucket_index(log.latency_ms)] += 1
    expected = {key: dense.tolist() for key, dense in expected.items()}
    assert hourly_latency() == expected
    rollups.rebuild()
    assert hourly_latency() == expected
    HourlyLatency.objects.all().delete()
    importlib.import_module("llm.migrations.0030_hourly_latency").fill_from_hourly_rollups(django_apps, None)
    assert hourly_latency() == expected


def test_a_status_filter_reads_the_hours_histograms_by_status(calls):
    """HourlyLatency merges the statuses: under a status filter the hours' histograms come from
    HourlyRollup, and the figures stay those of the filtered calls."""
    start, end, _ = WINDOWS[0]
    failed = [log.latency_ms for log in within(calls, start, end, status="error")]
    figures = metrics.overview(chosen(start, end, status="error"))
    assert figures["total_requests"] == len(failed)
    assert figures["p50_latency_ms"] == pytest.approx(float(np.percentile(failed, 50)), rel=BOUND)


def test_alert_windows_are_read_at_one_watermark_and_equal_each_window_alone(calls):
    """window_totals reads the roll-ups' state once for all its windows (not twice per window), a
    window asked for with and without its p95 once, and each answer equals the window measured
    alone and the raw rows."""
    windows = [
        metrics.Window(start, end, model, latency=latency)
        for start, end, _ in WINDOWS
        for model in ("", "model-c")
        for latency in (False, True)
    ]
    with CaptureQueriesContext(connection) as queries:
        together = metrics.window_totals(windows)
    assert table_reads(MetricWatermark, queries.captured_queries) == 2  # before and after: it held still
    for window in windows:
        assert together[window] == metrics.window_totals([window])[window]
        rows = within(calls, window.start, window.end, window.model)
        assert (together[window].requests, together[window].errors, together[window].cost) == (
            len(rows),
            sum(log.is_error for log in rows),
            cost(rows),
        )
        if window.latency:
            exact = float(np.percentile([log.latency_ms for log in rows], 95))
            assert together[window].p95_latency_ms == pytest.approx(exact, rel=BOUND)


def test_alert_windows_of_all_models_and_of_one_share_one_reading(calls):
    """Rules over the same window, of all models and of one, read the roll-ups and the raw edges
    once (all models, grouped by model): as many queries as the window of all models alone."""
    start, end, _ = WINDOWS[0]
    alone = [metrics.Window(start, end, "", latency=True)]
    both = [*alone, metrics.Window(start, end, "model-c"), metrics.Window(start, end, "model-a", latency=True)]
    with CaptureQueriesContext(connection) as one:
        metrics.window_totals(alone)
    with CaptureQueriesContext(connection) as shared:
        together = metrics.window_totals(both)
    assert len(shared.captured_queries) == len(one.captured_queries)
    for window in both:
        rows = within(calls, start, end, window.model)
        assert (together[window].requests, together[window].errors, together[window].total_tokens) == (
            len(rows),
            sum(log.is_error for log in rows),
            sum(log.total_tokens for log in rows),
        )
        assert together[window].cost == cost(rows)
        if window.latency:
            exact = float(np.percentile([log.latency_ms for log in rows], 95))
            assert together[window].p95_latency_ms == pytest.approx(exact, rel=BOUND)
        else:
            assert together[window].p95_latency_ms is None


def test_rows_read_twice_under_one_key_add_up_as_in_turn():
    """The reading keeps its rows as read and adds them per key in NumPy: the same sums, floats
    to the last bit, as adding each key's rows in turn in Python (None counting as 0), and the
    failures (the last column) counted per key."""
    rng = random.Random(11)
    reading = metrics.SharedReading("hour", 0)
    keys = [
        (period, model) for model in MODELS for period in ("2026-03-30T10:00:00+00:00", "2026-03-30T11:00:00+00:00")
    ]
    for _ in range(300):
        reading.keys.append(rng.choice(keys))
        reading.values.append(
            [
                (rng.lognormvariate(6, 2) if name in metrics.FLOAT_SUMS else rng.randint(0, 10**12))
                if rng.random() > 0.1
                else None
                for name in metrics.ROLLUP_SUMS
            ]
            + [rng.choice([None, 0, rng.randint(1, 10**6)])]
        )
    expected: dict[tuple, list] = {}
    for key, values in zip(reading.keys, reading.values, strict=True):
        values = [value or 0 for value in values]
        total = expected.get(key)
        expected[key] = values if total is None else [a + b for a, b in zip(total, values, strict=True)]
    found = reading.sums(("period", "model_name"), "hour")
    assert set(expected) == set(found)
    for key, total in expected.items():
        figures = found[key]
        assert [getattr(figures, name) for name in metrics.ROLLUP_SUMS] == total[:-1]
    reading.latency, reading.cells = rollup_math.unpack([], []), {}
    by_model = reading.totals(("model_name",), "hour")
    for model in MODELS:
        rows = [total for key, total in expected.items() if key[1] == model]
        assert by_model[(model,)].errors == sum(total[-1] for total in rows)
        assert by_model[(model,)].figures.requests == sum(total[0] for total in rows)


def test_errors_looked_for_within_their_latest_hour_equal_the_raw_rows(calls):
    """errors() given the calls above the watermark (the overview's `recent`) looks for each
    type's latest failure only up to the end of the latest hour with one (HourlyRollup and the
    calls above the watermark): the same answer as the raw rows, a bound never before the latest
    failure, and by day a narrower one than the day's end."""
    for (start, end, group_by), model in itertools.product(WINDOWS, ["", "model-b"]):
        shared = metrics.share(chosen(start, end, model), group_by)
        reading = shared.shared
        recent = metrics.recent_rows(reading.watermark)
        assert recent is not None and recent.failed_hours  # some failures above the watermark
        answer = metrics.errors(shared, recent)
        assert answer == metrics.errors(shared)
        failed = sorted(
            (log for log in within(calls, start, end, model) if log.is_error), key=lambda log: (log.timestamp, log.id)
        )
        assert {row["error_type"] for row in answer["errors"]} == {log.error_type for log in failed}
        for row in answer["errors"]:
            group = [log for log in failed if log.error_type == row["error_type"]]
            assert row["count"] == len(group)
            latest = (group[-1].error_message, group[-1].timestamp.isoformat())
            assert (row["latest_message"], row["last_seen"]) == latest
        since = {error_type: moment for error_type, (_count, moment) in metrics._error_counts(shared)[1].items()}
        until = reading.failures_until()
        narrowed = metrics._failure_hours(shared, since, until, recent)
        for error_type, bound in narrowed.items():
            latest_time = max(log.timestamp for log in failed if log.error_type == error_type)
            assert latest_time < bound <= until[error_type]
        if group_by == "day":
            assert any(narrowed[error_type] < until[error_type] for error_type in narrowed)


def test_a_latest_failure_above_the_watermark_before_a_later_one_outside_the_window_is_found():
    """A type's latest failure of the window is above the watermark, in a later hour than any of
    its rolled-up failures, and the same type failed again (also above the watermark) after the
    day the reading says its latest failure lies in: the search still reaches the window's one."""
    start, end = NOW - timedelta(days=3, minutes=13), NOW - timedelta(hours=5)
    make_logs(3, status="error", error_type="timeout", error_message="rolled", timestamp=NOW - timedelta(days=2))
    make_logs(2, status="success", timestamp=NOW - timedelta(days=1))
    rollups.roll_up()
    make_logs(1, status="error", error_type="timeout", error_message="in window", timestamp=NOW - timedelta(hours=6))
    make_logs(1, status="error", error_type="timeout", error_message="later", timestamp=NOW + timedelta(days=1))
    other = NOW - timedelta(hours=5, minutes=30)
    make_logs(4, status="error", error_type="rate_limit", error_message="other", timestamp=other)
    shared = metrics.share(chosen(start, end), "day")
    recent = metrics.recent_rows(shared.shared.watermark)
    rows = {row["error_type"]: row for row in metrics.errors(shared, recent)["errors"]}
    assert rows["timeout"]["count"] == 4
    assert (rows["timeout"]["latest_message"], rows["timeout"]["last_seen"]) == (
        "in window",
        (NOW - timedelta(hours=6)).isoformat(),
    )
    assert rows["rate_limit"]["latest_message"] == "other"


def test_a_reading_given_the_calls_above_the_watermark_takes_them_from_there(calls):
    """share(..., recent): the calls above the watermark within the rolled-up spans come from
    RecentRows.groups (no query of their own), every figure the same as read alone, for windows by hour
    and by day, with a model or a status filter, and figures over the raw rows too."""
    state = metrics.rollup_state()
    recent = metrics.recent_rows(state.last_id, state)
    assert recent is not None and recent.groups
    filters = [("", ""), ("model-b", ""), ("", "error")]
    for (start, end, group_by), (model, status) in itertools.product(WINDOWS, filters):
        alone = chosen(start, end, model, status)
        with CaptureQueriesContext(connection) as without:
            metrics.share(alone, group_by)
        with CaptureQueriesContext(connection) as given:
            shared = metrics.share(alone, group_by, recent)
        # Neither the roll-ups' state (recent's) nor the calls above the watermark read again.
        assert len(given) == len(without) - 2
        for figure in FIGURES:
            assert_same(figure(shared, group_by), figure(alone, group_by))
        rows = within(calls, start, end, model, status)
        figures = metrics.overview(shared)
        assert (figures["total_requests"], figures["failed_requests"], figures["total_cost"]) == (
            len(rows),
            sum(log.is_error for log in rows),
            cost(rows),
        )


def test_an_hour_partly_within_the_spans_or_not_one_local_hour_is_not_taken_from_the_groups():
    """_hour_within: wholly within a span, wholly outside every span, or neither (then the calls
    are read); a UTC hour that is not one local hour (a zone a half hour off UTC) is not taken."""
    hour = int(datetime(2026, 3, 30, 10, tzinfo=UTC).timestamp())
    bounds = [(hour - 7200.0, hour + 3600.0), (hour + 7200.0 + 60, hour + 9 * 3600.0)]
    assert metrics._hour_within(hour, bounds, UTC) is True
    assert metrics._hour_within(hour + 3600, bounds, UTC) is False
    assert metrics._hour_within(hour + 7200, bounds, UTC) is None  # starts a minute before the span
    assert metrics._hour_within(hour, bounds, ZoneInfo("Asia/Kolkata")) is None
    assert metrics._hour_within(hour, bounds, ZoneInfo("Europe/Paris")) is True


def test_rows_built_from_columns_are_the_rows_of_each_groups_totals(calls):
    """SharedReading.rows (the series' rows, built from columns for all groups at once) equal
    Totals.row of each group's totals, value for value (floats to the last bit)."""
    names = ("p50", "p95", "p99")
    for start, end, group_by in WINDOWS:
        for model, status in [("", ""), ("model-b", ""), ("", "error")]:
            reading = metrics.share(chosen(start, end, model, status), group_by).shared
            for group in [("period",), (), ("model_name",), ("period", "model_name")]:
                for min_calls in (0, 10):
                    expected = {
                        key: totals.row(*names, min_calls=min_calls)
                        for key, totals in reading.totals(group, group_by).items()
                    }
                    assert reading.rows(group, names, min_calls) == expected
