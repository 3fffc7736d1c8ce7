"""Reads of the roll-ups made cheap at 10 million calls (llm/metrics.py), against plain Python over
the raw rows. Unique users over many whole days (_walked_users: one index probe per user of the
user roll-ups, not a row per user and day): users active only before, only after or only in the
edges of the window, filters by model and status, rows above the roll-up watermark (late ones
among them), windows not aligned to hours. Hourly series whose raw edges are grouped by UTC hour
number (RawPeriod), in zones with a DST change or a half-hour offset."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import metrics, rollups
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 5, 20, 13, 41, 7, tzinfo=UTC)
MODELS = ["model-a", "model-b"]
# When each user calls, in days before NOW: some only before a window, after it, across it or in its
# edge hours; "" is no user.
SPANS = {
    "": (0, 45),
    "ann": (0, 45),
    "bob": (41, 45),
    "Cy": (0, 2.9),
    "dee": (13, 19),
    "eve1": (30, 33),
    "eve10": (19.8, 20.3),
    "ünal": (12, 12.4),
    "zed": (35, 44),
    "a b": (2, 7),
    # Only on the first or the last whole day of WINDOWS[1] or WINDOWS[2].
    "first-1": (29.6, 30.55),
    "last-1": (12.6, 13.55),
    "first-2": (18.6, 19.55),
    "last-2": (3.6, 4.55),
}


def random_calls(count: int, seed: int, who: list[str]) -> None:
    rng = random.Random(seed)
    users = [rng.choice(who) for _ in range(count)]
    make_logs(
        count,
        user_id=lambda i: users[i],
        timestamp=lambda i: NOW - timedelta(days=rng.uniform(*SPANS[users[i]])),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: rng.choice(["success", "success", "error"]),
        latency_ms=lambda i: rng.uniform(50, 900),
    )


@pytest.fixture(scope="module")
def calls(module_transaction, django_db_blocker) -> list[LLMRequestLog]:
    with django_db_blocker.unblock():  # written once for the module: tests/conftest.py's module_transaction
        random_calls(500, seed=7, who=list(SPANS))
        rollups.roll_up()
        # Above the watermark, old timestamps among them; the users of one day only are left to the
        # roll-ups, which alone then find them.
        random_calls(120, seed=8, who=[user for user in SPANS if "-" not in user])
        return list(LLMRequestLog.objects.all())


def chosen(start: datetime, end: datetime, model: str = "", status: str = "") -> metrics.Selection:
    rows = LLMRequestLog.objects.in_window(start, end).for_model(model)
    if status:
        rows = rows.filter(status=status)
    return metrics.Selection(rows, start, end, model, status, rollups_apply=True)


def raw_users(calls: list[LLMRequestLog], start: datetime, end: datetime, model: str, status: str) -> int:
    return len(
        {
            call.user_id
            for call in calls
            if call.user_id
            and start <= call.timestamp < end
            and (not model or call.model_name == model)
            and (not status or call.status == status)
        }
    )


WINDOWS = [
    (NOW - timedelta(days=40, hours=3, minutes=17), NOW - timedelta(minutes=9)),
    (NOW - timedelta(days=31, minutes=44), NOW - timedelta(days=12, hours=5, minutes=1)),
    (NOW - timedelta(days=20, seconds=13), NOW - timedelta(days=3, hours=2)),
]
FILTERS = [("", ""), ("model-a", ""), ("model-b", "error"), ("", "success"), ("model-x", "")]


def test_unique_users_over_many_days_equal_raw_rows(calls, subtests):
    for start, end in WINDOWS:
        for model, status in FILTERS:
            with subtests.test(start=start, end=end, model=model, status=status):
                with CaptureQueriesContext(connection) as queries:
                    answer = metrics.overview(chosen(start, end, model, status))["unique_users"]
                assert answer == raw_users(calls, start, end, model, status)
                # The walk answered (the windows hold more than WALK_USERS_FROM_DAYS whole days).
                assert any("WITH RECURSIVE walked" in query["sql"] for query in queries.captured_queries)


def test_the_windows_miss_some_users_so_the_walk_has_users_to_leave_out(calls):
    everyone = {call.user_id for call in calls if call.user_id}
    for start, end in WINDOWS[1:]:
        assert 0 < raw_users(calls, start, end, "", "") < len(everyone)


def test_a_window_of_few_days_reads_the_day_rows_instead(calls):
    start, end = NOW - timedelta(days=5, minutes=3), NOW
    with CaptureQueriesContext(connection) as queries:
        answer = metrics.overview(chosen(start, end, "model-a"))["unique_users"]
    assert answer == raw_users(calls, start, end, "model-a", "")
    assert not any("WITH RECURSIVE" in query["sql"] for query in queries.captured_queries)


def test_the_walk_probes_each_user_rather_than_each_day(calls):
    """Its SQL asks for one user at a time (ORDER BY user_id DESC LIMIT 1), so what it reads grows
    with the users, not with the days of the window."""
    the_plan = metrics.plan(chosen(*WINDOWS[0], "model-a"))
    sql, params = metrics._walked_users(metrics.DailyUserRollup, the_plan.split.days, "model-a", "")
    assert sql.count("ORDER BY user_id DESC LIMIT 1") == 2
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = {row[0] for row in cursor.fetchall()}
    days = the_plan.split.days
    assert found == {
        call.user_id
        for call in calls
        if call.user_id
        and call.model_name == "model-a"
        and call.id <= the_plan.watermark
        and days[0] <= call.timestamp.astimezone(the_plan.zone).date() <= days[-1]
    }


# Hourly series: raw rows grouped by UTC hour number where every UTC hour is one local hour
# (llm.metrics.RawPeriod), by local hour elsewhere; both named as the roll-ups name their hours.
DST_CHANGE = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # Europe/Paris moves from +1 to +2


@pytest.mark.parametrize("zone_name", ["Europe/Paris", "Asia/Kolkata", "UTC"])
def test_hourly_series_with_raw_edges_equal_raw_rows_across_zones(settings, zone_name):
    settings.TIME_ZONE = zone_name
    rng = random.Random(3)
    start, end = DST_CHANGE - timedelta(days=1, minutes=47, seconds=3), DST_CHANGE + timedelta(days=2, minutes=29)

    def calls(count: int) -> None:
        make_logs(
            count,
            timestamp=lambda i: start - timedelta(hours=2) + timedelta(seconds=rng.uniform(0, 3.2 * 86400)),
            status=lambda i: rng.choice(["success", "error"]),
            latency_ms=lambda i: rng.uniform(50, 900),
            prompt_tokens=lambda i: rng.randint(0, 500),
        )

    with timezone.override(zone_name):
        calls(400)
        rollups.roll_up()
        calls(100)  # above the watermark
        expected: dict[str, list[LLMRequestLog]] = {}
        for call in LLMRequestLog.objects.in_window(start, end):
            hour = timezone.localtime(call.timestamp).replace(minute=0, second=0, microsecond=0).isoformat()
            expected.setdefault(hour, []).append(call)
        series = metrics.timeseries(chosen(start, end), "hour")
    assert [row["period"] for row in series] == sorted(expected, key=datetime.fromisoformat)
    for row in series:
        group = expected[row["period"]]
        assert (row["requests"], row["errors"], row["prompt_tokens"]) == (
            len(group),
            sum(call.status == "error" for call in group),
            sum(call.prompt_tokens for call in group),
        )
