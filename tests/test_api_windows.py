"""One default window everywhere: with no dates every filtered endpoint covers the last 24 hours,
`hours=N` the last N, and every answer says which window it covers."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from llm.models import LLMRequestLog, UserFeedback
from llm.urls import api_urlpatterns

pytestmark = pytest.mark.django_db

AGES = [timedelta(hours=2), timedelta(hours=30), timedelta(days=10)]


def export_rows(response) -> list:
    text = b"".join(response.streaming_content).decode()
    if response["Content-Type"].startswith("text/csv"):
        return list(csv.DictReader(io.StringIO(text)))
    return json.loads(text)


def total(key: str):
    return lambda response: sum(row[key] for row in response.json()["results"])


# How many calls each filtered endpoint's answer counts. Every call fails and has one rating, so
# the errors-only list and the feedback endpoints count them all too.
COUNTERS = {
    "/api/metrics/overview/": lambda response: response.json()["total_requests"],
    "/api/metrics/token-usage/": total("requests"),
    "/api/metrics/latency/": total("requests"),
    "/api/metrics/errors/": lambda response: response.json()["total_errors"],
    "/api/metrics/model-usage/": total("requests"),
    "/api/metrics/daily-stats/": total("requests"),
    "/api/metrics/timeseries/": total("requests"),
    "/api/logs/": lambda response: response.json()["count"],
    "/api/logs/errors/": lambda response: response.json()["count"],
    "/api/feedback/": lambda response: response.json()["count"],
    "/api/feedback/analytics/": lambda response: response.json()["total"],
    "/api/export/csv/": lambda response: len(export_rows(response)),
    "/api/export/json/": lambda response: len(export_rows(response)),
    "/api/metrics/breakdown/": lambda response: sum(row["requests"] for row in response.json()["groups"]),
    "/api/sessions/": total("requests"),
    "/api/users/": total("requests"),
}
# Filtered too, with its own tests (tests/test_sessions_users.py): a path with the user's id.
FILTERED_DETAILS = {"/api/users/<path:user_id>/"}


@pytest.fixture
def calls(db):
    now = timezone.now()
    for age in AGES:
        log = LLMRequestLog.objects.create(
            model_name="m",
            user_id="u-1",
            session_id="s-1",
            timestamp=now - age,
            status="error",
            error_type="timeout",
            prompt_tokens=10,
            total_tokens=10,
            latency_ms=100.0,
            cost_estimate=Decimal("0.001"),
        )
        UserFeedback.objects.create(request=log, rating="thumbs_up")
    return now


def window_of(response) -> tuple[datetime, datetime, bool]:
    if response.has_header("X-Window-Start"):
        start, end, defaulted = (response[f"X-Window-{name}"] for name in ("Start", "End", "Defaulted"))
        return datetime.fromisoformat(start), datetime.fromisoformat(end), defaulted == "true"
    body = response.json()
    return datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"]), body["window_defaulted"]


def test_the_table_has_every_filtered_endpoint():
    filtered = {
        "/" + str(pattern.pattern)
        for pattern in api_urlpatterns
        if getattr(getattr(pattern.callback, "cls", None), "filtered", False)
    }
    assert filtered == set(COUNTERS) | FILTERED_DETAILS


@pytest.mark.parametrize("path", COUNTERS)
def test_no_dates_means_the_last_24_hours_and_the_answer_says_so(api_client, calls, path):
    response = api_client.get(path)
    assert response.status_code == 200, response.content
    assert COUNTERS[path](response) == 1
    start, end, defaulted = window_of(response)
    assert defaulted is True
    assert end - start == timedelta(hours=24)
    assert abs(end - timezone.now()) < timedelta(minutes=1)


@pytest.mark.parametrize("path", COUNTERS)
def test_hours_is_the_last_n_hours(api_client, calls, path):
    response = api_client.get(path, {"hours": "48"})
    assert response.status_code == 200, response.content
    assert COUNTERS[path](response) == 2
    start, end, defaulted = window_of(response)
    assert (end - start, defaulted) == (timedelta(hours=48), False)


@pytest.mark.parametrize("path", COUNTERS)
def test_one_bound_alone(api_client, calls, path):
    # start_date alone: from then until now.
    since = api_client.get(path, {"start_date": (calls - timedelta(days=3)).isoformat()})
    assert COUNTERS[path](since) == 2
    assert abs(window_of(since)[1] - timezone.now()) < timedelta(minutes=1)
    # end_date alone: the 24 hours before it (44 to 20 hours ago holds the 30-hour-old call only).
    before = api_client.get(path, {"end_date": (calls - timedelta(hours=20)).isoformat()})
    assert COUNTERS[path](before) == 1
    start, end, _ = window_of(before)
    assert end - start == timedelta(hours=24)
    # Both: exactly that window, every call.
    both = {"start_date": (calls - timedelta(days=11)).isoformat(), "end_date": calls.isoformat()}
    assert COUNTERS[path](api_client.get(path, both)) == 3


@pytest.mark.parametrize("path", COUNTERS)
@pytest.mark.parametrize(
    "params",
    [
        {"hours": "0"},
        {"hours": "8785"},
        {"hours": "two"},
        {"hours": "1.5"},
        {"hours": "24", "start_date": "2026-01-01"},
        {"hours": "24", "end_date": "2026-01-01"},
    ],
)
def test_bad_hours_is_400_naming_hours(api_client, db, path, params):
    response = api_client.get(path, params)
    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == ["hours"]


def test_start_date_alone_in_the_future_is_400(api_client, db):
    response = api_client.get("/api/logs/", {"start_date": (timezone.now() + timedelta(days=1)).isoformat()})
    assert response.status_code == 400
    assert "start_date" in response.json()["fields"]


def test_export_file_name_carries_the_default_window(api_client, db, settings):
    settings.TIME_ZONE = "UTC"
    response = api_client.get("/api/export/csv/")
    start, end, _ = window_of(response)
    expected = f"llm-logs_{start:%Y-%m-%dT%H%M}_to_{end:%Y-%m-%dT%H%M}.csv"
    assert response["Content-Disposition"] == f'attachment; filename="{expected}"'


def test_openapi_states_the_rule(api_client):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    for path in COUNTERS:
        operation = schema["paths"][path]["get"]
        assert "With no start_date, end_date or hours the answer covers the last 24 hours." in operation["description"]
        hours = next(p for p in operation["parameters"] if p["name"] == "hours")
        assert hours["schema"]["type"] == "integer"
