"""The count of a `search` list (llm/paging.py): exact up to SEARCH_EXACT_COUNT_UP_TO matches (no
index says which calls of a window match, so a bounded count reads calls until it has found that
many), PostgreSQL's estimate above; every other list keeps EXACT_COUNT_UP_TO. `next` walks every
match once either way."""

from __future__ import annotations

import json
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


# Calls of every kind a search meets, over three days and two models: no text at all (the calls the
# partial index llm_log_text_time leaves out, here the newest as in the 10M bench), the word only in
# the prompt, only in the response, in other cases, in neither.
TEXTS = [
    ("", ""),
    ("Please REFUND me", ""),
    ("", "a refund is on its way"),
    ("refunds?", "Refund issued"),
    ("hello", "hi"),
    ("", "nothing to see"),
    ("only a prompt", ""),
]


@pytest.fixture
def mixed_calls() -> list[LLMRequestLog]:
    newest = make_logs(30, timestamp=lambda index: NOW - timedelta(seconds=index))  # no text
    return newest + make_logs(
        140,
        timestamp=lambda index: NOW - timedelta(minutes=1 + index * 31),
        model_name=lambda index: "m-a" if index % 3 else "m-b",
        prompt_text=lambda index: TEXTS[index % len(TEXTS)][0],
        response_text=lambda index: TEXTS[index % len(TEXTS)][1],
    )


def expected_matches(calls, word: str, start, end, model: str = "") -> list[str]:
    """The matches, newest first, by plain Python over the rows."""
    found = [
        call
        for call in calls
        if start <= call.timestamp < end
        and (not model or call.model_name == model)
        and (word.lower() in call.prompt_text.lower() or word.lower() in call.response_text.lower())
    ]
    return [str(call.request_id) for call in sorted(found, key=lambda call: (call.timestamp, call.id), reverse=True)]


def every_page(client, params: dict) -> tuple[list[str], dict]:
    first = client.get("/api/logs/", params).json()
    ids, page = [], first
    while True:
        ids += [row["request_id"] for row in page["results"]]
        if not page["next"]:
            return ids, first
        page = client.get(page["next"]).json()


# Windows not aligned to hours: 26 h 17 min ending 13 minutes ago, and 2 days 5 h 3 min.
UNALIGNED = [
    (timedelta(hours=26, minutes=30), timedelta(minutes=13)),
    (timedelta(days=2, hours=5, minutes=3), -timedelta(minutes=1)),
]


@pytest.mark.parametrize("model", ["", "m-a", "m-b"])
@pytest.mark.parametrize(("back", "until"), UNALIGNED)
def test_search_results_and_counts_equal_a_plain_filter_of_the_rows(
    api_client, logged_in_client, mixed_calls, model, back, until
):
    for word in ("refund", "REFUND", "Refunds", "prompt", "nowhere"):
        check_search(api_client, logged_in_client, mixed_calls, word, model, NOW - back, NOW - until)


def check_search(api_client, logged_in_client, mixed_calls, word, model, start, end) -> None:
    expected = expected_matches(mixed_calls, word, start, end, model)
    params = {"start_date": start.isoformat(), "end_date": end.isoformat(), "search": word}
    if model:
        params["model"] = model
    ids, first = every_page(api_client, {**params, "page_size": 7})
    assert ids == expected
    assert (first["count"], first["count_is_estimate"]) == (len(expected), False)
    exported = json.loads(b"".join(api_client.get("/api/export/json/", params).streaming_content))
    assert [row["request_id"] for row in exported] == expected[::-1]  # oldest first
    page = logged_in_client.get("/logs/", {**params, "range": "custom"}).context["page_obj"]
    assert (page.paginator.count, [str(row.request_id) for row in page.object_list]) == (
        len(expected),
        expected[: len(page.object_list)],
    )


def test_a_search_above_its_exact_limit_is_estimated_and_walks_every_match(api_client, mixed_calls, monkeypatch):
    monkeypatch.setattr(paging, "SEARCH_EXACT_COUNT_UP_TO", 20)
    start, end = NOW - timedelta(days=3, minutes=7), NOW + timedelta(minutes=1)
    expected = expected_matches(mixed_calls, "refund", start, end)
    assert len(expected) > 20
    ids, first = every_page(
        api_client, {"start_date": start.isoformat(), "end_date": end.isoformat(), "search": "refund", "page_size": 9}
    )
    assert ids == expected
    if connection.vendor == "postgresql":
        assert first["count_is_estimate"] is True and first["count"] >= 21
    else:
        assert (first["count_is_estimate"], first["count"]) == (False, len(expected))


def plan(queryset) -> str:
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Only whether the index can serve the search at all: not the planner's choice on 170 rows.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return "\n".join(str(row) for row in cursor.fetchall())


def test_a_search_can_walk_the_index_of_calls_with_text(mixed_calls):
    """The search repeats the partial index's condition, so the database may use the index (a
    partial index serves only a query that implies its condition): newest first, and oldest first
    for the export."""
    searched = search_logs(LLMRequestLog.objects.in_window(NOW - timedelta(days=1), NOW), {"search": "refund"})
    for order in (("-timestamp", "-id"), ("timestamp", "id")):
        assert "llm_log_text_time" in plan(searched.order_by(*order))
    assert "llm_log_text_time" not in plan(LLMRequestLog.objects.in_window(NOW - timedelta(days=1), NOW))
