"""metrics.window_totals reads the part-hours at a long window's edges through the timestamp index,
one range each, on SQLite too: with every call rolled up there is no "above the watermark" part,
and its constant false term (`OR 1 = 0`) made SQLite read the whole table (the overview's previous
window of 90 days at 1,000,000 calls: ~185 ms for 77 calls). The figures equal plain Python over
the raw rows, with calls above the watermark and without, for windows not aligned to hours."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from llm import metrics, rollup_sql, rollups
from llm.models import LLMRequestLog
from tests.factories import drawn_cost, random_calls

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, 417000, tzinfo=UTC)  # not on an hour, minute or second
MODELS = ["model-a", "model-b"]
WINDOWS = [
    metrics.Window(NOW - timedelta(days=3, minutes=13), NOW - timedelta(hours=26, minutes=4)),  # a previous window
    metrics.Window(NOW - timedelta(hours=30, minutes=1), NOW, MODELS[1]),
    metrics.Window(NOW - timedelta(hours=7, seconds=11), NOW),
]


def add_calls(count: int, seed: int) -> None:
    rng = random.Random(seed)
    within_four_days = {"timestamp": lambda i: NOW - timedelta(seconds=rng.randint(1, 4 * 86400))}
    drawn = {"total_tokens": lambda i: rng.randint(0, 3000), "cost_estimate": lambda i: drawn_cost(rng)}
    random_calls(rng, count, failure_share=0.2, models=MODELS, **within_four_days, **drawn)


def expected(calls: list[LLMRequestLog], window: metrics.Window) -> tuple[int, int, int, float]:
    rows = [log for log in calls if window.start <= log.timestamp < window.end and window.model in ("", log.model_name)]
    return (
        len(rows),
        sum(log.status == "error" for log in rows),
        sum(log.total_tokens for log in rows),
        float(sum((log.cost_estimate for log in rows), Decimal(0))),
    )


def read(calls: list[LLMRequestLog]) -> list[str]:
    """The windows' totals checked against the raw rows; the SQL of the rows' reading."""
    # The calls above the watermark, summed (as the overview passes them): windows they do not
    # touch have no part above the watermark to read.
    recent = metrics.recent_rows(rollup_sql.watermark())
    with CaptureQueriesContext(connection) as queries:
        found = metrics.window_totals(WINDOWS, recent)
    for window in WINDOWS:
        totals = found[window]
        assert (totals.requests, totals.errors, totals.total_tokens) == expected(calls, window)[:3], window
        assert totals.cost == pytest.approx(expected(calls, window)[3], abs=1e-9), window
    return [query["sql"] for query in queries.captured_queries if "key_segment" in query["sql"]]


@pytest.mark.parametrize("above_watermark", [False, True])
def test_the_edges_are_read_by_index_ranges_and_equal_the_raw_rows(above_watermark):
    add_calls(400, seed=3)
    rollups.roll_up()
    if above_watermark:
        add_calls(60, seed=4)
    calls = list(LLMRequestLog.objects.all())
    readings = read(calls)
    assert len(readings) == 1
    (sql,) = readings
    assert "1 = 0" not in sql  # nothing false left to OR with
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE llm_llmrequestlog")
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
    assert "MULTI-INDEX OR" in plan, plan
    assert "SCAN llm_llmrequestlog" not in plan, plan
