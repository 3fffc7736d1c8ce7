"""An edge of a window that is most of a recent UTC hour is read as the hour's roll-up less the
rest of the hour (rollup_math.subtract_edges, read_shared): with both edges at random minutes,
calls timestamped after the window's end (and after now), late calls below and above the
roll-ups' watermark, every figure of the overview page equals the plain-Python recomputation
over the raw rows (counts, tokens and cost exactly, percentiles within rollup_math.ERROR_BOUND
of NumPy's)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
import time_machine
from django.utils import timezone

from llm import metrics, rollup_math, rollups
from llm.models import LLMRequestLog
from tests.factories import drawn_traffic, make_logs, random_calls

pytestmark = pytest.mark.django_db
# Late in its hour: a window ending now keeps most of the current hour (its edge is subtracted).
NOW = datetime(2026, 3, 31, 10, 52, 23, tzinfo=UTC)
HOUR = rollup_math.floor_hour(NOW)
MODELS = ["model-a", "model-b", "model-c"]
ERROR_TYPES = ["timeout", "rate_limit", "server_error"]
BOUND = rollup_math.ERROR_BOUND


def random_logs(count: int, seed: int, moment) -> None:
    rng = random.Random(seed)
    speed = {"output_tokens_per_second": lambda i: rng.choice([None, rng.uniform(10, 300)])}
    drawn = drawn_traffic(rng) | speed
    random_calls(
        rng, count, failure_share=0.2, timestamp=lambda i: moment(rng), models=MODELS, error_types=ERROR_TYPES, **drawn
    )


def within_days(days: float):
    return lambda rng: NOW - timedelta(seconds=rng.uniform(0, days * 86400))


def in_current_hour(rng) -> datetime:
    """Anywhere in NOW's hour, after now too (a client's clock ahead)."""
    return HOUR + timedelta(seconds=rng.uniform(0, 3599))


@pytest.fixture
def calls() -> list[LLMRequestLog]:
    """Calls over 3 days and the current hour, rolled up; late calls (old timestamps) rolled up
    after them (below the watermark); then late and current calls not rolled up (above it)."""
    random_logs(500, 1, within_days(3))
    random_logs(120, 2, in_current_hour)
    rollups.roll_up()
    random_logs(80, 3, within_days(1.2))
    rollups.roll_up()
    random_logs(60, 4, within_days(1.2))
    random_logs(40, 5, in_current_hour)
    return list(LLMRequestLog.objects.all())


def windows(seed: int) -> list[tuple[datetime, datetime, str]]:
    """Windows ending at a random minute of the current hour's second half (or now), starting at
    a random minute of an hour's first half (within the last day: subtracted too) or older."""
    rng = random.Random(seed)
    found = []
    for hours, period in [(5, "hour"), (20, "hour"), (23, "hour"), (40, "hour"), (60, "day")]:
        end = NOW if rng.random() < 0.3 else HOUR + timedelta(minutes=rng.uniform(31, 52))
        start = rollup_math.floor_hour(end - timedelta(hours=hours)) + timedelta(minutes=rng.uniform(1, 29))
        found.append((start, end, period))
    return found


WINDOWS = windows(17)


def chosen(start, end, model="", status="") -> metrics.Selection:
    rows = LLMRequestLog.objects.in_window(start, end).for_model(model)
    if status:
        rows = rows.filter(status=status)
    return metrics.Selection(rows, start, end, model, status, rollups_apply=True)


def cost(rows) -> float:
    return float(sum((log.cost_estimate for log in rows), Decimal(0)))


def local_period(moment: datetime, group_by: str) -> str:
    local = timezone.localtime(moment).replace(minute=0, second=0, microsecond=0)
    return (local if group_by == "hour" else local.replace(hour=0)).isoformat()


def test_the_edges_are_subtracted_where_most_of_a_recent_hour():
    with time_machine.travel(NOW, tick=False):
        since = timezone.now() - metrics.UNPURGED
        for start, end, period in WINDOWS:
            split = metrics.plan(chosen(start, end), period, subtract=True).split
            plain = metrics.plan(chosen(start, end), period).split
            # The end edge always; the start edge within the last day only.
            assert (HOUR, HOUR + timedelta(hours=1)) in [
                (max(low, HOUR), min(high, HOUR + timedelta(hours=1))) for low, high in split.hours
            ]
            assert [span for span in split.raw if span[0] >= HOUR] == []
            assert any(low == end for low, _high in split.outside) == (end < HOUR + timedelta(hours=1))
            subtracted_start = rollup_math.floor_hour(start) >= since
            assert any(high == start for _low, high in split.outside) == subtracted_start
            assert len(split.raw) == len(plain.raw) - 1 - subtracted_start


def test_every_figure_equals_the_raw_rows(calls):
    # One set of calls for every case (rolling them up is the test's cost).
    for start, end, group_by in WINDOWS:
        for model, status in [("", ""), ("model-b", ""), ("", "error")]:
            check_figures(calls, start, end, group_by, model, status)


def check_figures(calls, start, end, group_by, model, status) -> None:
    rows = [
        log
        for log in calls
        if start <= log.timestamp < end and model in ("", log.model_name) and status in ("", log.status)
    ]
    with time_machine.travel(NOW, tick=False):
        shared = metrics.share(chosen(start, end, model, status), group_by)
        assert shared.shared is not None
        figures = metrics.overview_figures(shared)
        series = metrics.timeseries(shared, group_by)
        usage = {row["model"]: row for row in metrics.model_usage(shared)}
        costs = {row["model"]: row["cost"] for row in metrics.cost_by_model(shared)}
        errors = metrics.errors(shared)

    assert figures["total_requests"] == len(rows)
    assert figures["failed_requests"] == sum(log.is_error for log in rows)
    assert (figures["prompt_tokens"], figures["total_tokens"]) == (
        sum(log.prompt_tokens for log in rows),
        sum(log.total_tokens for log in rows),
    )
    assert figures["total_cost"] == cost(rows)
    latencies = [log.latency_ms for log in rows]
    assert figures["avg_latency_ms"] == pytest.approx(float(np.mean(latencies)), rel=1e-9)
    for name, fraction in metrics.FRACTIONS.items():
        exact = float(np.percentile(latencies, fraction * 100))
        assert figures[f"{name}_latency_ms"] == pytest.approx(exact, rel=BOUND)

    per_period = defaultdict(list)
    for log in rows:
        per_period[local_period(log.timestamp, group_by)].append(log)
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

    models = {log.model_name for log in rows}
    assert set(usage) == models and set(costs) == models
    for name in models:
        group = [log for log in rows if log.model_name == name]
        assert (usage[name]["requests"], usage[name]["errors"], usage[name]["total_tokens"]) == (
            len(group),
            sum(log.is_error for log in group),
            sum(log.total_tokens for log in group),
        )
        assert usage[name]["cost"] == costs[name] == cost(group)
        exact = float(np.percentile([log.latency_ms for log in group], 99))
        assert usage[name]["p99_latency_ms"] == pytest.approx(exact, rel=BOUND)

    failed = sorted((log for log in rows if log.is_error), key=lambda log: (log.timestamp, log.id))
    assert (errors["total_requests"], errors["total_errors"]) == (len(rows), len(failed))
    assert {row["error_type"] for row in errors["errors"]} == {log.error_type for log in failed}
    for row in errors["errors"]:
        group = [log for log in failed if log.error_type == row["error_type"]]
        assert row["count"] == len(group)
        assert (row["latest_message"], row["last_seen"]) == (group[-1].error_message, group[-1].timestamp.isoformat())


def test_the_overview_page_shows_the_raw_rows_figures(client, admin_user, calls):
    client.force_login(admin_user)
    for start, end, _group_by in WINDOWS[:3]:
        query = {"range": "custom", "start_date": start.isoformat(), "end_date": end.isoformat()}
        with time_machine.travel(NOW, tick=False):
            response = client.get("/", query)
        assert response.status_code == 200
        rows = [log for log in calls if start <= log.timestamp < end]
        cards = {card["key"]: card["value"] for card in response.context["cards"]}
        assert cards["requests"] == len(rows)
        assert cards["total_tokens"] == sum(log.total_tokens for log in rows)
        assert cards["total_cost"] == cost(rows)
        assert sum(row["requests"] for row in response.context["series"]) == len(rows)
        assert sum(row["count"] for row in response.context["errors_by_type"]) == sum(log.is_error for log in rows)


def test_an_hour_only_beyond_the_window_leaves_no_group():
    """A model whose calls of an edge hour all lie beyond the window: the hour's roll-up less
    those calls is nothing, and the model is no group of the figures (not one of 0 calls); an
    error type whose failures of the edge hour all lie beyond it is last seen before the hour."""
    make_logs(3, timestamp=HOUR - timedelta(hours=3), model_name="model-a", latency_ms=100.0)
    make_logs(2, timestamp=HOUR + timedelta(minutes=50), model_name="model-z", latency_ms=50.0)
    failure = {"model_name": "model-a", "latency_ms": 70.0, "status": "error"}
    make_logs(1, timestamp=HOUR + timedelta(minutes=5), error_type="timeout", error_message="late", **failure)
    make_logs(1, timestamp=HOUR - timedelta(hours=2), error_type="rate_limit", error_message="early", **failure)
    make_logs(1, timestamp=HOUR + timedelta(minutes=55), error_type="rate_limit", error_message="beyond", **failure)
    rollups.roll_up()
    start, end = HOUR - timedelta(hours=4, minutes=50), HOUR + timedelta(minutes=45)
    with time_machine.travel(NOW, tick=False):
        shared = metrics.share(chosen(start, end), "hour")
        assert [row["model"] for row in metrics.model_usage(shared)] == ["model-a"]
        assert sum(row["requests"] for row in metrics.timeseries(shared, "hour")) == 5
        errors = metrics.errors(shared)["errors"]
    assert sorted((row["error_type"], row["count"], row["latest_message"]) for row in errors) == [
        ("rate_limit", 1, "early"),
        ("timeout", 1, "late"),
    ]
