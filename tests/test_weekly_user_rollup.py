"""WeeklyUserRollup (local week x model x user, and all models as model ""): equal to plain
Python over the raw rows after incremental roll-ups with late calls, after rebuild_rollups (whole,
and --since in the middle of a week with late calls on both sides), after purge_logs (history
kept), in a half-hour time zone; its migration's fill equals a rebuild; and the top users that
read whole weeks from it equal the raw rows."""

from __future__ import annotations

import importlib
import random
import zoneinfo
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from llm import metrics, retention, rollups
from llm.models import LLMRequestLog, WeeklyUserRollup
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 26, 15, 41, 7, tzinfo=UTC)  # a Thursday
MODELS = ["model-a", "model-b"]
USERS = ["", "ann", "bob", "cy", "dee"]


def calls(count: int, seed: int, *, days: int = 30) -> None:
    rng = random.Random(seed)
    make_logs(
        count,
        timestamp=lambda i: NOW - timedelta(seconds=rng.randint(0, days * 86400)),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: rng.choice(["success"] * 4 + ["error"]),
        user_id=lambda i: rng.choice(USERS),
        total_tokens=lambda i: rng.randint(0, 900),
        cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
    )


def expected_weeks() -> dict[tuple, tuple]:
    """(week, model or "", user) -> (requests, errors, tokens, cost units) from the raw rows."""
    zone = timezone.get_current_timezone()
    found: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for log in LLMRequestLog.objects.exclude(user_id=""):
        day = log.timestamp.astimezone(zone).date()
        week = day - timedelta(days=day.weekday())
        for model in (log.model_name, ""):
            sums = found[(week, model, log.user_id)]
            sums[0] += 1
            sums[1] += log.status == "error"
            sums[2] += log.total_tokens
            sums[3] += int(log.cost_estimate * 10**10)
    return {key: tuple(sums) for key, sums in found.items()}


def stored_weeks() -> dict[tuple, tuple]:
    rows = WeeklyUserRollup.objects.values_list(
        "week", "model_name", "user_id", "requests", "errors", "total_tokens", "cost_units"
    )
    return {(week, model, user): tuple(sums) for week, model, user, *sums in rows}


@pytest.fixture(scope="module")
def rolled_up_with_late_calls(module_transaction, django_db_blocker) -> dict[tuple, tuple]:
    with django_db_blocker.unblock():  # written once for the module: tests/conftest.py's module_transaction
        calls(500, seed=1)
        rollups.roll_up()
        calls(120, seed=2)  # late: old timestamps above the watermark
        rollups.roll_up()
        expected = expected_weeks()
        assert len({week for week, _model, _user in expected}) >= 5
        return expected


def test_incremental_roll_ups_equal_raw_rows(rolled_up_with_late_calls):
    stored = stored_weeks()
    assert stored == rolled_up_with_late_calls
    assert all(week.weekday() == 0 for week, _model, _user in stored)


def test_rebuild_whole_and_since_mid_week_equal_raw_rows(rolled_up_with_late_calls):
    call_command("rebuild_rollups", verbosity=0)
    assert stored_weeks() == rolled_up_with_late_calls
    since = (NOW - timedelta(days=8)).date()  # a Wednesday: its week's Monday and Tuesday are kept
    assert since.weekday() == 2
    calls(60, seed=3)  # late calls before and after `since`, not rolled up yet
    call_command("rebuild_rollups", "--since", since.isoformat(), verbosity=0)
    assert stored_weeks() == expected_weeks()


def test_purge_keeps_the_weeks(rolled_up_with_late_calls):
    result = retention.purge(10, now=NOW)
    assert result.logs > 0
    assert stored_weeks() == rolled_up_with_late_calls


def test_the_migration_fill_and_fill_weekly_users_equal_a_rebuild(rolled_up_with_late_calls):
    migration = importlib.import_module("llm.migrations.0036_weekly_user_rollup")
    WeeklyUserRollup.objects.all().delete()
    migration.fill_from_daily_user_rollups(None, SimpleNamespace(connection=connection))
    assert stored_weeks() == rolled_up_with_late_calls
    WeeklyUserRollup.objects.all().delete()
    rollups.fill_weekly_users()
    assert stored_weeks() == rolled_up_with_late_calls


def test_weeks_follow_local_days_of_a_half_hour_zone(settings):
    settings.TIME_ZONE = "Asia/Kolkata"
    with timezone.override(zoneinfo.ZoneInfo("Asia/Kolkata")):
        # Around a week's edge in Kolkata: Sunday 23:40 and Monday 00:10 local (UTC 18:10, 18:40).
        sunday_night = datetime(2026, 3, 22, 18, 10, tzinfo=UTC)
        make_logs(2, timestamp=lambda i: sunday_night + timedelta(minutes=30 * i), user_id="ann", model_name="m")
        calls(200, seed=4)
        rollups.roll_up()
        stored = stored_weeks()
        assert stored == expected_weeks()
        assert (date(2026, 3, 16), "m", "ann") in stored and (date(2026, 3, 23), "m", "ann") in stored


def test_around_whole_weeks_splits_days_into_weeks_and_edges():
    monday = date(2026, 3, 2)
    assert metrics._around_whole_weeks(monday, monday + timedelta(days=13)) == ([], (monday, monday + timedelta(7)))
    wednesday, next_tuesday = monday + timedelta(days=2), monday + timedelta(days=22)
    assert metrics._around_whole_weeks(wednesday, next_tuesday) == (
        [(wednesday, monday + timedelta(days=6)), (monday + timedelta(days=21), next_tuesday)],
        (monday + timedelta(days=7), monday + timedelta(days=14)),
    )
    assert metrics._around_whole_weeks(wednesday, wednesday + timedelta(days=6)) == (
        [(wednesday, wednesday + timedelta(days=6))],
        None,
    )


@pytest.mark.parametrize("model", ["", "model-a"])
def test_top_users_over_whole_weeks_equal_raw_rows(rolled_up_with_late_calls, model):
    calls(40, seed=5)  # above the watermark
    start, end = NOW - timedelta(days=24, hours=5, minutes=3), NOW - timedelta(minutes=7)
    queryset = LLMRequestLog.objects.in_window(start, end).for_model(model)
    selection = metrics.Selection(queryset, start, end, model, rollups_apply=True)
    the_plan = metrics.plan(selection)
    tables, _raw, _rolled = metrics._user_sources(the_plan, weeks=True)
    assert tables[0].model is WeeklyUserRollup
    per_user: dict[str, list] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for log in queryset.exclude(user_id=""):
        sums = per_user[log.user_id]
        sums[0] += 1
        sums[1] += log.status == "error"
        sums[2] += log.total_tokens
        sums[3] += log.cost_estimate
    rows = [
        {"user_id": user, "requests": n, "errors": e, "total_tokens": t, "cost": float(c)}
        for user, (n, e, t, c) in per_user.items()
    ]
    top = metrics.top_users(selection, 10)
    assert top["cost"] == sorted(rows, key=lambda row: (-row["cost"], row["user_id"]))
    assert top["requests"] == sorted(rows, key=lambda row: (-row["requests"], row["user_id"]))
