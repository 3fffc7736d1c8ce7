"""metrics.bucketed_figures, what the rule preview reads: every group's figures per time bucket
equal plain Python sums over the raw rows, on SQLite (rows one by one) and on PostgreSQL (each
column packed in one bytea per group)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from llm import metrics
from llm.models import LLMRequestLog, UserFeedback
from tests.factories import make_feedback, make_logs

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 6, 0, tzinfo=UTC)
BUCKET = timedelta(minutes=10)
BUCKETS = 36  # six hours
USERS = ["alice", "bob", "", "carol"]


@pytest.fixture
def calls(db) -> list[LLMRequestLog]:
    rng = random.Random(5)

    def moment(index: int) -> datetime:
        # A few calls outside the period on either side; microseconds, and exactly on bucket edges.
        if index % 50 == 0:
            return START + BUCKET * (index % BUCKETS)
        return START + timedelta(seconds=rng.uniform(-1800, BUCKETS * 600 + 1800))

    logs = make_logs(
        240,
        timestamp=moment,
        user_id=lambda index: USERS[index % 4],
        model_name=lambda index: ["m-a", "m-b"][index % 3 == 0],
        # A tag stored as a JSON number on some rows, as text on others, absent on a few.
        tags=lambda index: {} if index % 7 == 0 else {"feature": [5, "chat", "search"][index % 3]},
        status=lambda index: "error" if index % 5 == 0 else "success",
        error_type=lambda index: ["", "timeout", "server_error"][index % 3] if index % 5 == 0 else "",
        total_tokens=lambda index: rng.randint(0, 5000),
        cost_estimate=lambda index: Decimal(f"{rng.uniform(0, 0.01):.10f}"),
        latency_ms=lambda index: round(rng.uniform(50, 4000), 3),
        ttft_ms=lambda index: None if index % 4 == 0 else round(rng.uniform(10, 900), 3),
    )
    for log in logs[::3]:
        make_feedback(
            log,
            UserFeedback.Rating.THUMBS_DOWN if log.pk % 2 else UserFeedback.Rating.THUMBS_UP,
            created_at=log.timestamp,
        )
    return logs


def group_of(log: LLMRequestLog, group_by: str) -> str | None:
    if not group_by:
        return ""
    if group_by == "user":
        return log.user_id or None
    value = log.tags.get(group_by.removeprefix("tag:"))
    return None if value is None or value == "" else str(value)


SCOPES = [
    metrics.AlertScope(),
    metrics.AlertScope(group_by="user"),
    metrics.AlertScope(group_by="tag:feature", error_type="timeout"),
    metrics.AlertScope(model="m-b", group_by="user", percentile="p95_ttft_ms", sums=frozenset()),
    metrics.AlertScope(group_by="tag:feature", percentile="p99_latency_ms", sums=frozenset({"cost"})),
]


@pytest.mark.parametrize("scope", SCOPES, ids=lambda scope: f"{scope.group_by or 'all'}-{scope.percentile}")
def test_bucketed_figures_equal_sums_over_the_raw_rows(calls, scope):
    figures = metrics.bucketed_figures(scope, START, BUCKETS, BUCKET)
    end = START + BUCKETS * BUCKET
    rows = [log for log in calls if START <= log.timestamp < end and (not scope.model or log.model_name == scope.model)]
    groups = {group_of(log, scope.group_by) for log in rows} - {None}
    assert sorted(figures.keys) == sorted(groups)
    rng = random.Random(9)
    windows = [
        (0, BUCKETS),
        (3, 4),
        (0, 0),
        *((low, rng.randint(low, BUCKETS)) for low in rng.sample(range(BUCKETS), 8)),
    ]
    for code, key in enumerate(figures.keys):
        mine = [log for log in rows if group_of(log, scope.group_by) == key]
        for low, high in windows:
            inside = [log for log in mine if START + low * BUCKET <= log.timestamp < START + high * BUCKET]
            requests, errors, tokens, cost, _up, _down = figures.totals(code, [low], [high])[0].tolist()
            assert requests == len(inside)
            if "errors" in scope.sums:
                wanted = scope.error_type or None
                assert errors == sum(log.status == "error" and (wanted in (None, log.error_type)) for log in inside)
            if "total_tokens" in scope.sums:
                assert tokens == sum(log.total_tokens for log in inside)
            if "cost" in scope.sums:
                assert math.isclose(cost, float(sum(log.cost_estimate for log in inside)), rel_tol=1e-12, abs_tol=1e-15)
            if scope.percentile:
                column = metrics.ALERT_PERCENTILES[scope.percentile][0]
                values = figures.values[figures.ends[code, low] : figures.ends[code, high]]
                assert sorted(values.tolist()) == sorted(
                    getattr(log, column) for log in inside if getattr(log, column) is not None
                )


def test_rating_figures_per_user_and_bucket(calls):
    figures = metrics.bucketed_figures(metrics.AlertScope(group_by="user", feedback=True), START, BUCKETS, BUCKET)
    ratings = [
        r for r in UserFeedback.objects.select_related("request") if START <= r.created_at < START + BUCKETS * BUCKET
    ]
    assert sorted(figures.keys) == sorted({r.request.user_id for r in ratings} - {""})
    for code, key in enumerate(figures.keys):
        for low, high in [(0, BUCKETS), (5, 20)]:
            inside = [
                r
                for r in ratings
                if r.request.user_id == key and START + low * BUCKET <= r.created_at < START + high * BUCKET
            ]
            totals = figures.totals(code, [low], [high])[0]
            assert totals[4] == sum(r.rating == UserFeedback.Rating.THUMBS_UP for r in inside)
            assert totals[5] == sum(r.rating == UserFeedback.Rating.THUMBS_DOWN for r in inside)


def test_no_calls_no_groups(db):
    """Nothing in the period: no group, and the preview's tables are empty (not an error)."""
    for scope in [*SCOPES, metrics.AlertScope(feedback=True)]:
        figures = metrics.bucketed_figures(scope, START, BUCKETS, BUCKET)
        assert figures.keys == []
        assert all(table.shape == (0, BUCKETS + 1) for table in figures.sums.values())
