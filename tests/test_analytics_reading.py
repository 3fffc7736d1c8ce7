"""The analytics page's figures read once where they share a reading: the top users by cost and
by requests from one summing of the window's users (`metrics.top_users`), against plain Python over
the raw rows, whatever part of the rows is rolled up, for windows not aligned to hours."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from llm import metrics, rollups
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
USERS = ["", "ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo", "kim", "lu"]
WINDOWS = [
    (NOW - timedelta(days=9, minutes=13, seconds=7), NOW - timedelta(minutes=41)),
    (NOW - timedelta(hours=30, minutes=1), NOW),
    (NOW - timedelta(minutes=95), NOW),  # short: read raw
]


@pytest.fixture
def half_rolled() -> list[LLMRequestLog]:
    rng = random.Random(5)

    def calls(count: int) -> None:
        make_logs(
            count,
            timestamp=lambda i: NOW - timedelta(seconds=rng.randint(0, 12 * 86400)),
            model_name=lambda i: rng.choice(["model-a", "model-b"]),
            status=lambda i: rng.choice(["success"] * 5 + ["error"]),
            user_id=lambda i: rng.choice(USERS),
            prompt_tokens=lambda i: rng.randint(0, 900),
            cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
        )

    calls(500)
    rollups.roll_up()
    calls(150)  # above the watermark, old timestamps among them
    return list(LLMRequestLog.objects.all())


def expected_top(logs, start, end, model, order_by, limit):
    per_user = defaultdict(list)
    for log in logs:
        if start <= log.timestamp < end and log.user_id and (not model or log.model_name == model):
            per_user[log.user_id].append(log)

    def figures(user):
        rows = per_user[user]
        cost = float(sum((log.cost_estimate for log in rows), Decimal(0)))
        return {
            "user_id": user,
            "requests": len(rows),
            "errors": sum(log.is_error for log in rows),
            "total_tokens": sum(log.total_tokens for log in rows),
            "cost": cost,
        }

    rows = [figures(user) for user in per_user]
    return sorted(rows, key=lambda row: (-row["cost" if order_by == "cost" else "requests"], row["user_id"]))[:limit]


def test_top_users_both_ways_from_one_reading_equal_raw_rows(half_rolled, subtests):
    for start, end in WINDOWS:
        for model in ("", "model-b"):
            for limit in (3, 10):
                with subtests.test(start=start, end=end, model=model, limit=limit):
                    queryset = LLMRequestLog.objects.in_window(start, end).for_model(model)
                    selection = metrics.Selection(queryset, start, end, model, rollups_apply=True)
                    rolled_up = metrics.plan(selection) is not None
                    assert rolled_up == (end - start > metrics.EXACT_WINDOW)
                    top = metrics.top_users(selection, limit)
                    for order_by in ("cost", "requests"):
                        expected = expected_top(half_rolled, start, end, model, order_by, limit)
                        assert expected  # someone to rank
                        assert top[order_by] == expected
                        assert metrics.user_usage(selection, order_by, limit) == expected


def test_the_analytics_page_plans_its_figures_from_the_shared_reading_state(staff_user, half_rolled):
    """The page's figures plan from the roll-ups' state its shared reading found (not a query per
    figure); each reading of its own still checks the state after it (consistent)."""
    client = Client()
    client.force_login(staff_user)
    start, end = WINDOWS[0]
    params = {"range": "custom", "start_date": start.isoformat(), "end_date": end.isoformat()}
    client.get("/analytics/", params)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/analytics/", params)
    assert response.status_code == 200
    state_reads = sum('"llm_metricwatermark"' in query["sql"] for query in queries.captured_queries)
    # The shared reading: before and after it; the top users' own reading: after it.
    assert state_reads == 3  # it was 9: one more per figure
    html = response.content.decode()
    top = expected_top(half_rolled, start, end, "", "cost", 10)
    assert top[0]["user_id"] in html.split("Top users by cost", 1)[1][:3000]
