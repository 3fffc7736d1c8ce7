"""metrics.latest_errors: each error type's latest failure from one query, checked against the
newest row found in plain Python over the stored rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import metrics
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

ERROR = LLMRequestLog.Status.ERROR
SUCCESS = LLMRequestLog.Status.SUCCESS
TYPES = [
    LLMRequestLog.ErrorType.TIMEOUT,
    LLMRequestLog.ErrorType.RATE_LIMIT,
    LLMRequestLog.ErrorType.SERVER_ERROR,
    LLMRequestLog.ErrorType.OTHER,
]


@pytest.fixture
def failures():
    """Failures of three types over 40 minutes, six rows every two minutes (two of each type: a
    tie on the time, the larger id the later), and successes later than all of them."""
    start = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    make_logs(
        120,
        status=ERROR,
        error_type=lambda index: TYPES[index % 3],  # OTHER has no failure
        error_message=lambda index: f"failure {index}",
        timestamp=lambda index: start + timedelta(minutes=2 * (index // 6)),
    )
    make_logs(5, status=SUCCESS, error_type=TYPES[0], timestamp=start + timedelta(hours=1))
    return start, list(LLMRequestLog.objects.order_by("id"))


def newest(rows, error_type, since, until=None, model=None):
    """The latest failure of `error_type` in [since, until) (of `model`), by (time, id), in plain Python."""
    chosen = [
        row
        for row in rows
        if row.is_error
        and row.error_type == error_type
        and since <= row.timestamp < (until or row.timestamp + timedelta(1))
        and model in (None, row.model_name)
    ]
    if not chosen:
        return None
    latest = max(chosen, key=lambda row: (row.timestamp, row.id))
    return {"error_message": latest.error_message, "timestamp": latest.timestamp}


def test_latest_error_of_each_type_in_one_query(failures):
    start, rows = failures
    since = {
        TYPES[0]: start,
        TYPES[1]: start + timedelta(minutes=10),
        TYPES[2]: start + timedelta(minutes=38),
        TYPES[3]: start,  # no failure of this type: None
    }
    with CaptureQueriesContext(connection) as queries:
        found = metrics.latest_errors(LLMRequestLog.objects.failed(), since)
    assert len(queries) == 1
    expected = {error_type: newest(rows, error_type, moment) for error_type, moment in since.items()}
    assert found == expected
    assert found[TYPES[3]] is None
    assert all(found[error_type] is not None for error_type in TYPES[:3])


def test_latest_error_after_every_failure_is_none(failures):
    start, rows = failures
    later = start + timedelta(hours=2)
    assert metrics.latest_errors(LLMRequestLog.objects.failed(), {TYPES[0]: later}) == {TYPES[0]: None}
    assert metrics.latest_errors(LLMRequestLog.objects.failed(), {}) == {}


def test_errors_answer_matches_raw_rows(failures):
    _start, rows = failures
    answer = metrics.errors(LLMRequestLog.objects.all())
    by_type = {row["error_type"]: row for row in answer["errors"]}
    assert set(by_type) == set(TYPES[:3])
    for error_type, row in by_type.items():
        latest = newest(rows, error_type, min(r.timestamp for r in rows))
        assert row["latest_message"] == latest["error_message"]
        assert row["last_seen"] == latest["timestamp"].isoformat()
        assert row["count"] == sum(r.is_error and r.error_type == error_type for r in rows)


def test_latest_error_before_until_of_one_model(failures):
    start, rows = failures
    LLMRequestLog.objects.filter(id__in=[row.id for row in rows[::4]]).update(model_name="other-model")
    rows = list(LLMRequestLog.objects.order_by("id"))
    since = {TYPES[0]: start, TYPES[1]: start + timedelta(minutes=10), TYPES[2]: start}
    until = {TYPES[0]: start + timedelta(minutes=21), TYPES[2]: start + timedelta(minutes=5)}
    for model in (None, "other-model"):
        failed = LLMRequestLog.objects.for_model(model).failed()
        found = metrics.latest_errors(failed, since, until)
        assert found == {
            error_type: newest(rows, error_type, moment, until.get(error_type), model)
            for error_type, moment in since.items()
        }
        assert all(found.values())


def test_each_types_newest_is_an_index_walk_that_stops(failures):
    """On SQLite, one correlated subquery walks the status index backwards (no sort of the failures)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL's LATERAL plan is checked at 10M calls by bench/scale_bench.py")
    start, _rows = failures
    with CaptureQueriesContext(connection) as queries:
        metrics.latest_errors(LLMRequestLog.objects.failed(), dict.fromkeys(TYPES, start))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + queries[0]["sql"])
        plan = [row[-1] for row in cursor.fetchall()]
    assert "CORRELATED SCALAR SUBQUERY 1" in plan
    walk = "SEARCH llm_llmrequestlog USING INDEX llm_log_status_time (status=? AND timestamp>"
    assert any(step.startswith(walk) for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
