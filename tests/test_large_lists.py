"""Issue 14's quick fixes: what stays cheap at millions of rows must still be exactly right.

The model list (a loose index scan) equals the distinct models of the rows; a list whose count is
an estimate still walks every row exactly once by its next and previous links; search answers
the same rows with PostgreSQL's trigram indexes as a plain scan would; /metrics, rolling up a
bounded slice per scrape, catches up to the exact totals.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.checks import run_checks
from django.db import connection
from django.utils import timezone

from llm import dashboard, prometheus
from llm.models import LLMRequestLog, ModelPrice, RequestTotal
from llm.paging import EstimatingPaginator, count_rows
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

NOW = timezone.now()
WINDOW = {"start_date": (NOW - timedelta(days=2)).isoformat(), "end_date": (NOW + timedelta(minutes=1)).isoformat()}
MODELS = ["llama-3.1-8b-instant", "Gemma2-9b-it", "openai/gpt-oss-20b", "a", "zz-top", "mixtral_8x7b", "qwen 2.5"]


# The model list.


def test_the_model_list_is_the_distinct_models_of_the_rows():
    make_logs(70, model_name=lambda index: MODELS[index * 3 % len(MODELS)], timestamp=lambda index: NOW)
    expected = set(LLMRequestLog.objects.values_list("model_name", flat=True))  # every row, in Python
    names = dashboard.logged_model_names()
    assert len(names) == len(set(names)) == len(MODELS)
    assert set(names) == expected == set(MODELS)
    # In the database's own order (its collation), as ORDER BY gives it.
    assert names == list(LLMRequestLog.objects.order_by("model_name").values_list("model_name", flat=True).distinct())


def test_the_model_list_stops_at_its_limit_in_order():
    make_logs(len(MODELS), model_name=lambda index: MODELS[index])
    ordered = list(LLMRequestLog.objects.order_by("model_name").values_list("model_name", flat=True))
    assert dashboard.logged_model_names(limit=3) == ordered[:3]
    assert dashboard.logged_model_names(limit=1) == ordered[:1]


def test_model_choices_add_the_priced_models():
    assert dashboard.logged_model_names() == []
    priced = set(ModelPrice.objects.values_list("model_name", flat=True))
    assert dashboard.model_choices() == sorted(priced)
    make_logs(2, model_name=lambda index: ["new/model", "llama-3.1-8b-instant"][index])
    assert dashboard.model_choices() == sorted(priced | {"new/model", "llama-3.1-8b-instant"})


# Counting and walking a long list.


def ordered_ids() -> list[int]:
    rows = LLMRequestLog.objects.values_list("id", "timestamp")
    return [row_id for row_id, _ in sorted(rows, key=lambda row: (row[1], row[0]), reverse=True)]


def make_list(count: int) -> None:
    # Several rows per timestamp: the order must break ties (by id) for pages not to overlap.
    make_logs(count, timestamp=lambda index: NOW - timedelta(minutes=index // 3))


class SmallThreshold(EstimatingPaginator):
    exact_count_up_to = 30


def test_a_count_is_exact_up_to_the_threshold_and_flagged_above_it():
    make_list(40)
    logs = LLMRequestLog.objects.order_by("-timestamp", "-id")
    assert count_rows(logs, exact_up_to=40) == (40, False)
    assert count_rows(logs, exact_up_to=100) == (40, False)
    count, is_estimate = count_rows(logs, exact_up_to=39)
    if connection.vendor == "postgresql":
        assert is_estimate and count >= 40  # never below what the bounded count saw
    else:
        assert (count, is_estimate) == (40, False)  # SQLite: no planner estimate, an exact count


@pytest.mark.parametrize("per_page", [7, 10, 41])
def test_the_pages_hold_every_row_once_whatever_the_count(per_page):
    make_list(41)
    paginator = SmallThreshold(LLMRequestLog.objects.order_by("-timestamp", "-id"), per_page)
    seen, number = [], 1
    while True:
        page = paginator.page(number)
        assert page.end_index() - page.start_index() + 1 == len(page.object_list)
        seen += [log.id for log in page.object_list]
        if not page.has_next():
            break
        number = page.next_page_number()
    assert seen == ordered_ids()
    assert paginator.count_is_estimate == (connection.vendor == "postgresql")
    assert number == -(-41 // per_page)


def test_the_api_walks_every_row_once_by_next_and_back_by_previous(api_client, monkeypatch):
    monkeypatch.setattr(EstimatingPaginator, "exact_count_up_to", 30)
    make_list(95)
    first = api_client.get("/api/logs/", {**WINDOW, "page_size": 20})
    assert first.status_code == 200, first.content
    answer = first.json()
    estimate = connection.vendor == "postgresql"
    assert answer["count_is_estimate"] is estimate
    assert answer["count"] >= 31 if estimate else answer["count"] == 95
    pages, url = [], "/api/logs/"
    params = {**WINDOW, "page_size": 20}
    while url:
        response = api_client.get(url, params)
        assert response.status_code == 200, response.content
        pages.append(response.json())
        url, params = pages[-1]["next"], None
    ids = [row["request_id"] for page in pages for row in page["results"]]
    expected = [str(request_id) for request_id in _request_ids_in_order()]
    assert ids == expected
    assert [len(page["results"]) for page in pages] == [20, 20, 20, 20, 15]
    backwards, url = [], pages[-1]["previous"]
    while url:
        page = api_client.get(url).json()
        backwards = [row["request_id"] for row in page["results"]] + backwards
        url = page["previous"]
    assert backwards + [row["request_id"] for row in pages[-1]["results"]] == expected
    assert api_client.get("/api/logs/", {**WINDOW, "page_size": 20, "page": 6}).status_code == 404


def _request_ids_in_order() -> list:
    by_id = dict(LLMRequestLog.objects.values_list("id", "request_id"))
    return [by_id[row_id] for row_id in ordered_ids()]


def test_the_logs_page_says_about_when_the_count_is_an_estimate(logged_in_client, monkeypatch):
    monkeypatch.setattr(EstimatingPaginator, "exact_count_up_to", 30)
    make_list(60)
    response = logged_in_client.get("/logs/", {**WINDOW, "page": 2})
    assert response.status_code == 200
    page = response.context["page_obj"]
    expected = _request_ids_in_order()
    per_page = page.paginator.per_page
    assert [log.request_id for log in page.object_list] == expected[per_page : 2 * per_page]
    assert page.paginator.count_is_estimate == (connection.vendor == "postgresql")
    assert ("about" in response.content.decode()) == page.paginator.count_is_estimate
    # Past the end: the logs page shows a page instead of failing.
    assert logged_in_client.get("/logs/", {**WINDOW, "page": 99}).status_code == 200


# Search and its indexes.

TEXTS = [
    ("Please process my REFUND today", "ok"),
    ("nothing here", "The refund was issued"),
    ("100% sure", "under_score"),
    ("Ünïcode straße", "plain"),
    ("re", "fund"),
    ("", ""),
]


@pytest.mark.parametrize("search", ["refund", "REFund", "fund", "%", "_", "re", "STRASSE", "straße", "ok", "zebra"])
def test_search_answers_the_rows_whose_text_contains_it(api_client, search):
    make_logs(
        len(TEXTS) * 3,
        prompt_text=lambda index: TEXTS[index % len(TEXTS)][0],
        response_text=lambda index: TEXTS[index % len(TEXTS)][1],
        timestamp=lambda index: NOW - timedelta(minutes=index),
    )
    response = api_client.get("/api/logs/", {**WINDOW, "search": search, "page_size": 500})
    assert response.status_code == 200, response.content
    found = {row["request_id"] for row in response.json()["results"]}
    # The database's UPPER is the reference for case (SQLite's folds ASCII only): compare against
    # its own case folding of each text, row by row.
    with connection.cursor() as cursor:
        cursor.execute("SELECT UPPER(%s)", [search])
        needle = cursor.fetchone()[0]
        expected = set()
        for log in LLMRequestLog.objects.all():
            cursor.execute("SELECT UPPER(%s), UPPER(%s)", [log.prompt_text, log.response_text])
            prompt, answer = cursor.fetchone()
            if needle in prompt or needle in answer:
                expected.add(str(log.request_id))
    assert found == expected
    assert response.json()["count"] == len(expected)


def trigram_indexes() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname LIKE %s",
            [LLMRequestLog._meta.db_table, "%trgm"],
        )
        return dict(cursor.fetchall())


@pytest.mark.postgres_only
def test_search_has_trigram_indexes_that_icontains_uses():
    if connection.vendor != "postgresql":
        pytest.skip("The trigram indexes are PostgreSQL's (pg_trgm).")
    indexes = trigram_indexes()
    assert set(indexes) == {"llm_log_prompt_trgm", "llm_log_response_trgm"}
    assert all("gin_trgm_ops" in definition and "upper(" in definition for definition in indexes.values())
    make_logs(50, prompt_text=lambda index: f"prompt number {index}", response_text="answer")
    from llm.filters import search_logs

    sql, params = search_logs(LLMRequestLog.objects.all(), {"search": "number 4"}).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a 50-row table: make the planner show it can
        # Nor the index of the calls with text, which a search may walk instead (undone with the
        # test's transaction; tests/test_search_count.py shows that one).
        cursor.execute("DROP INDEX llm_log_text_time")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(line for (line,) in cursor.fetchall())
    assert "llm_log_prompt_trgm" in plan and "llm_log_response_trgm" in plan, plan


@pytest.mark.postgres_only
def test_a_missing_trigram_index_is_a_system_check_warning():
    if connection.vendor != "postgresql":
        pytest.skip("The trigram indexes are PostgreSQL's (pg_trgm).")
    assert not [check for check in run_checks(databases=["default"]) if check.id == "llm.W003"]
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX llm_log_response_trgm")  # undone with the test's transaction
    warnings = [check for check in run_checks(databases=["default"]) if check.id == "llm.W003"]
    assert len(warnings) == 1
    assert "llm_log_response_trgm" in warnings[0].msg and "llm_log_prompt_trgm" not in warnings[0].msg
    assert "CREATE EXTENSION IF NOT EXISTS pg_trgm" in warnings[0].hint


def test_the_session_and_user_filters_have_indexes():
    constraints = connection.introspection.get_constraints(connection.cursor(), LLMRequestLog._meta.db_table)
    indexes = [tuple(constraint["columns"]) for constraint in constraints.values() if constraint["index"]]
    # Key columns first; on PostgreSQL the rule columns an index INCLUDEs follow them.
    for wanted in (("session_id", "timestamp"), ("user_id", "timestamp"), ("model_name", "timestamp", "user_id")):
        assert any(columns[: len(wanted)] == wanted for columns in indexes), wanted


# /metrics catching up over several scrapes.


def test_metrics_catch_up_over_several_scrapes_to_the_exact_totals():
    logs = make_logs(
        130,
        model_name=lambda index: MODELS[index % 3],
        status=lambda index: "error" if index % 7 == 0 else "success",
        prompt_tokens=lambda index: index,
        completion_tokens=lambda index: 2 * index,
        cost_estimate=lambda index: Decimal(index) / 1000,
        latency_ms=lambda index: 10.0 * index,
    )
    # A gap in the ids (rows gone before the first scrape) costs no empty scrape.
    LLMRequestLog.objects.filter(id__in=[log.id for log in logs[50:120]]).delete()
    kept = list(LLMRequestLog.objects.all())
    added, totals_seen = [], []
    while True:
        count = prometheus.roll_up_requests(limit=40)
        if not count:
            break
        added.append(count)
        totals_seen.append(sum(RequestTotal.objects.values_list("requests", flat=True)))
    assert added == [40, 10, 10]  # the first 40 ids, the next 40 (of which 30 deleted), the last 10
    assert totals_seen == sorted(totals_seen)  # never down
    expected: dict[tuple[str, str], list] = {}
    for log in kept:
        figures = expected.setdefault((log.model_name, log.status), [0, 0, 0, Decimal(0)])
        figures[0] += 1
        figures[1] += log.prompt_tokens
        figures[2] += log.completion_tokens
        figures[3] += log.cost_estimate
    totals = {
        (total.model_name, total.status): [total.requests, total.prompt_tokens, total.completion_tokens, total.cost_usd]
        for total in RequestTotal.objects.all()
    }
    assert totals == expected


def test_the_metrics_endpoint_serves_the_totals_so_far_and_then_all(client, monkeypatch):
    monkeypatch.setattr(prometheus, "SCRAPE_ROLLUP_LIMIT", 25)
    make_logs(60, model_name="llama-3.1-8b-instant")
    line = 'llm_requests_total{model="llama-3.1-8b-instant",status="success"}'
    seen = []
    for _ in range(4):
        body = client.get("/metrics").content.decode()
        seen.append(next(float(row.split()[-1]) for row in body.splitlines() if row.startswith(line)))
    assert seen == [25, 50, 60, 60]
