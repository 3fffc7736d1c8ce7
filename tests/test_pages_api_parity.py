"""Pages and API read the same figures: for one window, what a page renders equals the API's answer."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from llm.models import LLMRequestLog, UserFeedback

pytestmark = pytest.mark.django_db

MODELS = ["llama-3.1-8b-instant", "openai/gpt-oss-20b", "unpriced-model"]


@pytest.fixture
def logged_in(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def calls(model_prices):
    now = timezone.now()
    logs = [
        LLMRequestLog(
            timestamp=now - timedelta(minutes=37 * index + 1),
            model_name=MODELS[index % 3],
            user_id=f"user-{index % 5}",
            prompt_tokens=50 + index,
            completion_tokens=0 if index % 9 == 0 else 30,
            total_tokens=(50 + index) + (0 if index % 9 == 0 else 30),
            latency_ms=120.0 + (index * 53) % 900,
            cost_estimate=0.00001 * (index % 4),
            status="error" if index % 9 == 0 else "success",
            error_type="timeout" if index % 9 == 0 else "",
        )
        for index in range(90)  # about 2.3 days
    ]
    LLMRequestLog.objects.bulk_create(logs)
    for log in LLMRequestLog.objects.order_by("id")[::7]:
        UserFeedback.objects.create(request=log, rating="thumbs_up" if log.id % 2 else "thumbs_down")


def as_json(value):
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


@pytest.mark.parametrize("model", ["", MODELS[1]])
def test_analytics_page_equals_the_metrics_api(logged_in, calls, model):
    page = logged_in.get("/analytics/", {"range": "7d", "model": model})
    params = page.context["window"].api_params()
    models = logged_in.get("/api/metrics/model-usage/", params).json()["results"]
    daily = logged_in.get("/api/metrics/daily-stats/", params).json()["results"]
    assert as_json(page.context["models"]) == models
    assert as_json(page.context["daily"]) == daily
    assert sum(row["requests"] for row in models) == LLMRequestLog.objects.filter(model_name__startswith=model).count()


@pytest.mark.parametrize("model", ["", MODELS[0]])
def test_feedback_page_equals_the_feedback_api(logged_in, calls, model):
    page = logged_in.get("/feedback/", {"range": "7d", "model": model})
    params = page.context["window"].api_params()
    api = logged_in.get("/api/feedback/analytics/", params).json()
    window = {key: api.pop(key) for key in ("start", "end", "window_defaulted")}
    assert window == {"start": params["start_date"], "end": params["end_date"], "window_defaulted": False}
    assert as_json(page.context["summary"]) == api
    rated = UserFeedback.objects.filter(request__model_name__startswith=model)
    assert api["total"] == rated.count() > 0
    assert api["thumbs_up"] == rated.filter(rating="thumbs_up").count()


def test_overview_chart_data_equals_the_token_usage_api(logged_in, calls):
    page = logged_in.get("/", {"range": "7d"})
    params = page.context["window"].api_params()
    body = logged_in.get("/api/metrics/token-usage/", params).json()  # the default period: no group_by
    assert body["group_by"] == page.context["window"].group_by == "hour"
    api = body["results"]
    busy = {row["period"]: row for row in page.context["series"] if row["requests"]}
    assert len(busy) == len(api) > 0
    for row in api:
        assert busy[row["period"]]["prompt_tokens"] == row["prompt_tokens"]
        assert busy[row["period"]]["completion_tokens"] == row["completion_tokens"]


@pytest.mark.parametrize("model", ["", MODELS[2]])
def test_overview_charts_equal_the_timeseries_api(logged_in, calls, model):
    page = logged_in.get("/", {"range": "7d", "model": model})
    params = page.context["window"].api_params()
    body = logged_in.get("/api/metrics/timeseries/", params).json()  # the default period: no group_by
    assert body["group_by"] == page.context["window"].group_by == "hour"
    api = {row["period"]: row for row in body["results"]}
    series = page.context["series"]
    busy = {row["period"]: row for row in series if row["requests"]}
    assert set(busy) == set(api) and len(api) > 0
    for period, row in api.items():
        assert as_json(busy[period]) == row
    # The periods the page fills in have no calls; the running hour is partial on both sides.
    assert all(row["requests"] == 0 for row in series if row["period"] not in api)
    assert series[-1]["partial"] is True
    latest = max(api)
    assert api[latest]["partial"] is (latest == series[-1]["period"])
    # What the charts draw is those rows, column by column (one set of columns for the three charts
    # over time); each card's sparkline is the column it names.
    charts = page.context["charts"]
    keys = ("requests", "errors", "prompt_tokens", "completion_tokens", "p50_latency_ms", "p95_latency_ms")
    for key in (*keys, "p99_latency_ms", "partial", "error_rate", "total_tokens", "cost"):
        assert charts["periods"][key] == [row[key] for row in series], key
    assert charts["periods"]["labels"] == [row["period"] for row in series]
    assert charts["sparks"] == {
        "requests": "requests",
        "error_rate": "error_rate",
        "p95_latency_ms": "p95_latency_ms",
        "total_tokens": "total_tokens",
        "total_cost": "cost",
    }


@pytest.mark.parametrize(
    ("query", "group_by"),
    [
        ({"range": "1h"}, "minute"),
        ({"range": "24h"}, "hour"),
        ({"range": "7d"}, "hour"),
        ({"range": "30d"}, "day"),
        ({"range": "custom", "days": 90}, "day"),
        ({"range": "custom", "days": 180}, "day"),
        ({"range": "custom", "days": 181}, "month"),
        ({"range": "custom", "days": 365}, "month"),
    ],
)
def test_page_and_api_choose_the_same_period_for_a_window(logged_in, calls, query, group_by):
    if query.get("days"):
        end = timezone.now().replace(microsecond=0)
        start = end - timedelta(days=query.pop("days"))
        query |= {"start_date": start.isoformat(), "end_date": end.isoformat()}
    page = logged_in.get("/", query)
    window = page.context["window"]
    assert not window.errors
    assert window.group_by == group_by
    for endpoint in ("/api/metrics/timeseries/", "/api/metrics/token-usage/"):
        body = logged_in.get(endpoint, window.api_params()).json()
        assert body["group_by"] == group_by, endpoint
    # The chart's periods are the API's: every busy period of the page is one the API answers.
    api = {row["period"] for row in logged_in.get("/api/metrics/timeseries/", window.api_params()).json()["results"]}
    assert {row["period"] for row in page.context["series"] if row["requests"]} == api


def test_a_client_may_not_ask_for_minutes_though_the_default_may_be_minutes(logged_in, calls):
    end = timezone.now()
    params = {"start_date": (end - timedelta(hours=1)).isoformat(), "end_date": end.isoformat()}
    assert logged_in.get("/api/metrics/timeseries/", params).json()["group_by"] == "minute"
    response = logged_in.get("/api/metrics/timeseries/", {**params, "group_by": "minute"})
    assert response.status_code == 400
    assert "group_by" in response.json()["fields"]
