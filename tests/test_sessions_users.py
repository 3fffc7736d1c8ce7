"""Sessions and users: the lists (API and pages), a session read as a conversation, a user's page,
every figure against a recomputation over the same rows; the shared filters' new members
(session_id, source, error_type, tag) on logs, metrics and export; ids taken from tags."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import timedelta

import pytest

from llm.models import LLMRequestLog, UserFeedback
from tests.breakdown_data import make_session_logs, pick
from tests.read_api_data import NOW

pytestmark = pytest.mark.django_db

WINDOW = {"start_date": (NOW - timedelta(days=10)).isoformat(), "end_date": (NOW + timedelta(seconds=1)).isoformat()}


@pytest.fixture
def logs(db):
    return make_session_logs()


def all_pages(client, path: str, params: dict) -> list[dict]:
    rows, page = [], 1
    while True:
        answer = client.get(path, {**params, "page": page, "page_size": 40}).json()
        rows.extend(answer["results"])
        if not answer["next"]:
            return rows
        page += 1


def per(logs, field: str) -> dict[str, list]:
    grouped = defaultdict(list)
    for log in logs:
        if getattr(log, field):
            grouped[getattr(log, field)].append(log)
    return grouped


def assert_usage(row: dict, members: list) -> None:
    assert row["requests"] == len(members)
    assert row["errors"] == sum(log.is_error for log in members)
    assert row["prompt_tokens"] == sum(log.prompt_tokens for log in members)
    assert row["completion_tokens"] == sum(log.completion_tokens for log in members)
    assert row["total_tokens"] == sum(log.total_tokens for log in members)
    assert row["cost"] == pytest.approx(float(sum(log.cost_estimate for log in members)), abs=1e-9)


@pytest.mark.parametrize("filters", [{}, {"user_id": "u-3"}, {"tag": "feature:chat"}, {"model": "openai/gpt-oss-20b"}])
def test_session_list_equals_a_recomputation_latest_first(api_client, logs, filters):
    rows = all_pages(api_client, "/api/sessions/", {**WINDOW, **filters})
    fields = {"user_id": filters["user_id"]} if "user_id" in filters else {}
    if "model" in filters:
        fields["model_name"] = filters["model"]
    expected = per(pick(logs, tags=tuple(filter(None, [filters.get("tag")])), **fields), "session_id")
    assert {row["session_id"] for row in rows} == set(expected) and len(rows) == len(expected) > 0
    assert [row["last_call"] for row in rows] == sorted((row["last_call"] for row in rows), reverse=True)
    for row in rows:
        members = expected[row["session_id"]]
        assert_usage(row, members)
        assert row["first_call"] == min(log.timestamp for log in members).isoformat().replace("+00:00", "Z")
        assert row["last_call"] == max(log.timestamp for log in members).isoformat().replace("+00:00", "Z")
        assert row["users"] == len({log.user_id for log in members if log.user_id})
        assert row["models"] == len({log.model_name for log in members})
        assert row["user_id"] in {log.user_id for log in members}
        assert row["model"] in {log.model_name for log in members}


def test_session_list_by_cost(api_client, logs):
    rows = all_pages(api_client, "/api/sessions/", {**WINDOW, "order_by": "cost"})
    costs = [row["cost"] for row in rows]
    assert costs == sorted(costs, reverse=True)
    expected = per(logs, "session_id")
    top = max(expected, key=lambda key: sum(log.cost_estimate for log in expected[key]))
    assert rows[0]["session_id"] == top


def test_session_detail_is_the_conversation_in_order_with_running_cost(api_client, logs):
    session_id = max(per(logs, "session_id").items(), key=lambda item: len(item[1]))[0]
    calls = sorted(per(logs, "session_id")[session_id], key=lambda log: (log.timestamp, log.pk))
    stored = LLMRequestLog.objects.get(request_id=calls[1].request_id)
    UserFeedback.objects.rate(stored, "alice", UserFeedback.Rating.THUMBS_DOWN)
    UserFeedback.objects.rate(stored, "bob", UserFeedback.Rating.THUMBS_UP)
    answer = api_client.get(f"/api/sessions/{session_id}/").json()
    assert answer["session_id"] == session_id and answer["truncated"] is False
    assert [call["request_id"] for call in answer["calls"]] == [str(log.request_id) for log in calls]
    running = 0.0
    for call, log in zip(answer["calls"], calls, strict=True):
        running += float(log.cost_estimate)
        assert call["running_cost"] == pytest.approx(running, abs=1e-9)
        assert (call["prompt_text"], call["response_text"]) == (log.prompt_text, log.response_text)
    assert (answer["calls"][1]["thumbs_up"], answer["calls"][1]["thumbs_down"]) == (1, 1)
    assert (answer["calls"][0]["thumbs_up"], answer["calls"][0]["thumbs_down"]) == (0, 0)
    # The turn's fields and their order (derived from the log's list in llm/serializers.py).
    assert list(answer["calls"][0]) == [
        *["request_id", "timestamp", "model_name", "user_id", "trace_id", "span_id", "parent_span_id"],
        *["prompt_text", "response_text", "prompt_tokens", "completion_tokens", "total_tokens", "latency_ms"],
        *["cost_estimate", "running_cost", "status", "error_type", "error_message", "tags", "thumbs_up", "thumbs_down"],
    ]


def test_unknown_session_and_user_are_404(api_client, logs):
    assert api_client.get("/api/sessions/nope/").status_code == 404
    assert api_client.get("/api/users/nobody/", WINDOW).status_code == 404
    assert api_client.get("/api/sessions/" + "x" * 201 + "/").status_code == 400


def test_user_list_and_detail_equal_a_recomputation(api_client, logs):
    rows = all_pages(api_client, "/api/users/", WINDOW)
    expected = per(logs, "user_id")
    assert {row["user_id"] for row in rows} == set(expected)
    assert [row["cost"] for row in rows] == sorted((row["cost"] for row in rows), reverse=True)
    for row in rows:
        assert_usage(row, expected[row["user_id"]])
        assert row["sessions"] == len({log.session_id for log in expected[row["user_id"]] if log.session_id})
    detail = api_client.get("/api/users/u-2/", WINDOW).json()
    members = expected["u-2"]
    assert detail["user_id"] == "u-2"
    assert detail["totals"]["total_requests"] == len(members)
    assert detail["totals"]["total_cost"] == pytest.approx(float(sum(log.cost_estimate for log in members)), abs=1e-9)
    assert sum(row["requests"] for row in detail["series"]) == len(members)
    assert {row["model"] for row in detail["models"]} == {log.model_name for log in members}
    assert {row["session_id"] for row in detail["sessions"]} <= {log.session_id for log in members}
    by_requests = all_pages(api_client, "/api/users/", {**WINDOW, "order_by": "requests"})
    assert [row["requests"] for row in by_requests] == sorted((row["requests"] for row in by_requests), reverse=True)


# The shared filters' new members, on the logs list, a metric and the export.
TAG_CASES = [
    (["feature:summarize"], {"tags": ("feature:summarize",)}),
    (["env"], {"tags": ("env",)}),
    (["feature:chat", "env:prod"], {"tags": ("feature:chat", "env:prod")}),
    (["a.b__c:odd key"], {"tags": ("a.b__c:odd key",)}),
    (["feature:nothing"], {"tags": ("feature:nothing",)}),
]


@pytest.mark.parametrize(("tags", "expected"), TAG_CASES)
def test_tag_filter_semantics_on_logs_metrics_and_export(api_client, logs, tags, expected):
    wanted = pick(logs, tags=expected["tags"])
    params = {**WINDOW, "tag": tags, "page_size": 500}
    listed = api_client.get("/api/logs/", params).json()
    assert {row["request_id"] for row in listed["results"]} == {str(log.request_id) for log in wanted}
    overview = api_client.get("/api/metrics/overview/", {**WINDOW, "tag": tags}).json()
    assert overview["total_requests"] == len(wanted)
    assert overview["percentiles"] == "exact"
    exported = api_client.get("/api/export/csv/", {**WINDOW, "tag": tags})
    lines = list(csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode())))
    assert len(lines) == len(wanted)


@pytest.mark.parametrize(
    "filters",
    [{"session_id": "s-002"}, {"source": "otlp"}, {"error_type": "timeout"}, {"source": "api", "user_id": "u-1"}],
)
def test_session_source_and_error_type_filters(api_client, logs, filters):
    names = {"session_id": "session_id", "source": "source", "error_type": "error_type", "user_id": "user_id"}
    wanted = pick(logs, **{names[name]: value for name, value in filters.items()})
    assert wanted
    overview = api_client.get("/api/metrics/overview/", {**WINDOW, **filters}).json()
    assert overview["total_requests"] == len(wanted)
    assert overview["total_cost"] == pytest.approx(float(sum(log.cost_estimate for log in wanted)), abs=1e-9)
    series = api_client.get("/api/metrics/timeseries/", {**WINDOW, **filters, "group_by": "day"}).json()
    assert sum(row["requests"] for row in series["results"]) == len(wanted)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tag": "feature:"}, "tag"),
        ({"tag": ":x"}, "tag"),
        ({"tag": "k" * 101}, "tag"),
        ({"tag": "a\x00"}, "tag"),
        ({"tag": [f"k{index}" for index in range(11)]}, "tag"),
        ({"source": "fax"}, "source"),
        ({"error_type": "oops"}, "error_type"),
    ],
)
def test_bad_new_filters_are_a_400_naming_them(api_client, db, params, field):
    for path in ("/api/logs/", "/api/metrics/overview/", "/api/sessions/", "/api/users/"):
        response = api_client.get(path, params)
        assert response.status_code == 400, path
        assert list(response.json()["fields"]) == [field]


def test_events_take_user_and_session_from_tags_when_empty(api_client, db):
    events = [
        {"model": "m", "tags": {"user_id": "tag-user", "session_id": "tag-session"}},
        {"model": "m", "user_id": "own", "tags": {"user_id": "tag-user"}},
    ]
    response = api_client.post("/api/events/", {"events": events}, format="json")
    assert response.status_code == 201, response.content
    first, second = LLMRequestLog.objects.order_by("user_id")
    assert (first.user_id, second.user_id) == ("own", "tag-user")
    assert second.session_id == "tag-session" and second.tags["user_id"] == "tag-user"  # the tag is kept
    assert first.session_id == ""


# Pages


def test_pages_show_sessions_users_and_the_breakdown(logged_in_client, logs):
    session_id = logs[0].session_id or "s-002"
    sessions = logged_in_client.get("/sessions/", {"range": "30d"})
    assert sessions.status_code == 200
    assert f'href="/sessions/{session_id}/"'.encode() in sessions.content
    detail = logged_in_client.get(f"/sessions/{session_id}/")
    assert detail.status_code == 200
    calls = LLMRequestLog.objects.filter(session_id=session_id).order_by("timestamp", "id")
    text = detail.content.decode()
    positions = [text.index(log.prompt_text + "<") for log in calls]
    assert positions == sorted(positions)  # turns in time order
    user = logged_in_client.get("/users/u-2/", {"range": "30d"})
    assert user.status_code == 200 and b"chart-user-usage" in user.content
    analytics = logged_in_client.get("/analytics/", {"range": "30d", "by": "tag:feature", "order_by": "cost"})
    assert analytics.status_code == 200
    assert b'<option value="tag:feature" selected>' in analytics.content
    for feature in ("summarize", "chat", "classify", "extract"):
        assert f'<th scope="row">{feature}</th>'.encode() in analytics.content
    assert logged_in_client.get("/sessions/nope/").status_code == 404
    assert logged_in_client.get("/users/a%00b/").status_code == 404
    bad = logged_in_client.get("/analytics/", {"range": "30d", "by": "colour", "tag": "x:"})
    assert bad.status_code == 200 and b"<strong>by</strong>" in bad.content and b"<strong>tag</strong>" in bad.content


def test_sample_data_has_sessions_tags_and_agent_traces(db):
    from django.core.management import call_command

    call_command("generate_sample_data", "--count", "600", "--seed", "4", "--days", "3", stdout=io.StringIO())
    rows = list(LLMRequestLog.objects.order_by("timestamp", "id"))
    assert len(rows) == 600
    sessions = per(rows, "session_id")
    sizes = [len(calls) for calls in sessions.values()]
    assert max(sizes) <= 12 and sum(size >= 2 for size in sizes) >= 0.8 * len(sizes)
    for calls in sessions.values():
        assert len({log.user_id for log in calls}) == 1  # one user per conversation
        assert len({(log.tags["feature"], log.tags["env"]) for log in calls}) == 1
        stamps = [log.timestamp for log in calls]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert {log.tags["feature"] for log in rows} >= {"summarize", "chat", "classify", "extract"}
    assert {log.tags["env"] for log in rows} == {"prod", "staging"}
    children = [log for log in rows if log.parent_span_id]
    assert children
    roots = {log.span_id: log for log in rows if log.trace_id and not log.parent_span_id}
    for child in children:
        root = roots[child.parent_span_id]
        assert (child.trace_id, child.session_id) == (root.trace_id, root.session_id)
        assert child.timestamp > root.timestamp
