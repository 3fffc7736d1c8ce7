"""bench/scale_data.py, the loader of `make bench-scale`: its rows are what the app would have stored.

The loader writes PostgreSQL SQL, so the tests that run it need PostgreSQL; the traffic shape is
plain Python and is tested everywhere.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Count, Q

from llm.models import LLMRequestLog, ModelPrice, UserFeedback

# bench/ is a folder of scripts, not a package: load the module by its path, under the name the
# bench imports it by (its dataclasses look their module up in sys.modules).
BENCH = Path(__file__).resolve().parent.parent / "bench"
_spec = importlib.util.spec_from_file_location("scale_data", BENCH / "scale_data.py")
scale_data = sys.modules.setdefault("scale_data", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(scale_data)

END = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
ROWS = 2_000


def test_traffic_hours_add_up_to_the_rows_asked_with_busy_working_hours():
    hours = scale_data.traffic_hours(100_000, 90, END, seed=3)
    assert len(hours) == 90 * 24
    assert sum(hour.calls for hour in hours) == 100_000
    assert hours[0].start == datetime(2026, 8, 22, 14, tzinfo=UTC)
    assert hours[-1].start == datetime(2026, 11, 20, 13, tzinfo=UTC)
    assert 1 <= sum(hour.incident for hour in hours) <= 9
    working = sum(hour.calls for hour in hours if 9 <= hour.start.hour < 17)
    night = sum(hour.calls for hour in hours if 0 <= hour.start.hour < 8)
    assert working > 3 * night
    assert scale_data.traffic_hours(100_000, 90, END, seed=3) == hours


def test_chunks_keep_every_hour_once_in_order():
    hours = scale_data.traffic_hours(10_000, 10, END, seed=1)
    grouped = scale_data.chunks(hours, rows_per_chunk=1_000)
    assert [hour for chunk in grouped for hour in chunk] == hours
    assert 9 <= len(grouped) <= 11


@pytest.fixture
def loaded(db, model_prices):
    if connection.vendor != "postgresql":
        pytest.skip("The scale loader writes PostgreSQL SQL (make bench-scale runs it on a throwaway cluster).")
    scale_data.load_calls(ROWS, days=90, seed=7, end=END)
    return LLMRequestLog.objects.all()


@pytest.mark.postgres_only
def test_loader_writes_the_rows_asked_over_the_window(loaded):
    figures = loaded.aggregate(
        calls=Count("id"),
        failed=Count("id", filter=Q(status="error")),
        models=Count("model_name", distinct=True),
        users=Count("user_id", distinct=True),
        streamed=Count("ttft_ms"),
    )
    assert figures["calls"] == ROWS
    assert 0.015 <= figures["failed"] / ROWS <= 0.08
    assert figures["models"] == len(scale_data.SCALE_MODELS)
    assert 150 <= figures["users"] <= 501  # ~500 users and "" for calls without one
    assert 0.2 <= figures["streamed"] / ROWS <= 0.5
    assert not loaded.filter(Q(timestamp__lt=END - timedelta(days=90)) | Q(timestamp__gte=END)).exists()
    failed = loaded.filter(status="error")
    assert set(failed.values_list("error_type", flat=True)) <= set(LLMRequestLog.ErrorType.values)
    assert failed.values("error_type").distinct().count() >= 4
    assert not failed.filter(error_message="").exists()
    assert not loaded.filter(status="success").exclude(error_type="").exists()
    assert loaded.filter(tags__has_key="feature").count() > ROWS / 3


@pytest.mark.postgres_only
def test_loaded_rows_have_the_totals_and_cost_the_write_path_would_give(loaded):
    prices = ModelPrice.objects.price_table()
    for log in loaded.only("model_name", "prompt_tokens", "completion_tokens", "total_tokens", "cost_estimate"):
        assert log.total_tokens == log.prompt_tokens + log.completion_tokens
        assert log.cost_estimate == ModelPrice.cost_for(
            log.model_name, log.prompt_tokens, log.completion_tokens, prices
        )
    assert loaded.filter(model_name="mistral-saba-24b").exclude(cost_estimate=0).count() == 0
    assert loaded.filter(status="error").exclude(total_tokens=0).count() == 0


@pytest.mark.postgres_only
def test_feedback_rates_about_one_call_in_a_hundred(loaded):
    ratings = scale_data.load_feedback(seed=7, end=END)
    assert ratings == UserFeedback.objects.count()
    assert 5 <= ratings <= 45
    assert not UserFeedback.objects.filter(created_at__gt=END).exists()
    # Each rating carries its call's time and model, as the app's write path stores them.
    copies = UserFeedback.objects.values_list(
        "call_timestamp", "request__timestamp", "model_name", "request__model_name"
    )
    assert all(stamp == call_stamp and model == call_model for stamp, call_stamp, model, call_model in copies)


@pytest.mark.postgres_only
def test_overview_api_reads_the_loaded_rows_with_the_totals_of_sql(loaded, logged_in_client):
    start = END - timedelta(days=90)
    response = logged_in_client.get(
        "/api/metrics/overview/", {"start_date": start.isoformat(), "end_date": END.isoformat()}
    )
    assert response.status_code == 200
    answer = response.json()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT count(*), count(*) FILTER (WHERE status = 'error'), sum(total_tokens), sum(cost_estimate),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
                FROM {LLMRequestLog._meta.db_table} WHERE timestamp >= %s AND timestamp < %s""",  # noqa: S608
            [start, END],
        )
        calls, failed, tokens, cost, p95 = cursor.fetchone()
    assert (answer["total_requests"], answer["failed_requests"], answer["total_tokens"]) == (calls, failed, tokens)
    assert calls == ROWS
    assert answer["total_cost"] == float(cost) > 0
    # Roll-ups answer 90 days with percentiles from their histograms: within 1 %, and they say so.
    bound = 1e-9 if answer["percentiles"] == "exact" else 0.01
    assert answer["p95_latency_ms"] == pytest.approx(p95, rel=bound)


def test_the_consistency_step_runs_rebuild_rollups_only_when_the_app_has_it(db):
    from django.core.management import get_commands

    assert scale_data.make_app_consistent() == (["rebuild_rollups"] if "rebuild_rollups" in get_commands() else [])
