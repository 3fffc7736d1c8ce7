"""A roll-up asks the new rows once which kinds they carry (users, sessions, TTFTs) and reads them
with one fine grouping whatever the number of tables it feeds: rows without users or sessions
leave those tables alone (no query), and a mix of plain rows, rows with users, with sessions
(continued across roll-ups), with tags and late events rolls up to exactly what a rebuild makes
and what plain Python counts over the raw rows, in a half-hour zone."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import rollup_math, rollups
from llm.models import (
    DailyBreakdownRollup,
    DailyRollup,
    DailyUserRollup,
    DailyUserTotals,
    HourlyBreakdownRollup,
    HourlyLatency,
    HourlyRollup,
    HourlyUserTotals,
    LLMRequestLog,
    SessionGroupTotals,
    SessionTotals,
    SessionUser,
    WeeklyUserRollup,
)
from tests.factories import make_logs
from tests.read_api_data import NOW

pytestmark = pytest.mark.django_db

TABLES = (
    HourlyRollup,
    DailyRollup,
    HourlyLatency,
    DailyUserRollup,
    DailyUserTotals,
    HourlyUserTotals,
    HourlyBreakdownRollup,
    DailyBreakdownRollup,
    SessionTotals,
    SessionGroupTotals,
    SessionUser,
    WeeklyUserRollup,
)
USER_AND_SESSION_TABLES = ('"llm_dailyuser', '"llm_hourlyuser', '"llm_weeklyuser', '"llm_session')  # quoted table names


def contents() -> dict[str, list[tuple]]:
    """Every roll-up table's rows, ids and update times aside (float sums to 6 places: the order
    of addition differs)."""
    found = {}
    for model in TABLES:
        names = [field.attname for field in model._meta.concrete_fields if field.attname not in ("id", "updated_at")]
        rows = []
        for values in model.objects.values_list(*names):
            rows.append(
                tuple(
                    bytes(value)
                    if isinstance(value, memoryview)
                    else round(value, 6)
                    if isinstance(value, float)
                    else value
                    for value in values
                )
            )
        found[model.__name__] = sorted(rows, key=repr)
    return found


def comparable(value: object) -> object:
    if isinstance(value, memoryview):
        return bytes(value)
    return round(value, 6) if isinstance(value, float) else value


def plain(count: int, rng: random.Random, *, hours_back: float = 2) -> list[LLMRequestLog]:
    """The probe's kind of call: no user, no session, no tags, no TTFT."""
    return make_logs(
        count,
        model_name=lambda index: f"model-{index % 2}",
        timestamp=lambda index: NOW - timedelta(hours=rng.uniform(0, hours_back)),
        prompt_tokens=lambda index: index % 7,
        latency_ms=lambda index: rng.uniform(5, 900),
    )


def rich(count: int, rng: random.Random, *, sessions: list[str], hours_back: float = 30) -> list[LLMRequestLog]:
    """Calls with users, sessions, tags, sources, TTFTs, errors and costs."""
    return make_logs(
        count,
        model_name=lambda index: rng.choice(["model-0", "model-1", "model-2"]),
        timestamp=lambda index: NOW - timedelta(hours=rng.uniform(0, hours_back)),
        user_id=lambda index: rng.choice(["u-1", "u-2", "u-3", ""]),
        session_id=lambda index: rng.choice(sessions),
        source=lambda index: rng.choice(list(LLMRequestLog.Source)),
        tags=lambda index: {k: v for k, v in (("feature", rng.choice("ab")), ("env", "prod")) if rng.random() < 0.7},
        prompt_tokens=lambda index: rng.randrange(50),
        completion_tokens=lambda index: rng.randrange(20),
        latency_ms=lambda index: rng.uniform(5, 900),
        ttft_ms=lambda index: rng.uniform(1, 50) if rng.random() < 0.5 else None,
        cost_estimate=lambda index: Decimal(rng.randrange(10**6)).scaleb(-10),
        status=lambda index: "error" if rng.random() < 0.2 else "success",
    )


def test_rows_without_users_or_sessions_leave_their_tables_alone():
    rng = random.Random(3)
    rollups.roll_up()
    logs = plain(60, rng)
    with CaptureQueriesContext(connection) as queries:
        rollups.roll_up()
    asked = " ".join(query["sql"].lower() for query in queries.captured_queries)
    for table in USER_AND_SESSION_TABLES:
        assert table not in asked
    # One fine grouping and one latency histogram (no row has a TTFT); then a read and a write
    # per roll-up table: a fixed number of queries, whatever the rows.
    grouped = [q for q in queries.captured_queries if "group by" in q["sql"].lower()]
    assert len(grouped) == 2
    assert sum(HourlyRollup.objects.values_list("requests", flat=True)) == len(logs)
    assert not DailyUserTotals.objects.exists() and not SessionTotals.objects.exists()
    plain(300, rng)
    with CaptureQueriesContext(connection) as more:
        rollups.roll_up()
    assert len(more.captured_queries) == len(queries.captured_queries)
    # Counted by the rows: roll_up answers the span of ids it claimed, and on PostgreSQL the ids of
    # earlier tests' (rolled back) rows leave a gap before this test's first.
    assert sum(HourlyRollup.objects.values_list("requests", flat=True)) == len(logs) + 300


@override_settings(TIME_ZONE="Asia/Kolkata")  # days start at 18:30 UTC: a local day mid-hour
def test_plain_and_rich_rows_rolled_up_in_turns_equal_a_rebuild_and_the_raw_rows():
    rng = random.Random(7)
    sessions = [f"s-{number}" for number in range(6)] + [""]
    logs = plain(40, rng)
    rollups.roll_up()
    logs += rich(50, rng, sessions=sessions)
    rollups.roll_up()
    logs += plain(30, rng, hours_back=40)  # late plain rows, in hours and days rolled up already
    rollups.roll_up()
    logs += rich(50, rng, sessions=sessions[2:], hours_back=50)  # sessions continued, late events
    rollups.roll_up()
    incremental = contents()
    call_command("rebuild_rollups", verbosity=0)
    assert contents() == incremental

    # The independent side: plain Python over the raw rows.
    hourly = Counter(
        (rollup_math.floor_hour(log.timestamp), log.model_name, log.status, log.error_type) for log in logs
    )
    assert {
        (row.hour, row.model_name, row.status, row.error_type): row.requests for row in HourlyRollup.objects.all()
    } == hourly
    histograms: dict[tuple, Counter] = defaultdict(Counter)
    for log in logs:
        histograms[(rollup_math.floor_hour(log.timestamp), log.model_name)][
            rollup_math.bucket_index(log.latency_ms)
        ] += 1
    for row in HourlyLatency.objects.all():
        dense = rollup_math.add_encoded(rollup_math.empty(), row.latency_histogram)
        assert {int(bucket): int(dense[bucket]) for bucket in dense.nonzero()[0]} == histograms[
            (row.hour, row.model_name)
        ]
    for by, group in (("source", lambda log: log.source), ("tag:feature", lambda log: log.tags.get("feature", ""))):
        expected = defaultdict(lambda: [0, 0, 0])
        for log in logs:
            day = rollup_math.local_date(log.timestamp, timezone.get_current_timezone())
            sums = expected[(day, group(log), log.model_name)]
            sums[0] += 1
            sums[1] += log.prompt_tokens
            sums[2] += log.ttft_ms is not None
        found = defaultdict(lambda: [0, 0, 0])
        for row in DailyBreakdownRollup.objects.filter(by=by):
            sums = found[(row.day, row.key, row.model_name)]
            sums[0] += row.requests
            sums[1] += row.prompt_tokens
            sums[2] += row.ttft_count
        assert found == expected
    per_user = Counter((rollup_math.floor_hour(log.timestamp), log.user_id) for log in logs if log.user_id)
    assert {(row.hour, row.user_id): row.requests for row in HourlyUserTotals.objects.all()} == per_user
    per_session = Counter(log.session_id for log in logs if log.session_id)
    assert dict(SessionTotals.objects.values_list("session_id", "requests")) == per_session
    users_per_group: dict[tuple, set] = defaultdict(set)
    for log in logs:
        if log.session_id:
            users_per_group[(log.session_id, log.tags.get("feature", ""))].add(log.user_id or None)
    assert {
        (row.session_id, row.key): row.user_count for row in SessionGroupTotals.objects.filter(by="tag:feature")
    } == {key: len(users - {None}) for key, users in users_per_group.items()}
