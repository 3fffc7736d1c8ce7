"""The OpenAPI document describes every answer: each success response names its fields, and
the fields it names are the ones the endpoint really answers."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml
from django.db import transaction
from django.urls import reverse
from rest_framework.test import APIClient

from llm.models import AlertLog, AlertRule, LLMRequestLog, UserFeedback
from llm.paging import EXACT_COUNT_UP_TO, SEARCH_EXACT_COUNT_UP_TO
from llm.urls import api_urlpatterns
from tests.factories import make_api_key
from tests.read_api_data import NOW, make_logs

pytestmark = pytest.mark.django_db

SUCCESS = ("200", "201")
# Answers that are files or streams, not JSON objects.
FILE_MEDIA_TYPES = {"text/csv", "text/event-stream", "application/octet-stream"}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="module")
def schema(django_db_setup, django_db_blocker) -> dict:
    """The document as /api/schema/ answers it, fetched once for the module: building it takes
    seconds, and no test here changes what it describes. The key that asks is rolled back."""
    with django_db_blocker.unblock(), transaction.atomic():
        _, raw_key = make_api_key("schema")
        response = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw_key}").get("/api/schema/")
        transaction.set_rollback(True)
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def properties_of(schema: dict, node: dict) -> dict:
    """The fields an answer of schema `node` holds; a list answers its items' fields."""
    node = resolve(schema, node)
    if node.get("type") == "array":
        node = resolve(schema, node["items"])
    merged = {}
    for part in node.get("allOf", []):
        merged |= properties_of(schema, part)
    return merged | node.get("properties", {})


def success_answers(schema: dict):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code in SUCCESS:
                if code in operation.get("responses", {}):
                    yield f"{method.upper()} {path} {code}", operation["responses"][code]


def test_every_success_answer_describes_its_fields(schema):
    undescribed = []
    answers = list(success_answers(schema))
    for name, response in answers:
        content = response.get("content")
        if not content:
            undescribed.append(name)
            continue
        for media_type, body in content.items():
            node = resolve(schema, body.get("schema", {}))
            is_file = media_type in FILE_MEDIA_TYPES or node.get("format") == "binary"
            if not is_file and not properties_of(schema, body.get("schema", {})):
                undescribed.append(f"{name} {media_type}")
    assert len(answers) >= 25
    assert undescribed == []


def test_the_walk_catches_an_answer_without_fields():
    document = {
        "components": {"schemas": {"Empty": {"type": "object"}}},
        "paths": {
            "/x/": {
                "get": {
                    "responses": {
                        "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Empty"}}}}
                    }
                }
            }
        },
    }
    name, response = next(success_answers(document))
    assert properties_of(document, response["content"]["application/json"]["schema"]) == {}


# Each GET endpoint with data behind it, compared key by key with its documented answer.
ANSWERED_GETS = [
    "api-metrics-overview",
    "api-metrics-token-usage",
    "api-metrics-latency",
    "api-metrics-errors",
    "api-metrics-model-usage",
    "api-metrics-daily-stats",
    "api-metrics-timeseries",
    "api-logs",
    "api-logs-errors",
    "api-log",
    "api-feedback",
    "api-feedback-analytics",
    "api-alert-rules",
    "api-alert-rule",
    "api-alert-logs",
    "api-trace",
    "api-metrics-breakdown",
    "api-sessions",
    "api-session",
    "api-users",
    "api-user",
]
# Query parameters an endpoint needs besides the window.
REQUIRED_QUERY = {"api-metrics-breakdown": {"by": "user"}}


@pytest.fixture
def data(db):
    logs = make_logs(60, days=2)
    first = logs[0]
    LLMRequestLog.objects.filter(pk=first.pk).update(trace_id=TRACE_ID, span_id="a" * 16)
    LLMRequestLog.objects.filter(pk=first.pk).update(session_id="s-1", user_id="u-1")
    UserFeedback.objects.rate(first, "alice", UserFeedback.Rating.THUMBS_UP, "fine")
    rule = AlertRule.objects.create(name="errors", metric_type=AlertRule.MetricType.ERROR_RATE, threshold=5)
    AlertLog.objects.create(
        alert_rule=rule,
        message="fired",
        metric_value=9,
        threshold=5,
        window_start=NOW - timedelta(hours=1),
        window_end=NOW,
    )
    return {"request_id": first.request_id, "pk": rule.pk, "trace_id": TRACE_ID, "session_id": "s-1", "user_id": "u-1"}


def documented_keys(schema: dict, path: str) -> tuple[set[str], set[str]]:
    """The answer's own fields and, for a list in `results`, its rows' fields."""
    node = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    fields = properties_of(schema, node)
    rows = properties_of(schema, fields["results"]) if "results" in fields else set()
    return set(fields), set(rows)


@pytest.mark.parametrize("name", ANSWERED_GETS)
def test_each_answer_has_the_documented_fields(api_client, schema, data, name):
    pattern = next(pattern for pattern in api_urlpatterns if pattern.name == name)
    kwargs = {key: data[key] for key in pattern.pattern.converters}
    path = reverse(name, kwargs=kwargs)
    window = {"start_date": (NOW - timedelta(days=3)).isoformat(), "end_date": NOW.isoformat()}
    filtered = (not kwargs or name == "api-user") and name not in ("api-alert-rules", "api-alert-logs")
    query = {**(window if filtered else {}), **REQUIRED_QUERY.get(name, {})}
    response = api_client.get(path, query)
    assert response.status_code == 200, response.content
    answer = response.json()
    route = "/" + str(pattern.pattern).replace("<uuid:request_id>", "{request_id}").replace("<int:pk>", "{id}")
    route = route.replace("<str:trace_id>", "{trace_id}")
    route = route.replace("<path:session_id>", "{session_id}").replace("<path:user_id>", "{user_id}")
    fields, rows = documented_keys(schema, route)
    if isinstance(answer, list):  # an unpaginated list: the document gives its items' fields
        assert answer and set(answer[0]) == fields
        return
    assert set(answer) == fields
    if rows:
        assert answer["results"], "no row to compare"
        assert set(answer["results"][0]) == rows


def test_count_is_estimate_states_both_exact_limits(schema):
    # The logs list's `search` is counted exactly only up to SEARCH_EXACT_COUNT_UP_TO matches.
    answer = schema["paths"]["/api/logs/"]["get"]["responses"]["200"]["content"]["application/json"]
    description = properties_of(schema, answer["schema"])["count_is_estimate"]["description"]
    assert f"{EXACT_COUNT_UP_TO:,} rows" in description
    assert f"{SEARCH_EXACT_COUNT_UP_TO:,} matches with `search`" in description
    assert "SQLite" in description
