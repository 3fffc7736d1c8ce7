"""The analytics page's `by` choices name the tag keys of the window's newest 2,000 tagged calls
(`metrics.breakdown_tag_keys`), against plain Python over the raw rows, for all models and one;
one model's sample is read backwards along the (model_name, timestamp, user_id) index on
PostgreSQL (the window also stated as row values), not along the timestamp index skipping the
other models' calls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client

from llm import metrics
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
START, END = NOW - timedelta(hours=30), NOW
SAMPLE = 2000


@pytest.fixture
def tagged() -> list[LLMRequestLog]:
    # Keys that only old calls have (beyond the newest 2,000 tagged calls of all models) or only
    # one model's calls have, calls outside the window with their own keys, and untagged calls.
    make_logs(
        2700,  # 2,160 tagged in the window: more than one sample of all models, fewer of one model
        timestamp=lambda i: NOW - timedelta(seconds=36 * i + 7),
        model_name=lambda i: ["model-a", "model-b", "model-c"][i % 3],
        tags=lambda i: {} if i % 5 == 4 else {f"k{i % 3}": "v", **({"old": "x"} if i >= 2600 else {})},
    )
    make_logs(3, timestamp=NOW + timedelta(minutes=5), model_name="model-a", tags={"future": "x"})
    make_logs(3, timestamp=START - timedelta(minutes=5), model_name="model-a", tags={"earlier": "x"})
    return list(LLMRequestLog.objects.all())


def expected_keys(logs: list[LLMRequestLog], model: str) -> list[str]:
    rows = [log for log in logs if START <= log.timestamp < END and log.tags and (not model or log.model_name == model)]
    rows.sort(key=lambda log: log.timestamp, reverse=True)
    return sorted({key for log in rows[:SAMPLE] for key in log.tags})


@pytest.mark.parametrize("model", ["", "model-a"])
def test_the_tag_keys_are_those_of_the_windows_newest_tagged_calls(tagged, model):
    selection = metrics.Selection(LLMRequestLog.objects.in_window(START, END).for_model(model), START, END, model)
    expected = expected_keys(tagged, model)
    assert metrics.breakdown_tag_keys(selection) == expected
    assert metrics.breakdown_tag_keys(selection.logs) == expected  # a bare queryset: the same rows
    assert ("old" in expected) == bool(model)  # all models' sample stops before the old calls


def test_the_analytics_page_offers_the_tag_keys_of_one_models_calls(staff_user, tagged):
    client = Client()
    client.force_login(staff_user)
    params = {"range": "custom", "start_date": START.isoformat(), "end_date": END.isoformat(), "model": "model-b"}
    response = client.get("/analytics/", params)
    assert response.status_code == 200
    offered = {key.removeprefix("tag:") for key in response.context["breakdown_choices"] if key.startswith("tag:")}
    assert offered == set(expected_keys(tagged, "model-b")) == {"k1", "old"}


@pytest.mark.postgres_only
def test_postgresql_reads_one_models_newest_tagged_calls_along_the_model_index(tagged):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's plans")
    selection = metrics.Selection(
        LLMRequestLog.objects.in_window(START, END).for_model("model-a"), START, END, "model-a"
    )
    sample = metrics.newest_of_model(selection.logs.exclude(tags={}), selection).values_list("tags", flat=True)
    sql, params = sample[:SAMPLE].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE llm_llmrequestlog")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan Backward using llm_log_model_time_user" in plan, plan


@pytest.mark.parametrize("model", ["", "model-a"])
def test_sqlite_reads_the_newest_tagged_calls_from_the_tagged_calls_indexes(tagged, model):
    # Untagged calls have no entry there: a window of untagged calls costs nothing to look through
    # (1,000,000 calls, none tagged, 90 days: ~435 ms of all models, ~150 of one, read whole before).
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's plans")
    selection = metrics.Selection(LLMRequestLog.objects.in_window(START, END).for_model(model), START, END, model)
    sample = metrics.newest_of_model(selection.logs.exclude(tags={}), selection).values_list("tags", flat=True)
    sql, params = sample[:SAMPLE].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE llm_llmrequestlog")
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
    index = "llm_log_tagged_model_time" if model else "llm_log_tagged_time"
    assert f"USING INDEX {index} " in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # read newest first along the index: no sort
    untagged = LLMRequestLog.objects.filter(tags={}).count()
    assert untagged > 0  # the indexes skip them, yet the keys equal those of plain Python
    assert metrics.breakdown_tag_keys(selection) == expected_keys(tagged, model)
