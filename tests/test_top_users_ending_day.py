"""The top users read the local day a window ends in from the day's user roll-ups less the calls
after the window's end (metrics._ending_day_split), when those are fewer hours: the figures
still equal plain Python over the raw rows, for one model and all models, windows not aligned to
hours, calls after the end (some only by users with no call inside the window), calls above the
roll-up watermark on both sides of the end, and local days of half-hour and DST time zones."""

from __future__ import annotations

import random
import zoneinfo
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from llm import metrics, rollups
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
# Late in a UTC day (and in Kolkata's next morning: 03:17 on April 1st; New York: 17:47, EDT).
NOW = datetime(2026, 3, 31, 21, 47, 13, tzinfo=UTC)
USERS = ["", "ann", "bob", "cy", "dee", "eve", "fay"]
LATE_ONLY = "zed"  # calls only after the windows' ends: never ranked
WINDOWS = [
    (NOW - timedelta(days=3, hours=2, minutes=5, seconds=3), NOW),
    (NOW - timedelta(hours=26, minutes=3), NOW - timedelta(minutes=17, seconds=9)),
    (NOW - timedelta(days=25, minutes=1), NOW - timedelta(hours=1, minutes=2)),  # over the DST change
    (NOW - timedelta(days=4, hours=3), NOW - timedelta(hours=5, minutes=3)),  # 22:14 in Kolkata
]
# How many (window, model) readings take the ending day whole: those ending late in a local day.
TRIMMED = {"UTC": 8, "Asia/Kolkata": 2, "America/New_York": 8}


def make_calls(rng: random.Random, count: int, *, after: bool = False) -> None:
    def moment(_index: int) -> datetime:
        if after:  # after the windows' ends, up to the UTC day's end (and a local day's)
            return NOW + timedelta(seconds=rng.randint(0, 2 * 3600 + 12 * 60))
        return NOW - timedelta(seconds=rng.randint(0, 27 * 86400))

    make_logs(
        count,
        timestamp=moment,
        model_name=lambda i: rng.choice(["model-a", "model-b"]),
        status=lambda i: rng.choice(["success"] * 4 + ["error"]),
        user_id=lambda i: LATE_ONLY if after and i % 7 == 0 else rng.choice(USERS),
        total_tokens=lambda i: rng.randint(0, 900),
        cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
    )


def expected_top(logs: list[LLMRequestLog], start, end, model: str, order_by: str, limit: int) -> list[dict]:
    per_user = defaultdict(list)
    for log in logs:
        if start <= log.timestamp < end and log.user_id and (not model or log.model_name == model):
            per_user[log.user_id].append(log)
    rows = [
        {
            "user_id": user,
            "requests": len(calls),
            "errors": sum(log.status == "error" for log in calls),
            "total_tokens": sum(log.total_tokens for log in calls),
            "cost": float(sum((log.cost_estimate for log in calls), Decimal(0))),
        }
        for user, calls in per_user.items()
    ]
    column = "cost" if order_by == "cost" else "requests"
    return sorted(rows, key=lambda row: (-row[column], row["user_id"]))[:limit]


def selection_of(start: datetime, end: datetime, model: str) -> metrics.Selection:
    queryset = LLMRequestLog.objects.in_window(start, end).for_model(model)
    return metrics.Selection(queryset, start, end, model, rollups_apply=True)


@pytest.mark.parametrize("zone_name", ["UTC", "Asia/Kolkata", "America/New_York"])
def test_top_users_read_through_the_ending_day_equal_raw_rows(settings, subtests, zone_name):
    settings.TIME_ZONE = zone_name
    rng = random.Random(11)
    with timezone.override(zoneinfo.ZoneInfo(zone_name)):
        make_calls(rng, 400)
        make_calls(rng, 40, after=True)
        rollups.roll_up()
        make_calls(rng, 60)  # above the watermark: late ones among them
        make_calls(rng, 15, after=True)
        logs = list(LLMRequestLog.objects.all())
        trimmed = 0
        for start, end in WINDOWS:
            for model in ("", "model-b"):
                with subtests.test(start=start, end=end, model=model):
                    selection = selection_of(start, end, model)
                    the_plan = metrics.plan(selection)
                    assert the_plan is not None
                    trimmed += metrics._ending_day_split(the_plan) is not None
                    top = metrics.top_users(selection, 4)
                    for order_by in ("cost", "requests"):
                        expected = expected_top(logs, start, end, model, order_by, 4)
                        assert len(expected) == 4
                        assert top[order_by] == expected
                    # All of them: the user with calls only after the end is not among them.
                    everyone = metrics.top_users(selection, 50)["cost"]
                    assert everyone == expected_top(logs, start, end, model, "cost", 50)
        assert trimmed == TRIMMED[zone_name]


def test_the_ending_day_is_read_whole_only_where_that_reads_fewer_hours(settings):
    settings.TIME_ZONE = "UTC"
    with timezone.override(zoneinfo.ZoneInfo("UTC")):
        make_logs(3, timestamp=lambda i: NOW - timedelta(days=i), user_id="ann")
        rollups.roll_up()
        midnight = datetime(2026, 3, 31, tzinfo=UTC)

        def ending(start: datetime, end: datetime):
            the_plan = metrics.plan(selection_of(start, end, ""))
            return metrics._ending_day_split(the_plan)

        split, later = ending(NOW - timedelta(days=3, minutes=5), NOW)
        assert later == (NOW, midnight + timedelta(days=1))
        assert split.days[-1] == NOW.date() and split.days == sorted(split.days)
        # Nothing of the ending day is read apart: its part of the window comes from its row.
        assert all(end <= midnight for _start, end in split.hours + split.raw)
        assert ending(NOW - timedelta(days=3), midnight + timedelta(hours=11)) is None  # more after than before
        assert ending(midnight + timedelta(hours=1), NOW) is None  # the window starts within that day
        assert ending(NOW - timedelta(days=3), midnight) is None  # ends on a day's start: whole days
