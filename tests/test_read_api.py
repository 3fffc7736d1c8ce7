"""The read side of the HTTP API: metrics, logs, feedback (auth, validation, pagination, figures)."""

from __future__ import annotations

import statistics
import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from llm.models import LLMRequestLog, UserFeedback
from tests.read_api_data import NOW, make_logs, select

pytestmark = pytest.mark.django_db

READ_ENDPOINTS = [
    "/api/metrics/overview/",
    "/api/metrics/token-usage/",
    "/api/metrics/latency/",
    "/api/metrics/errors/",
    "/api/metrics/model-usage/",
    "/api/metrics/daily-stats/",
    "/api/metrics/timeseries/",
    "/api/logs/",
    "/api/logs/errors/",
    f"/api/logs/{uuid.uuid4()}/",
    "/api/feedback/",
    "/api/feedback/analytics/",
    "/api/export/csv/",
    "/api/export/json/",
    "/api/schema/",
]
FILTERED_ENDPOINTS = [path for path in READ_ENDPOINTS if "/logs/" not in path or path.endswith(("logs/", "errors/"))]
FILTERED_ENDPOINTS = [path for path in FILTERED_ENDPOINTS if path != "/api/schema/"]
WINDOW = {"start_date": (NOW - timedelta(days=50)).isoformat(), "end_date": NOW.isoformat()}


@pytest.fixture
def logs(model_prices):
    return make_logs()


@pytest.mark.parametrize("path", READ_ENDPOINTS)
def test_every_endpoint_needs_auth(anonymous_client, path):
    response = anonymous_client.get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_feedback_post_needs_auth(anonymous_client):
    assert anonymous_client.post("/api/feedback/", {}, format="json").status_code == 401


@pytest.mark.parametrize("path", FILTERED_ENDPOINTS)
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start_date": "last tuesday"}, "start_date"),
        ({"end_date": "2026-02-30"}, "end_date"),
        ({"start_date": "2026-11-10", "end_date": "2026-11-09"}, "end_date"),
        ({"status": "pending"}, "status"),
    ],
)
def test_bad_filters_get_400_naming_the_field(api_client, path, params, field):
    response = api_client.get(path, params)
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]


def test_overview_api_equals_recomputation(api_client, logs):
    rows = select(logs, start=NOW - timedelta(days=50), end=NOW, model="openai/gpt-oss-20b")
    body = api_client.get("/api/metrics/overview/", {**WINDOW, "model": "openai/gpt-oss-20b"}).json()
    latencies = [log.latency_ms for log in rows]
    assert body["total_requests"] == len(rows)
    # 50 days come from the roll-ups: their percentiles are within the documented bound.
    assert body["percentiles"] == "approximate (<=1 %)"
    assert body["p95_latency_ms"] == pytest.approx(float(np.percentile(latencies, 95)), rel=0.01)
    assert body["avg_latency_ms"] == pytest.approx(statistics.fmean(latencies))
    assert body["total_cost"] == pytest.approx(float(sum(log.cost_estimate for log in rows)), abs=1e-9)
    assert body["window_defaulted"] is False
    assert body["start"].startswith(str((NOW - timedelta(days=50)).date()))


def test_metrics_default_to_last_24_hours_and_say_so(api_client, db):
    LLMRequestLog.objects.create(model_name="m", timestamp=timezone.now() - timedelta(hours=2))
    LLMRequestLog.objects.create(model_name="m", timestamp=timezone.now() - timedelta(hours=30))
    body = api_client.get("/api/metrics/overview/").json()
    assert body["window_defaulted"] is True
    assert body["total_requests"] == 1


@pytest.mark.parametrize("group_by", ["hour", "day", "month"])
def test_token_usage_group_by(api_client, logs, group_by):
    body = api_client.get("/api/metrics/token-usage/", {**WINDOW, "group_by": group_by}).json()
    assert body["group_by"] == group_by
    assert sum(row["requests"] for row in body["results"]) == len(select(logs, start=NOW - timedelta(days=50)))
    assert sum(row["total_tokens"] for row in body["results"]) == sum(
        log.total_tokens for log in select(logs, start=NOW - timedelta(days=50))
    )


def test_unknown_group_by_is_400(api_client, db):
    response = api_client.get("/api/metrics/token-usage/", {"group_by": "week"})
    assert response.status_code == 400
    assert "group_by" in response.json()["fields"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/metrics/latency/",
        "/api/metrics/model-usage/",
        "/api/metrics/daily-stats/",
        "/api/metrics/errors/",
        "/api/metrics/timeseries/",
    ],
)
def test_metrics_answer_empty_windows_without_error(api_client, db, path):
    response = api_client.get(path, {"start_date": "2001-01-01", "end_date": "2001-01-02"})
    assert response.status_code == 200
    body = response.json()
    assert body.get("results", body.get("errors")) == []


def test_logs_pagination_and_order(api_client, logs):
    first = api_client.get("/api/logs/", {**WINDOW, "page_size": 100}).json()
    assert first["count"] == len(logs)
    assert first["previous"] is None and "page=2" in first["next"]
    stamps = [row["timestamp"] for row in first["results"]]
    assert stamps == sorted(stamps, reverse=True)
    last_page = -(-len(logs) // 100)
    last = api_client.get("/api/logs/", {**WINDOW, "page_size": 100, "page": last_page}).json()
    assert last["next"] is None and len(last["results"]) == len(logs) - 100 * (last_page - 1)
    assert api_client.get("/api/logs/", {**WINDOW, "page_size": 100, "page": last_page + 1}).status_code == 404


@pytest.mark.parametrize("page", ["0", "-1", "two", "1.5"])
def test_bad_page_is_400(api_client, db, page):
    response = api_client.get("/api/logs/", {"page": page})
    assert response.status_code == 400
    assert "page" in response.json()["fields"]


@pytest.mark.parametrize("page_size", ["501", "0", "many"])
def test_bad_page_size_is_400(api_client, db, page_size):
    response = api_client.get("/api/logs/", {"page_size": page_size})
    assert response.status_code == 400
    assert "page_size" in response.json()["fields"]


def test_logs_filters_and_search(api_client, logs):
    # Case folds for ASCII on both databases (SQLite's LIKE folds nothing else); non-ASCII as written.
    for search, needle in (("HELLO", "hello"), ("café", "café")):
        body = api_client.get("/api/logs/", {**WINDOW, "search": search, "status": "success", "page_size": 500}).json()
        expected = [log for log in logs if needle in log.prompt_text.lower() and not log.is_error]
        assert body["count"] == len(expected) > 0
        assert {row["request_id"] for row in body["results"]} == {str(log.request_id) for log in expected}

    errors = api_client.get("/api/logs/errors/", {**WINDOW, "page_size": 500, "user_id": "u-1"}).json()
    assert errors["count"] == len([log for log in logs if log.is_error and log.user_id == "u-1"])
    assert all(row["status"] == "error" for row in errors["results"])


def test_log_detail_with_feedback_and_404(api_client, logs):
    log = LLMRequestLog.objects.get(request_id=logs[0].request_id)
    UserFeedback.objects.create(request=log, rating="thumbs_down", comment="wrong answer")
    body = api_client.get(f"/api/logs/{log.request_id}/").json()
    assert body["request_id"] == str(log.request_id)
    assert body["prompt_text"] == log.prompt_text
    assert body["feedback"][0]["comment"] == "wrong answer"
    assert api_client.get(f"/api/logs/{uuid.uuid4()}/").status_code == 404
    assert api_client.get("/api/logs/not-a-uuid/").status_code == 404


def test_feedback_submit_list_and_analytics(api_client, logs):
    ratings = ["thumbs_up", "thumbs_up", "thumbs_down", "thumbs_up"]
    for log, rating in zip(logs, ratings, strict=False):
        response = api_client.post(
            "/api/feedback/", {"request_id": str(log.request_id), "rating": rating, "comment": "ok"}, format="json"
        )
        assert response.status_code == 201, response.content
        assert response.json()["rating"] == rating
    assert UserFeedback.objects.count() == 4

    listing = api_client.get("/api/feedback/", WINDOW).json()
    assert listing["count"] == 4
    analytics = api_client.get("/api/feedback/analytics/", WINDOW).json()
    assert (analytics["thumbs_up"], analytics["thumbs_down"], analytics["total"]) == (3, 1, 4)
    assert analytics["satisfaction_rate"] == pytest.approx(75.0)
    per_model = {}
    for log, rating in zip(logs, ratings, strict=False):
        per_model.setdefault(log.model_name, []).append(rating)
    for row in analytics["by_model"]:
        given = per_model[row["model"]]
        assert row["thumbs_up"] == given.count("thumbs_up")
        assert row["satisfaction_rate"] == pytest.approx(100 * given.count("thumbs_up") / len(given))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_id": None, "rating": "thumbs_up"}, "request_id"),
        ({"request_id": "nope", "rating": "thumbs_up"}, "request_id"),
        ({"request_id": str(uuid.UUID(int=1)), "rating": "thumbs_up"}, "request_id"),
        ({"rating": "meh"}, "rating"),
        ({"rating": "thumbs_up", "comment": "x" * 5001}, "comment"),
    ],
)
def test_bad_feedback_is_400_naming_the_field(api_client, logs, body, field):
    body = {"request_id": str(logs[0].request_id), **body}
    body = {key: value for key, value in body.items() if value is not None}
    response = api_client.post("/api/feedback/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert UserFeedback.objects.count() == 0


def test_empty_feedback_analytics(api_client, db):
    body = api_client.get("/api/feedback/analytics/").json()
    assert body.pop("window_defaulted") is True and body.pop("start") and body.pop("end")
    assert body == {"thumbs_up": 0, "thumbs_down": 0, "total": 0, "satisfaction_rate": None, "by_model": []}
