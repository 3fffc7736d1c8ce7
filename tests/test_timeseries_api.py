"""GET /api/metrics/timeseries/: every series the overview draws, per period, with `partial`."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import timedelta

import numpy as np
import pytest

from llm import metrics
from llm.models import LLMRequestLog
from tests.factories import build_log
from tests.read_api_data import NOW, make_logs, period_key, select

pytestmark = pytest.mark.django_db

FIELDS = {
    "period",
    "requests",
    "errors",
    "error_rate",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "avg_latency_ms",
    "p50_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    "partial",
}


@pytest.fixture
def logs(model_prices, time_machine):
    time_machine.move_to(NOW + timedelta(minutes=30), tick=False)
    # Ten days of traffic before NOW, and a burst of 25 calls in the running hour (12:00-12:30).
    burst = [
        build_log(
            model_name="llama-3.1-8b-instant",
            timestamp=NOW + timedelta(minutes=1, seconds=index),
            latency_ms=float(50 + index * index),
            total_tokens=index,
        )
        for index in range(25)
    ]
    LLMRequestLog.objects.bulk_create(burst)
    return make_logs(1200, days=10) + burst


@pytest.mark.parametrize("group_by", ["hour", "day", "month"])
def test_each_period_equals_a_recomputation(api_client, logs, group_by):
    start = NOW - timedelta(days=7, hours=6)
    params = {"start_date": start.isoformat(), "model": "llama-3.1-8b-instant", "group_by": group_by}
    body = api_client.get("/api/metrics/timeseries/", params).json()
    assert body["group_by"] == group_by
    assert body["min_calls_for_percentile"] == metrics.MIN_CALLS_FOR_PERCENTILE == 20
    expected = defaultdict(list)
    for log in select(logs, start=start, model="llama-3.1-8b-instant"):
        expected[period_key(log.timestamp, group_by)].append(log)
    assert [row["period"] for row in body["results"]] == sorted(expected)
    checked_percentiles = 0
    for row in body["results"]:
        assert set(row) == FIELDS
        group = expected[row["period"]]
        latencies = [log.latency_ms for log in group]
        assert row["requests"] == len(group)
        assert row["errors"] == sum(log.is_error for log in group)
        assert row["total_tokens"] == sum(log.total_tokens for log in group)
        assert row["cost"] == pytest.approx(float(sum(log.cost_estimate for log in group)), abs=1e-9)
        assert row["avg_latency_ms"] == pytest.approx(statistics.fmean(latencies))
        if len(group) < 20:
            assert row["p50_latency_ms"] is row["p95_latency_ms"] is row["p99_latency_ms"] is None
        else:
            checked_percentiles += 1
            # Hours, days and months come from the roll-ups' histograms: within 1 %.
            assert row["p95_latency_ms"] == pytest.approx(float(np.percentile(latencies, 95)), rel=0.01)
            assert row["p99_latency_ms"] == pytest.approx(float(np.percentile(latencies, 99)), rel=0.01)
    assert checked_percentiles > 0
    # The clock is inside the last period. The window starts at 06:00: inside the first day and
    # month, which are partial, but on an hour's edge, so the first hour is whole.
    partial = [row["partial"] for row in body["results"]]
    assert partial[-1] is True
    assert partial[0] is (group_by != "hour")
    assert not any(partial[1:-1])


def test_default_window_and_group_by(api_client, logs):
    body = api_client.get("/api/metrics/timeseries/").json()
    assert body["window_defaulted"] is True
    assert body["group_by"] == "hour"
    assert sum(row["requests"] for row in body["results"]) == len(
        select(logs, start=NOW + timedelta(minutes=30) - timedelta(hours=24))
    )
    # 24 hours back from 12:30: the first hour (from 11:30) and the last (to 12:30) are partial.
    edges = {period_key(NOW - timedelta(days=1), "hour"), period_key(NOW, "hour")}
    assert body["results"][-1]["period"] == period_key(NOW, "hour")
    assert {row["period"] for row in body["results"] if row["partial"]} == edges & {
        row["period"] for row in body["results"]
    }


def test_a_window_ending_on_the_hour_in_the_past_has_no_partial_end(api_client, logs):
    params = {"start_date": (NOW - timedelta(days=2)).isoformat(), "end_date": NOW.isoformat(), "group_by": "hour"}
    results = api_client.get("/api/metrics/timeseries/", params).json()["results"]
    assert len(results) > 24
    assert not any(row["partial"] for row in results)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"group_by": "minute"}, "group_by"), ({"group_by": "week"}, "group_by"), ({"status": "x"}, "status")],
)
def test_bad_parameters_are_400_naming_the_field(api_client, db, params, field):
    response = api_client.get("/api/metrics/timeseries/", params)
    assert response.status_code == 400
    assert field in response.json()["fields"]


def test_the_schema_describes_it(api_client, db):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/metrics/timeseries/"]["get"]
    assert {parameter["name"] for parameter in operation["parameters"]} >= {"start_date", "model", "group_by"}
    assert "partial" in operation["responses"]["200"]["description"]
