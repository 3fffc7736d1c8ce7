"""Unique users over many whole days (llm.metrics._walked_users: one index probe per user of the
user roll-ups, not a row per user and day) against plain Python over the raw rows: users active
only before, only after or only in the edges of the window, filters by model and status, rows
above the roll-up watermark (late ones among them), windows not aligned to hours."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

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


@pytest.fixture
def calls() -> list[LLMRequestLog]:
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
