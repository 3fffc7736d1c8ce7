"""The count of a `search` list (llm/paging.py): exact up to SEARCH_EXACT_COUNT_UP_TO matches (no
index says which calls of a window match, so a bounded count reads calls until it has found that
many), PostgreSQL's estimate above; every other list keeps EXACT_COUNT_UP_TO. `next` walks every
match once either way."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from llm import paging
from llm.filters import search_logs
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

NOW = timezone.now()
WINDOW = {"start_date": (NOW - timedelta(days=2)).isoformat(), "end_date": (NOW + timedelta(minutes=1)).isoformat()}


def make_calls() -> None:
    """45 calls, 36 of them with "refund" in the prompt or the answer."""
    make_logs(
        45,
        timestamp=lambda index: NOW - timedelta(minutes=index),
        prompt_text=lambda index: "a Refund please" if index % 5 in (0, 1) else "hello",
        response_text=lambda index: "no REFUND" if index % 5 in (2, 3) else "hi",
    )


def matching_ids() -> list[str]:
    rows = LLMRequestLog.objects.values_list("request_id", "timestamp", "id", "prompt_text", "response_text")
    found = [row for row in rows if "refund" in row[3].lower() or "refund" in row[4].lower()]
    return [str(row[0]) for row in sorted(found, key=lambda row: (row[1], row[2]), reverse=True)]


@pytest.mark.parametrize(
    ("params", "limit"),
    [
        ({"search": "refund"}, paging.SEARCH_EXACT_COUNT_UP_TO),
        ({"search": ""}, paging.EXACT_COUNT_UP_TO),
        ({}, paging.EXACT_COUNT_UP_TO),
    ],
)
def test_only_a_search_lowers_the_exact_count(params, limit):
    rows = search_logs(LLMRequestLog.objects.filter(model_name="m").order_by("-timestamp"), params)
    assert paging.exact_count_limit(rows) == limit
    assert paging.exact_count_limit(rows.filter(status="error").order_by("id")) == limit


def test_a_search_is_counted_exactly_up_to_its_limit_and_estimated_above(api_client, monkeypatch):
    monkeypatch.setattr(paging, "SEARCH_EXACT_COUNT_UP_TO", 30)
    make_calls()
    expected = matching_ids()
    assert len(expected) == 36
    answer = api_client.get("/api/logs/", {**WINDOW, "search": "refund", "page_size": 10}).json()
    if connection.vendor == "postgresql":
        assert answer["count_is_estimate"] is True and answer["count"] >= 31
    else:  # SQLite has no estimate: it counts exactly
        assert (answer["count_is_estimate"], answer["count"]) == (False, 36)
    ids, url, params = [], "/api/logs/", {**WINDOW, "search": "refund", "page_size": 10}
    while url:
        page = api_client.get(url, params).json()
        ids += [row["request_id"] for row in page["results"]]
        url, params = page["next"], None
    assert ids == expected
    # Without a search the same 45 calls are under EXACT_COUNT_UP_TO: exact.
    everything = api_client.get("/api/logs/", WINDOW).json()
    assert (everything["count_is_estimate"], everything["count"]) == (False, 45)


def test_a_search_under_its_limit_is_exact(api_client, logged_in_client):
    make_calls()
    answer = api_client.get("/api/logs/", {**WINDOW, "search": "refund"}).json()
    assert (answer["count_is_estimate"], answer["count"]) == (False, len(matching_ids()))
    page = logged_in_client.get("/logs/", {"range": "24h", "search": "refund"}).context["page_obj"]
    assert (page.paginator.count_is_estimate, page.paginator.count) == (False, len(matching_ids()))
