"""The top users of one model (the analytics page's two top-10 tables) read the raw hours of the
window's edges from the (model_name, timestamp, user_id) covering index alone: the per-user sums
of raw rows name only columns that index holds, and PostgreSQL answers them with an index-only
scan (the model's 17 hours of today at 10,000,000 calls: ~165 -> ~34 ms). The figures
themselves are checked against the raw rows in tests/test_analytics_reading.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from llm import metrics
from llm.migrations import _covering
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
INDEX = "llm_log_model_time_user"


def _covered_columns() -> set[str]:
    (index,) = [index for index in LLMRequestLog._meta.indexes if index.name == INDEX]
    included = {name.strip() for name in _covering.RULE_COLUMNS.split(",")}
    return set(index.fields) | included


def _per_user_rows(model: str):
    rows = LLMRequestLog.objects.filter(
        model_name=model, timestamp__gte=NOW - timedelta(hours=3), timestamp__lt=NOW
    ).exclude(user_id="")
    return rows.values("user_id").order_by().annotate(**metrics._user_raw_fields())


def test_the_per_user_sums_of_raw_rows_name_only_columns_of_the_covering_index():
    sql, _params = _per_user_rows("model-a").query.sql_with_params()
    named = set(re.findall(r'"llm_llmrequestlog"\."(\w+)"', sql))
    assert named  # the pattern matches Django's quoting
    assert named <= _covered_columns(), named - _covered_columns()


def test_the_per_user_sums_count_every_call_and_failure_of_the_raw_rows():
    make_logs(
        12,
        timestamp=lambda i: NOW - timedelta(minutes=10 * i + 1),
        model_name="model-a",
        user_id=lambda i: ["ann", "bob", ""][i % 3],
        status=lambda i: "error" if i % 4 == 0 else "success",
        cost_estimate=lambda i: Decimal(i) / 10**6,
    )
    logs = [log for log in LLMRequestLog.objects.all() if log.user_id and NOW - timedelta(hours=3) <= log.timestamp]
    found = {row["user_id"]: (row["u_requests"], row["u_errors"]) for row in _per_user_rows("model-a")}
    expected = {
        user: (
            sum(log.user_id == user for log in logs),
            sum(log.user_id == user and log.status == "error" for log in logs),
        )
        for user in ("ann", "bob")
    }
    assert found == expected
    assert sum(errors for _requests, errors in expected.values()) > 0


@pytest.mark.postgres_only
def test_postgresql_reads_one_models_raw_rows_per_user_from_the_index_alone():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's covering index and plans")
    make_logs(30, timestamp=lambda i: NOW - timedelta(minutes=5 * i + 1), model_name="model-a", user_id="ann")
    sql, params = _per_user_rows("model-a").query.sql_with_params()
    with connection.cursor() as cursor:
        # Only an index-only scan left to choose: a query needing the calls' rows falls back to a
        # (disabled, still possible) sequential scan and the assertion below fails.
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_indexscan"):
            cursor.execute(f"SET LOCAL {setting} = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # Either covering index (this one, or (user_id, timestamp) INCLUDE model_name) reads them alone.
    assert "Index Only Scan using" in plan, plan
    assert "Seq Scan" not in plan, plan
