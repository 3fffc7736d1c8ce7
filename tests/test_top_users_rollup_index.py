"""The analytics page's top users sum a window's whole days from the daily user roll-ups; on
PostgreSQL those rows can be read from covering indexes alone (migration 0033, definitions in
llm/migrations/_user_sums.py), not from the tables, whose rows also carry a latency histogram.
The per-day sums name only columns those indexes hold, and PostgreSQL has the indexes. The
figures themselves are checked against the raw rows in tests/test_analytics_reading.py (on both
databases, the indexes in place on PostgreSQL)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from llm import metrics, rollups
from llm.migrations import _user_sums
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
# Twenty whole days and the edges: the days are read from the daily user roll-ups.
START, END = NOW - timedelta(days=20, hours=3), NOW
CASES = [("", "llm_dailyusertotals_day_sums"), ("model-a", "llm_dailyuser_model_day_sums")]


@pytest.fixture
def rolled_up() -> None:
    make_logs(
        40,
        timestamp=lambda i: NOW - timedelta(hours=13 * i + 1),
        model_name=lambda i: ["model-a", "model-b"][i % 2],
        user_id=lambda i: ["ann", "bob", "cy"][i % 3],
        status=lambda i: "error" if i % 5 == 0 else "success",
    )
    rollups.roll_up()


def _daily_part(model: str) -> tuple[str, str, tuple]:
    """The SQL of the per-user sums of the window's whole days, and its table."""
    selection = metrics.Selection(
        LLMRequestLog.objects.in_window(START, END).for_model(model), START, END, model, rollups_apply=True
    )
    the_plan = metrics.plan(selection)
    assert the_plan is not None and the_plan.split.days
    tables, _raw, _rolled = metrics._user_sources(the_plan)
    rows = tables[0]
    fields = dict(metrics.USER_ROLLUP_FIELDS)
    if model:  # as _user_parts asks the by-model roll-up
        fields["u_errors"] = metrics.Sum("requests", filter=LLMRequestLog.FAILED)
    sql, params = metrics._per_user_sql(rows, fields)
    return rows.model._meta.db_table, sql, params


@pytest.mark.parametrize(("model", "index"), CASES)
def test_the_daily_per_user_sums_name_only_columns_of_their_covering_index(rolled_up, model, index):
    table, sql, _params = _daily_part(model)
    assert table == _user_sums.INDEXES[index][0]
    named = set(re.findall(rf'"{table}"\."(\w+)"', sql))
    assert {"user_id", "day", "cost_units"} <= named  # the pattern matches Django's quoting
    assert named <= _user_sums.columns_of(index), named - _user_sums.columns_of(index)


@pytest.mark.postgres_only
def test_postgresql_has_the_covering_indexes_with_the_summed_columns_included():
    """Which index the planner takes over a few test rows is a toss-up (the bench measures the
    10,000,000-call tables: an index-only scan); that the indexes hold what the read names is not."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's covering indexes")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, tablename, indexdef FROM pg_indexes WHERE indexname = ANY(%s)",
            [list(_user_sums.INDEXES)],
        )
        found = {name: (table, definition) for name, table, definition in cursor.fetchall()}
    assert set(found) == set(_user_sums.INDEXES)
    for name, (table, key, included) in _user_sums.INDEXES.items():
        assert found[name][0] == table
        assert found[name][1].endswith(f"({', '.join(key)}) INCLUDE ({', '.join(included)})"), found[name][1]
