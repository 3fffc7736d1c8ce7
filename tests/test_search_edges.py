"""The search's answers at its edges, each equal to a plain Python filter over the raw rows: a
search matching exactly 1,000 / 1,001 / 1,002 calls (SEARCH_EXACT_COUNT_UP_TO and one past it)
through the API list, /api/logs/errors/, the logs page and the CSV and JSON exports, with other
filters combined, every page followed; and LIKE's wildcards matched literally on every way of
reading (llm/paging.py, SearchReading; llm/filters.py, search_logs)."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from llm.filters import filter_logs, search_logs
from llm.models import LLMRequestLog
from llm.paging import SEARCH_EXACT_COUNT_UP_TO, SearchReading
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)
MATCHES = SEARCH_EXACT_COUNT_UP_TO + 4
OTHERS = 200


def match_text(index: int) -> tuple[str, str]:
    """Calls holding "refund" in either text, in any case."""
    return [("a refund please", ""), ("", "Your REFUND is on its way"), ("Refund?", "yes")][index % 3]


@pytest.fixture(scope="module")
def calls(module_transaction, django_db_blocker) -> None:
    with django_db_blocker.unblock():
        write_calls()


def write_calls() -> None:
    # Matches at minutes 1..MATCHES before NOW; calls without the word between them; a window
    # starting half a minute before match k holds exactly k matches.
    make_logs(
        MATCHES,
        timestamp=lambda index: NOW - timedelta(minutes=index + 1),
        prompt_text=lambda index: match_text(index)[0],
        response_text=lambda index: match_text(index)[1],
        status=lambda index: "error" if index % 5 == 0 else "success",
        user_id=lambda index: f"user-{index % 3}",
        model_name=lambda index: "small" if index % 2 else "large",
        tags=lambda index: {"team": "a" if index % 4 else "b"},
        latency_ms=lambda index: (index * 37) % 1000,
    )
    make_logs(
        OTHERS,
        timestamp=lambda index: NOW - timedelta(minutes=index + 1, seconds=20),
        prompt_text="nothing to see",
        response_text=lambda index: "" if index % 2 else "fun, de-fund",
        status="success",
        user_id="user-0",
        model_name="large",
    )


def window(matches: int) -> dict[str, str]:
    """The window holding the newest `matches` matches."""
    start = NOW - timedelta(minutes=matches, seconds=30)
    return {"start_date": start.isoformat(), "end_date": (NOW + timedelta(seconds=1)).isoformat()}


def expected(matches: int, needle: str = "refund", **equal: str) -> list[str]:
    """Request ids, newest first, of the calls of window(matches) holding `needle` (any case)
    whose columns equal `equal` (status, user_id, model_name, team: the tag)."""
    start = NOW - timedelta(minutes=matches, seconds=30)
    found = []
    for log in LLMRequestLog.objects.all():
        fields = {"status": log.status, "user_id": log.user_id, "model_name": log.model_name}
        fields["team"] = (log.tags or {}).get("team")
        held = needle.upper() in log.prompt_text.upper() or needle.upper() in log.response_text.upper()
        if log.timestamp >= start and held and all(fields[name] == value for name, value in equal.items()):
            found.append((log.timestamp, log.id, str(log.request_id)))
    return [request_id for *_, request_id in sorted(found, reverse=True)]


def follow(client, path: str, params: dict) -> tuple[list[str], list[tuple[int, bool]]]:
    """Every page's request ids, following `next` from page 1, and each page's (count, estimate)."""
    answer = client.get(path, params)
    assert answer.status_code == 200, answer.content
    ids, counts = [], []
    while True:
        body = answer.json()
        ids += [row["request_id"] for row in body["results"]]
        counts.append((body["count"], body["count_is_estimate"]))
        if not body["next"]:
            return ids, counts
        answer = client.get(body["next"])
        assert answer.status_code == 200, answer.content


def assert_count(counts: list[tuple[int, bool]], want: int) -> None:
    """Exact up to SEARCH_EXACT_COUNT_UP_TO; above it, on PostgreSQL, an estimate past the limit."""
    for count, estimate in counts:
        if want <= SEARCH_EXACT_COUNT_UP_TO or connection.vendor != "postgresql":
            assert (count, estimate) == (want, False)
        else:
            assert estimate and count > SEARCH_EXACT_COUNT_UP_TO


@pytest.mark.parametrize("matches", [SEARCH_EXACT_COUNT_UP_TO, SEARCH_EXACT_COUNT_UP_TO + 1, MATCHES - 2])
def test_the_api_list_at_the_exact_count_limit(calls, api_client, matches):
    want = expected(matches)
    assert len(want) == matches
    ids, counts = follow(api_client, "/api/logs/", {**window(matches), "search": "refund", "page_size": 500})
    assert ids == want
    assert len(counts) == -(-matches // 500)
    assert_count(counts, matches)
    # page_size 1: the last page, and the one after it is not found.
    last = api_client.get("/api/logs/", {**window(matches), "search": "REFUND", "page_size": 1, "page": matches})
    assert [row["request_id"] for row in last.json()["results"]] == want[-1:]
    assert last.json()["next"] is None
    past = api_client.get("/api/logs/", {**window(matches), "search": "refund", "page_size": 1, "page": matches + 1})
    assert past.status_code == 404


@pytest.mark.parametrize(
    "path, extra, equal",
    [
        ("/api/logs/", {"user_id": "user-1", "model": "small"}, {"user_id": "user-1", "model_name": "small"}),
        ("/api/logs/", {"tag": "team:a"}, {"team": "a"}),
        ("/api/logs/errors/", {}, {"status": "error"}),
        ("/api/logs/errors/", {"user_id": "user-2"}, {"status": "error", "user_id": "user-2"}),
        ("/api/logs/", {"status": "success", "tag": "team:b"}, {"status": "success", "team": "b"}),
    ],
)
def test_other_filters_combined(calls, api_client, path, extra, equal):
    for matches in (40, MATCHES):
        want = expected(matches, **equal)
        ids, counts = follow(api_client, path, {**window(matches), "search": "Refund", "page_size": 97, **extra})
        assert ids == want, (path, extra, matches)
        assert_count(counts, len(want))


def csv_ids(response) -> list[str]:
    return [row["request_id"] for row in csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode()))]


@pytest.mark.parametrize("matches", [SEARCH_EXACT_COUNT_UP_TO, SEARCH_EXACT_COUNT_UP_TO + 1, MATCHES - 2])
def test_the_exports_at_the_exact_count_limit(calls, api_client, matches):
    want = list(reversed(expected(matches)))  # the export is oldest first
    params = {**window(matches), "search": "refund"}
    # "rE" has no trigram: PostgreSQL walks the window, and above 1,000 matches the export streams
    # the walked rows (search_to_stream's `walked`), which must be the same.
    for needle in ("refund", "rE"):
        exported = api_client.get("/api/export/csv/", {**params, "search": needle})
        assert exported.status_code == 200
        assert csv_ids(exported) == want, needle
    if connection.vendor == "postgresql":
        rows = search_logs(filter_logs(window(matches)).queryset, {"search": "rE"})
        assert SearchReading.plans(rows) == ["walk"]
    exported = api_client.get("/api/export/json/", {**params, "user_id": "user-0"})
    assert exported.status_code == 200
    rows = json.loads(b"".join(exported.streaming_content))
    assert [row["request_id"] for row in rows] == list(reversed(expected(matches, user_id="user-0")))


@pytest.mark.parametrize("matches", [SEARCH_EXACT_COUNT_UP_TO, SEARCH_EXACT_COUNT_UP_TO + 1])
def test_the_logs_page_page_two_and_sorted(calls, logged_in_client, matches):
    want = expected(matches)
    params = {**window(matches), "range": "custom", "search": "refund"}
    page = logged_in_client.get("/logs/", {**params, "page": 2})
    assert page.status_code == 200
    shown = page.context["page_obj"]
    size = shown.paginator.per_page
    assert [str(log.request_id) for log in shown.object_list] == want[size : 2 * size]
    assert shown.has_next()
    if matches <= SEARCH_EXACT_COUNT_UP_TO or connection.vendor != "postgresql":
        assert (shown.paginator.count, shown.paginator.count_is_estimate) == (matches, False)
    # Slowest first: ordered by latency, then id, both descending.
    slowest = logged_in_client.get("/logs/", {**params, "sort": "slowest"}).context["page_obj"]
    rows = LLMRequestLog.objects.filter(request_id__in=want)
    by_latency = sorted(rows, key=lambda log: (log.latency_ms, log.id), reverse=True)
    assert [log.request_id for log in slowest.object_list] == [log.request_id for log in by_latency[:size]]


WILDCARD_TEXTS = ["100% sure", "100 percent", "snake_case", "snakeXcase", r"C:\temp\x", "C:/temp/x", "a\\_b"]


@pytest.fixture
def wildcard_calls(db) -> None:
    make_logs(
        len(WILDCARD_TEXTS),
        timestamp=lambda index: NOW - timedelta(minutes=index + 1),
        prompt_text=lambda index: WILDCARD_TEXTS[index],
        response_text="",
    )


@pytest.mark.parametrize("needle", ["%", "0%", "100% s", "_", "e_c", "snake_case", "\\", r"\temp", "\\_", "%_%"])
def test_like_wildcards_match_literally(wildcard_calls, api_client, needle):
    want = sorted(text for text in WILDCARD_TEXTS if needle.upper() in text.upper())
    answer = api_client.get("/api/logs/", {"hours": 1, "search": needle})
    assert answer.status_code == 200
    assert sorted(row["prompt_text"] for row in answer.json()["results"]) == want
    walked = search_logs(filter_logs({"hours": "1"}).queryset, {"search": needle}, walk=True)
    assert sorted(walked.values_list("prompt_text", flat=True)) == want


@pytest.mark.parametrize("number", ["99999999999999999999", str(2**63 - 1), str(2**63 // 50 + 1)])
def test_a_page_number_past_any_row_is_not_found_not_a_500(calls, api_client, logged_in_client, number):
    # Above the exact limit PostgreSQL's count is an estimate, so a page past it is read to see
    # whether rows remain: an offset past the largest row id cannot hold one (nor fit a bigint).
    params = {**window(MATCHES), "search": "refund", "page": number}
    assert api_client.get("/api/logs/", params).status_code == 404
    assert api_client.get("/api/logs/", {**params, "page_size": 1}).status_code == 404
    page = logged_in_client.get("/logs/", {**params, "range": "custom"})
    assert page.status_code == 200
    # Django's rule: the last page (on PostgreSQL the estimated last, or the first if that is empty).
    shown, size = page.context["page_obj"], page.context["page_obj"].paginator.per_page
    number = shown.number
    assert number == -(-MATCHES // size) or shown.paginator.count_is_estimate
    assert [str(log.request_id) for log in shown.object_list] == expected(MATCHES)[(number - 1) * size : number * size]
    assert shown.object_list
