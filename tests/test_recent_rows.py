"""The calls above the roll-ups' watermark summed once for the overview page (metrics.RecentRows):
the previous window's cards and the month's forecast read with them equal those read without them
and the plain-Python recomputation over the raw rows, for windows that do not start on the hour,
with late calls (written after the roll-up, stamped in the past) inside the previous window and
outside it; and the previous window's reading skips its rows above the watermark only when none
lies within it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from llm import dashboard, forecast, metrics, rollup_math, rollups
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 20, 10, 17, 23, tzinfo=UTC)  # not on the hour: every window has raw edges
MODELS = ["model-a", "model-b"]


def random_logs(count: int, seed: int, oldest: timedelta, newest: timedelta = timedelta(0)) -> None:
    """`count` calls stamped between NOW - oldest and NOW - newest."""
    rng = random.Random(seed)
    failed = [rng.random() < 0.2 for _ in range(count)]
    span = int((oldest - newest).total_seconds())
    make_logs(
        count,
        timestamp=lambda i: NOW - newest - timedelta(seconds=rng.randint(1, span)),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: "error" if failed[i] else "success",
        error_type=lambda i: "timeout" if failed[i] else "",
        prompt_tokens=lambda i: rng.randint(0, 900),
        completion_tokens=lambda i: rng.randint(0, 300),
        latency_ms=lambda i: rng.lognormvariate(6, 0.7),
        cost_estimate=lambda i: Decimal(rng.randint(0, 4_000_000)) / 10**10,
    )


@pytest.fixture(scope="module")
def rolled_up(module_transaction, django_db_blocker) -> None:
    """15 days of calls rolled up, then calls of the last two hours above the watermark."""
    with django_db_blocker.unblock():  # written once for the module: tests/conftest.py's module_transaction
        random_logs(300, seed=3, oldest=timedelta(days=15))
        rollups.roll_up()
        random_logs(40, seed=4, oldest=timedelta(hours=2))


def expected(start: datetime, end: datetime, model: str) -> dict:
    calls = LLMRequestLog.objects.all()
    rows = [log for log in calls if start <= log.timestamp < end and model in ("", log.model_name)]
    failed = sum(log.status == "error" for log in rows)
    return {
        "total_requests": len(rows),
        "error_rate": failed * 100.0 / len(rows) if rows else None,
        "p95_latency_ms": float(np.percentile([log.latency_ms for log in rows], 95)) if rows else None,
        "total_tokens": sum(log.total_tokens for log in rows),
        "total_cost": float(sum((log.cost_estimate for log in rows), Decimal(0))),
    }


def check_previous(window: dashboard.TimeRange) -> None:
    recent = metrics.recent_rows(metrics.rollup_state().last_id)
    assert recent is not None
    found = dashboard.previous_figures(window, recent)
    assert found == dashboard.previous_figures(window)
    before = window.previous()
    wanted = expected(before.start, before.end, window.model)
    assert wanted["total_requests"]
    for name, value in wanted.items():
        if name == "p95_latency_ms":
            assert found[name] == pytest.approx(value, rel=rollup_math.ERROR_BOUND), name
        else:
            assert found[name] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), name


def window_of(length: timedelta, model: str = "") -> dashboard.TimeRange:
    return dashboard.TimeRange("custom", NOW - length, NOW, model)


CASES = [(timedelta(days=2), ""), (timedelta(days=3), "model-b"), (timedelta(hours=50), "")]


def test_previous_window_with_late_calls_outside_it_skips_them(rolled_up):
    with time_machine.travel(NOW, tick=False):
        for length, model in CASES:
            check_previous(window_of(length, model))
        recent = metrics.recent_rows(metrics.rollup_state().last_id)
        window = window_of(timedelta(days=2))
        with CaptureQueriesContext(connection) as alone:
            dashboard.previous_figures(window)
        with CaptureQueriesContext(connection) as shared:
            dashboard.previous_figures(window, recent)
        state = metrics.rollup_state()
        with_state = metrics.recent_rows(state.last_id, state)
        with CaptureQueriesContext(connection) as planned:
            figures = dashboard.previous_figures(window, with_state)
    # The rows above the watermark are all in the last two hours: not read for the previous window
    # (they are read with its edges, in the same query: the condition on their ids is left out);
    # and with the roll-ups' state given, that is not read again to plan it.
    above = f'"llm_llmrequestlog"."id" > {state.last_id}'
    assert any(above in query["sql"] for query in alone.captured_queries)
    assert not any(above in query["sql"] for query in shared.captured_queries + planned.captured_queries)
    assert len(shared.captured_queries) == len(alone.captured_queries)
    assert len(planned.captured_queries) == len(alone.captured_queries) - 1
    assert figures == dashboard.previous_figures(window)


def test_previous_window_with_late_calls_inside_it_reads_them(rolled_up):
    # Late calls stamped inside the previous windows (3 to 5 days ago), written after the roll-up.
    random_logs(30, seed=5, oldest=timedelta(days=5), newest=timedelta(days=3))
    with time_machine.travel(NOW, tick=False):
        for length, model in CASES:
            check_previous(window_of(length, model))
        recent = metrics.recent_rows(metrics.rollup_state().last_id)
        window = window_of(timedelta(days=3, hours=12))
        with CaptureQueriesContext(connection) as alone:
            dashboard.previous_figures(window)
        with CaptureQueriesContext(connection) as shared:
            dashboard.previous_figures(window, recent)
    # Read with the window's edges in the one grouped query either way (no query of their own);
    # check_previous above: the same figures as the raw rows.
    above = f'"llm_llmrequestlog"."id" > {metrics.rollup_state().last_id}'
    assert any(above in query["sql"] for query in shared.captured_queries)
    assert len(shared.captured_queries) == len(alone.captured_queries)


def test_recent_rows_sum_the_calls_above_the_watermark(rolled_up):
    watermark = metrics.rollup_state().last_id
    recent = metrics.recent_rows(watermark)
    above = [log for log in LLMRequestLog.objects.all() if log.id > watermark]
    assert len(above) == 40
    wanted: dict[tuple, list[int]] = {}
    for log in above:
        hour = int(log.timestamp.timestamp()) // 3600 * 3600
        sums = wanted.setdefault((hour, log.model_name, log.status), [0, 0])
        sums[0] += 1
        sums[1] += int(log.cost_estimate * 10**10)
    assert recent.hours == {key: tuple(value) for key, value in wanted.items()}
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    # An hour with calls only partly within the spans: only the rows tell.
    assert recent.costs([(hour - timedelta(minutes=30), hour + timedelta(hours=1))]) is None
    whole = recent.costs([(hour - timedelta(hours=3), hour + timedelta(hours=1))])
    assert sum(whole.values()) == sum(units for _, units in wanted.values())
    assert not recent.touch([(NOW - timedelta(days=9), NOW - timedelta(days=1))])
    assert recent.touch([(NOW - timedelta(hours=1), NOW)])
    assert not recent.touch([(NOW - timedelta(hours=3), NOW)], model="model-c")


def test_no_summary_when_too_many_calls_are_above_the_watermark(rolled_up):
    newest = LLMRequestLog.objects.order_by("-id").first().id
    assert metrics.recent_rows(newest - metrics.RECENT_ROWS_LIMIT) is not None
    assert metrics.recent_rows(newest - metrics.RECENT_ROWS_LIMIT - 1) is None


def test_the_month_forecast_with_recent_rows_is_the_forecast_without(rolled_up):
    # Late calls of the month's earlier days too (written after the roll-up).
    random_logs(20, seed=6, oldest=timedelta(days=12), newest=timedelta(days=10))
    with time_machine.travel(NOW, tick=False):
        recent = metrics.recent_rows(metrics.rollup_state().last_id)
        with CaptureQueriesContext(connection) as shared:
            found = dashboard.spend(NOW, recent)["month"]
        with CaptureQueriesContext(connection) as alone:
            wanted = dashboard.spend(NOW)["month"]
        reading = forecast.read([forecast.Scope()], ["month"], NOW, recent=recent)
    assert found == wanted
    assert reading.history == forecast.read([forecast.Scope()], ["month"], NOW).history
    start, end = forecast.period_bounds("month", NOW)
    spent = sum((log.cost_estimate for log in LLMRequestLog.objects.all() if start <= log.timestamp < end), Decimal(0))
    assert found.spent_so_far == pytest.approx(float(spent), rel=1e-12)
    assert len(shared.captured_queries) == len(alone.captured_queries) - 1
