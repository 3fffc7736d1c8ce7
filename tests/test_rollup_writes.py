"""The write side of the roll-ups (llm/rollups.py: tuples written by INSERT ... ON CONFLICT, the
daily and weekly user rows added by INSERT ... SELECT in the database): every roll-up table equals
plain Python over the raw rows, column by column (sums, histograms, first and last calls), after
incremental roll-ups of batches with many users, late events, retried events and a half-hour time
zone; after rebuild_rollups; and, on PostgreSQL, after writers in several processes that roll up
while they write."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from llm import rollup_math, rollups
from llm.models import (
    DailyBreakdownRollup,
    DailyLatency,
    DailyRollup,
    DailyUserRollup,
    DailyUserTotals,
    HourlyBreakdownRollup,
    HourlyLatency,
    HourlyRollup,
    HourlyUserTotals,
    LLMRequestLog,
    WeeklyUserRollup,
)
from tests.factories import build_log
from tests.writers import run_writers

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 29, 18, 52, 11, tzinfo=UTC)
MODELS = ["model-a", "model-b", "model-c"]
SOURCES = ["proxy", "api", "otlp"]
FLOATS = {"latency_sum_ms", "ttft_sum_ms", "speed_sum", "queue_sum_ms"}


def batch(rng: random.Random, count: int, *, users: int, late: bool = False) -> list[LLMRequestLog]:
    """`count` new calls of up to `users` users over the last two hours (late: over 6 days)."""
    logs = []
    for _ in range(count):
        failed = rng.random() < 0.2
        streamed = rng.random() < 0.5
        span = 6 * 86400 if late else 7200
        logs.append(
            build_log(
                request_id=uuid.uuid4(),
                timestamp=NOW - timedelta(seconds=rng.randint(0, span), microseconds=rng.randint(0, 999_999)),
                model_name=rng.choice(MODELS),
                source=rng.choice(SOURCES),
                status="error" if failed else "success",
                error_type=rng.choice(["timeout", "rate_limit"]) if failed else "",
                user_id=rng.choice(["", *(f"user-{n}" for n in range(users))]),
                prompt_tokens=rng.randint(0, 3000),
                completion_tokens=rng.randint(0, 900),
                latency_ms=rng.lognormvariate(6, 1),
                ttft_ms=rng.uniform(5, 300) if streamed else None,
                queue_time_ms=rng.choice([None, rng.uniform(0, 40)]),
                cost_estimate=Decimal(rng.randint(0, 9_999_999_999)) / 10**10,
                tags=rng.choice([{}, {"feature": rng.choice(["chat", "search"])}, {"env": "prod", "feature": "chat"}]),
            )
        )
    return logs


def units(cost: Decimal | None) -> int:
    return int((cost or 0) * 10**10)


def hour_of(log: LLMRequestLog) -> datetime:
    return log.timestamp.replace(minute=0, second=0, microsecond=0)


def day_of(log: LLMRequestLog):
    return log.timestamp.astimezone(timezone.get_current_timezone()).date()


def figures(logs: list[LLMRequestLog]) -> dict:
    """The roll-up columns of some calls, from the calls alone."""
    ttft = [log.ttft_ms for log in logs if log.ttft_ms is not None]
    speed = [log.output_tokens_per_second for log in logs if log.output_tokens_per_second is not None]
    queue = [log.queue_time_ms for log in logs if log.queue_time_ms is not None]
    return {
        "requests": len(logs),
        "prompt_tokens": sum(log.prompt_tokens for log in logs),
        "completion_tokens": sum(log.completion_tokens for log in logs),
        "total_tokens": sum(log.total_tokens for log in logs),
        "cost_units": sum(units(log.cost_estimate) for log in logs),
        "latency_sum_ms": sum(log.latency_ms for log in logs),
        "ttft_count": len(ttft),
        "ttft_sum_ms": sum(ttft),
        "speed_count": len(speed),
        "speed_sum": sum(speed),
        "queue_count": len(queue),
        "queue_sum_ms": sum(queue),
        "latency_histogram": Counter(rollup_math.bucket_index(log.latency_ms) for log in logs),
        "ttft_histogram": Counter(rollup_math.bucket_index(value) for value in ttft),
    }


def grouped(logs: list[LLMRequestLog], key) -> dict[tuple, list[LLMRequestLog]]:
    found: dict[tuple, list[LLMRequestLog]] = defaultdict(list)
    for log in logs:
        found[key(log)].append(log)
    return found


def counts(stored: bytes | memoryview) -> Counter:
    dense = rollup_math.add_encoded(rollup_math.empty(), stored)
    return Counter({int(index): int(dense[index]) for index in dense.nonzero()[0]})


def assert_rows(model, key_fields: tuple[str, ...], expected: dict[tuple, dict]) -> None:
    """`model`'s rows, keyed by `key_fields`, equal `expected` (key -> column -> value): the same
    keys, integers and histograms exactly, float sums to 1e-9 relative."""
    rows = {tuple(getattr(row, name) for name in key_fields): row for row in model.objects.all()}
    assert set(rows) == set(expected), model.__name__
    for key, columns in expected.items():
        for name, value in columns.items():
            stored = getattr(rows[key], name)
            if name.endswith("histogram"):
                assert counts(stored) == +value, (model.__name__, key, name)
            elif name in FLOATS:
                assert stored == pytest.approx(value, rel=1e-9, abs=1e-9), (model.__name__, key, name)
            else:
                assert stored == value, (model.__name__, key, name)


def assert_every_table_equals_the_calls() -> None:
    logs = list(LLMRequestLog.objects.all())
    for period, model, latency_model, breakdown_model in (
        ("hour", HourlyRollup, HourlyLatency, HourlyBreakdownRollup),
        ("day", DailyRollup, DailyLatency, DailyBreakdownRollup),
    ):
        period_of = hour_of if period == "hour" else day_of
        key = lambda log, period_of=period_of: (period_of(log), log.model_name, log.status, log.error_type)  # noqa: E731
        assert_rows(
            model,
            (period, "model_name", "status", "error_type"),
            {k: figures(v) for k, v in grouped(logs, key).items()},
        )
        latency = {}
        for cell, members in grouped(logs, lambda log, period_of=period_of: (period_of(log), log.model_name)).items():
            latency[cell] = {name: value for name, value in figures(members).items() if name != "ttft_histogram"}
            latency[cell]["errors"] = sum(log.status == "error" for log in members)
        assert_rows(latency_model, (period, "model_name"), latency)
        breakdowns = {}
        for by in rollups.rolled_up_breakdowns():
            value = (lambda log: log.source) if by == "source" else (lambda log, tag=by[4:]: log.tags.get(tag, ""))
            cells = grouped(
                logs,
                lambda log, value=value, period_of=period_of: (
                    period_of(log),
                    value(log),
                    log.model_name,
                    log.status,
                    log.error_type,
                ),
            )
            breakdowns.update({(by, *cell): figures(members) for cell, members in cells.items()})
        assert_rows(breakdown_model, ("by", period, "key", "model_name", "status", "error_type"), breakdowns)
    with_users = [log for log in logs if log.user_id]
    daily_users = grouped(with_users, lambda log: (day_of(log), log.model_name, log.status, log.user_id))
    assert_rows(
        DailyUserRollup,
        ("day", "model_name", "status", "user_id"),
        {
            cell: {
                "requests": len(members),
                "total_tokens": sum(log.total_tokens for log in members),
                "cost_units": sum(units(log.cost_estimate) for log in members),
            }
            for cell, members in daily_users.items()
        },
    )
    weekly = defaultdict(list)
    for log in with_users:
        week = day_of(log) - timedelta(days=day_of(log).weekday())
        weekly[(week, log.model_name, log.user_id)].append(log)
        weekly[(week, WeeklyUserRollup.ALL_MODELS, log.user_id)].append(log)
    assert_rows(
        WeeklyUserRollup,
        ("week", "model_name", "user_id"),
        {cell: user_sums(members) for cell, members in weekly.items()},
    )
    for period, model in (("hour", HourlyUserTotals), ("day", DailyUserTotals)):
        period_of = hour_of if period == "hour" else day_of
        totals = {}
        for cell, members in grouped(
            with_users, lambda log, period_of=period_of: (period_of(log), log.user_id)
        ).items():
            totals[cell] = {
                **user_sums(members),
                "prompt_tokens": sum(log.prompt_tokens for log in members),
                "completion_tokens": sum(log.completion_tokens for log in members),
                "latency_sum_ms": sum(log.latency_ms for log in members),
                "first_call": min(log.timestamp for log in members),
                "last_call": max(log.timestamp for log in members),
                "latency_histogram": Counter(rollup_math.bucket_index(log.latency_ms) for log in members),
            }
        assert_rows(model, (period, "user_id"), totals)


def user_sums(members: list[LLMRequestLog]) -> dict:
    return {
        "requests": len(members),
        "errors": sum(log.status == "error" for log in members),
        "total_tokens": sum(log.total_tokens for log in members),
        "cost_units": sum(units(log.cost_estimate) for log in members),
    }


@pytest.fixture
def kolkata(settings):
    settings.TIME_ZONE = "Asia/Kolkata"  # a half-hour zone: a UTC hour straddles two local days
    return settings


def test_every_table_equals_the_calls_after_batches_of_many_users_late_and_retried_events(kolkata):
    rng = random.Random(14)
    sent: list[LLMRequestLog] = []
    for number in range(6):
        logs = batch(rng, 150, users=120, late=number in (2, 4))
        retried = [
            build_log(**{f.name: getattr(log, f.name) for f in LLMRequestLog._meta.concrete_fields if f.name != "id"})
            for log in rng.sample(sent, min(20, len(sent)))
        ]
        created, duplicates = LLMRequestLog.objects.record_many(logs + retried)
        assert (created, duplicates) == (len(logs), len(retried))
        sent += logs
        rollups.roll_up()
        if number in (2, 5):
            assert_every_table_equals_the_calls()
    assert LLMRequestLog.objects.count() == len(sent) == 900
    # rebuild_rollups from a day in the middle (late calls on both sides) gives the same rows.
    call_command("rebuild_rollups", "--since", (NOW - timedelta(days=3)).date().isoformat(), verbosity=0)
    assert_every_table_equals_the_calls()


def test_a_batch_of_one_user_per_call_adds_to_stored_rows_without_reading_them(kolkata):
    """Rows already stored (an earlier roll-up) get the new sums added in SQL; cost sums stay
    exact at the column's full width (a 10-digit-fraction cost, 10^8 units per call)."""
    rng = random.Random(15)
    LLMRequestLog.objects.record_many(batch(rng, 200, users=200))
    rollups.roll_up()
    first = {
        (row.day, row.model_name, row.status, row.user_id): row.cost_units for row in DailyUserRollup.objects.all()
    }
    LLMRequestLog.objects.record_many(batch(rng, 200, users=200))
    rollups.roll_up()
    assert_every_table_equals_the_calls()
    later = {
        (row.day, row.model_name, row.status, row.user_id): row.cost_units for row in DailyUserRollup.objects.all()
    }
    assert any(later[key] > value for key, value in first.items())  # some stored rows were added to


WRITER = """
import os, sys, uuid, random
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from llm import rollups
from llm.models import LLMRequestLog
seed = int(sys.argv[1])
rng = random.Random(seed)
now = datetime(2026, 3, 29, 18, tzinfo=UTC)
shared = [uuid.UUID(int=index) for index in range(40)]  # every writer retries these
for batch in range(4):
    logs = [
        LLMRequestLog(
            request_id=rng.choice(shared) if rng.random() < 0.1 else uuid.uuid4(),
            timestamp=now - timedelta(minutes=rng.randint(0, 3 * 1440)),
            model_name=rng.choice(["model-a", "model-b"]),
            source=rng.choice(["proxy", "api"]),
            user_id=rng.choice(["", *(f"user-{n}" for n in range(80))]),
            tags=rng.choice([{}, {"feature": "chat"}]),
            prompt_tokens=rng.randint(0, 100),
            latency_ms=rng.uniform(1, 900),
            cost_estimate=Decimal(rng.randint(0, 10**6)) / 10**10,
        )
        for _ in range(60)
    ]
    LLMRequestLog.objects.record_many(logs)
    rollups.roll_up(limit=100, try_lock=bool(batch % 2))
"""


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_writers_in_several_processes_rolling_up_leave_every_table_equal_to_the_calls(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers.")
    run_writers(tmp_path, WRITER, range(3))
    rollups.catch_up()
    assert LLMRequestLog.objects.count() > 3 * 4 * 60 * 0.85  # most ids new, the shared ones once
    assert_every_table_equals_the_calls()
