"""A search's answers (rows, order, count, next) whatever way PostgreSQL reads it (llm/paging.py,
SearchReading): the planner's trigram pick, the walk of the window, or a text too short for
trigrams, each equal to a plain Python filter over the raw rows; and a search that does not finish
within SEARCH_TIMEOUT_MS is a 400 naming `search` (the page: the message above an empty table)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from llm.filters import filter_logs, search_logs
from llm.models import LLMRequestLog
from llm.paging import SearchReading
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)
# The calls, newest first, one every 50 minutes over ~3 days: texts that hold every word of
# "your refund we" apart but never that phrase, a few with the phrase, a two-character CJK word,
# "ancient" only in the oldest calls, calls without text, and one user with few calls.
TEXTS = [
    ("your order: refund, we said", "We will look at it"),
    ("Please REFUND me", ""),
    ("", ""),
    ("hello", "your refund went out"),
    ("申请退款", "好的"),
    ("", "Your refund we sent yesterday"),
    ("how are you", "order 42: fine, we are"),
]
CALLS = 90


def text_of(index: int) -> tuple[str, str]:
    if index >= CALLS - 6:
        return ("an ancient question", "")
    return TEXTS[index % len(TEXTS)]


@pytest.fixture
def calls(db) -> None:
    make_logs(
        CALLS,
        timestamp=lambda index: NOW - timedelta(minutes=50 * index + 1),
        prompt_text=lambda index: text_of(index)[0],
        response_text=lambda index: text_of(index)[1],
        user_id=lambda index: "rare" if index % 11 == 3 else f"user-{index % 4}",
        model_name=lambda index: "small" if index % 2 else "large",
    )


def expected(needle: str, hours: int, user_id: str | None = None) -> list[str]:
    """Request ids, newest first, of the calls in the last `hours` whose text holds `needle`."""
    start = NOW - timedelta(hours=hours)
    rows = LLMRequestLog.objects.values_list("request_id", "timestamp", "id", "prompt_text", "response_text", "user_id")
    found = [
        row
        for row in rows
        if row[1] >= start
        and (user_id is None or row[5] == user_id)
        and (needle.upper() in row[3].upper() or needle.upper() in row[4].upper())
    ]
    return [str(row[0]) for row in sorted(found, key=lambda row: (row[1], row[2]), reverse=True)]


def window(hours: int) -> dict[str, str]:
    start, end = NOW - timedelta(hours=hours), NOW + timedelta(seconds=1)
    return {"start_date": start.isoformat(), "end_date": end.isoformat()}


NEEDLES = ["refund", "your refund we", "退款", "qz", "we", "42", "ancient", "no such words here"]


@pytest.mark.parametrize("needle", NEEDLES)
def test_every_search_answers_what_the_rows_say(calls, api_client, needle):
    for hours, user_id in [(24, None), (80, None), (80, "rare")]:
        want = expected(needle, hours, user_id)
        params = {**window(hours), "search": needle, "page_size": 4, **({"user_id": user_id} if user_id else {})}
        first = api_client.get("/api/logs/", params)
        assert first.status_code == 200, first.content
        assert (first.json()["count"], first.json()["count_is_estimate"]) == (len(want), False)
        ids, answer = [], first.json()
        while True:
            ids += [row["request_id"] for row in answer["results"]]
            if not answer["next"]:
                break
            answer = api_client.get(answer["next"]).json()
            assert answer["count"] == len(want)
        assert ids == want, (needle, hours, user_id)
    # The old end of the window: "ancient" is only in the oldest calls.
    if needle == "ancient":
        assert expected(needle, 24) == [] and len(expected(needle, 80)) == 6


@pytest.mark.parametrize("needle", ["your refund we", "qz", "ancient"])
def test_the_logs_page_and_the_export_answer_the_same(calls, logged_in_client, needle):
    want = expected(needle, 80)
    page = logged_in_client.get("/logs/", {**window(80), "range": "custom", "search": needle})
    assert page.status_code == 200
    shown = page.context["page_obj"]
    assert [str(log.request_id) for log in shown.object_list] == want[: shown.paginator.per_page]
    assert (shown.paginator.count, shown.has_next()) == (len(want), len(want) > shown.paginator.per_page)
    export = logged_in_client.get("/api/export/json/", {**window(80), "search": needle})
    assert export.status_code == 200
    exported = [row["request_id"] for row in _json_rows(export)]
    assert exported == list(reversed(want))  # the export is oldest first


def _json_rows(response) -> list[dict]:
    import json

    return json.loads(b"".join(response.streaming_content))


@pytest.mark.postgres_only
@pytest.mark.parametrize("needle", NEEDLES)
def test_both_ways_of_reading_give_the_same_rows(calls, needle):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's plans")
    rows = search_logs(filter_logs({"hours": "80"}).queryset, {"search": needle}).order_by("-timestamp", "-id")
    want = expected(needle, 80)
    for plan in ("planner", "walk"):
        read = SearchReading._read_as(rows, lambda rows: [str(log.request_id) for log in rows], plan, 10_000)
        assert read == want, plan
    # A text without three letters or digits in a row has no trigram: it is only walked.
    if needle in ("qz", "退款", "we", "42"):
        assert SearchReading.plans(rows) == ["walk"]


@pytest.mark.parametrize("needle", NEEDLES)
def test_the_walk_finds_the_same_rows(calls, needle):
    walked = search_logs(filter_logs({"hours": "80"}).queryset, {"search": needle}, walk=True)
    assert [str(log.request_id) for log in walked.order_by("-timestamp", "-id")] == expected(needle, 80)


@pytest.fixture
def long_texts(db) -> None:
    """Calls whose texts take well over a millisecond to compare (~4 MB in all)."""
    make_logs(
        40,
        timestamp=lambda index: NOW - timedelta(minutes=index + 1),
        prompt_text=lambda index: f"{index} lorem ipsum dolor " * 5_000,
        response_text="",
    )


def test_a_search_that_does_not_finish_in_time_says_what_to_narrow(long_texts, api_client, logged_in_client, settings):
    settings.SEARCH_TIMEOUT_MS = 1
    answer = api_client.get("/api/logs/", {"hours": 2, "search": "not in there"})
    page = logged_in_client.get("/logs/", {"hours": 2, "search": "not in there"})
    export = api_client.get("/api/export/csv/", {"hours": 2, "search": "not in there"})
    assert page.status_code == 200
    if connection.vendor == "postgresql":
        assert export.status_code == 400 and "search" in export.json()["fields"]
        assert answer.status_code == 400
        assert "did not finish within 0.001 s" in answer.json()["fields"]["search"][0]
        assert "Narrow the window" in page.content.decode()
        assert list(page.context["page_obj"].object_list) == []
    else:  # SQLite has no statement timeout: it answers (its windows are small)
        assert (answer.status_code, answer.json()["count"], export.status_code) == (200, 0, 200)
    settings.SEARCH_TIMEOUT_MS = 0  # no limit: the same search answers
    answer = api_client.get("/api/logs/", {"hours": 2, "search": "not in there"})
    assert (answer.status_code, answer.json()["count"]) == (200, 0)


def test_a_search_leaves_the_connections_settings_as_they_were(calls, api_client):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's settings")

    def current() -> tuple:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('statement_timeout'), current_setting('enable_bitmapscan')")
            return cursor.fetchone()

    before = current()
    # The test runs in a transaction: settings local to a released savepoint would outlive it.
    for needle in ("your refund we", "qz"):
        assert api_client.get("/api/logs/", {"hours": 80, "search": needle}).status_code == 200
        assert current() == before == ("0", "on")
