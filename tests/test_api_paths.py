"""Every API path, with and without its trailing slash; unknown query parameters; the parameters a
400 lists are the ones the OpenAPI document gives."""

from __future__ import annotations

import re
import uuid

import pytest
from django.urls import URLPattern

from llm.models import LLMRequestLog
from llm.urls import api_urlpatterns

pytestmark = pytest.mark.django_db

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
REQUEST_ID = uuid.UUID(int=12)
# The values a route's converters get: an existing call, an unknown alert id.
PATH_VALUES = {
    "request_id": str(REQUEST_ID),
    "trace_id": TRACE_ID,
    "pk": "999",
    "session_id": "s-1",
    "user_id": "u-1",
}
# Not DRF views: /metrics answers Prometheus (its scraper may add parameters), /api/docs/ is a page.
NOT_CHECKED_FOR_PARAMETERS = {"metrics", "api-docs"}


def concrete(pattern: URLPattern) -> str:
    """The pattern's canonical path with real values in place of its converters."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda match: PATH_VALUES[match.group(1)], str(pattern.pattern))


def twin(path: str) -> str:
    return path[:-1] if path.endswith("/") else f"{path}/"


def get_endpoints() -> list[URLPattern]:
    return [
        pattern
        for pattern in api_urlpatterns
        if pattern.name not in NOT_CHECKED_FOR_PARAMETERS and hasattr(getattr(pattern.callback, "cls", None), "get")
    ]


@pytest.fixture
def call(db):
    return LLMRequestLog.objects.create(
        model_name="m", request_id=REQUEST_ID, trace_id=TRACE_ID, session_id="s-1", user_id="u-1"
    )


def test_the_table_covers_the_api():
    paths = {concrete(pattern) for pattern in api_urlpatterns}
    assert {"/api/events/", "/api/llm/prompt/", "/v1/traces", "/metrics", "/api/logs/", "/api/schema/"} <= paths
    assert len(get_endpoints()) >= 15


@pytest.mark.parametrize("pattern", api_urlpatterns, ids=lambda pattern: pattern.name)
@pytest.mark.parametrize("method", ["get", "post"])
def test_every_api_path_answers_the_same_with_and_without_its_slash(api_client, call, settings, pattern, method):
    settings.DEBUG = True  # as under `make run`, where APPEND_SLASH used to raise on a POST
    path = concrete(pattern)
    answers = []
    for url in (path, twin(path)):
        response = getattr(api_client, method)(url, {}, format="json") if method == "post" else api_client.get(url)
        assert response.status_code < 500, (url, response.content[:300])
        assert response.status_code not in (301, 302, 404) or pattern.name == "api-docs" or "999" in url, url
        answers.append((response.status_code, response.get("Content-Type")))
    assert answers[0] == answers[1], path


def test_both_forms_answer_the_same_body(api_client, call):
    window = {"start_date": "2026-01-01", "end_date": "2027-01-01"}
    assert api_client.get("/api/logs", window).json() == api_client.get("/api/logs/", window).json()
    assert api_client.get("/api/traces/" + TRACE_ID).json() == api_client.get(f"/api/traces/{TRACE_ID}/").json()


def test_a_post_without_its_slash_is_stored(api_client):
    response = api_client.post("/api/events", {"model": "m", "prompt_tokens": 3}, format="json")
    assert response.status_code == 201, response.content
    assert LLMRequestLog.objects.filter(model_name="m", prompt_tokens=3).count() == 1


def test_url_names_keep_the_canonical_form():
    from django.urls import reverse

    assert reverse("api-events") == "/api/events/"
    assert reverse("otlp-traces") == "/v1/traces"
    assert reverse("metrics") == "/metrics"


@pytest.mark.parametrize("pattern", get_endpoints(), ids=lambda pattern: pattern.name)
def test_unknown_query_parameters_are_400_naming_them(api_client, call, pattern):
    response = api_client.get(concrete(pattern), {"colour": "blue", "Hours": "2"})
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "Invalid input."
    assert set(body["fields"]) == {"colour", "Hours"}
    message = body["fields"]["colour"][0]
    assert message.startswith("Unknown parameter. Known: ") and "format" in message and "colour" not in message


def test_known_parameters_pass(api_client, call):
    params = {"format": "json", "page": "1", "page_size": "5", "search": "x", "hours": "3", "model": "m"}
    assert api_client.get("/api/logs/", params).status_code == 200
    assert api_client.get("/api/metrics/token-usage/", {"group_by": "day", "user_id": "u"}).status_code == 200
    assert api_client.get("/api/alerts/logs/", {"acknowledged": "true", "page_size": "2"}).status_code == 200


def test_a_post_is_not_refused_for_its_query_string(api_client, call):
    response = api_client.post("/api/feedback/?source=widget", {"request_id": str(REQUEST_ID), "rating": "thumbs_up"})
    assert response.status_code == 201, response.content


def test_known_parameters_are_the_documented_ones(api_client, call):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    checked = 0
    for pattern in get_endpoints():
        if pattern.name == "api-schema":
            continue  # not in its own document
        route = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern)).replace("{pk}", "{id}")
        documented = {p["name"] for p in schema["paths"][route]["get"].get("parameters", []) if p["in"] == "query"}
        message = api_client.get(concrete(pattern), {"colour": "blue"}).json()["fields"]["colour"][0]
        known = set(message.removeprefix("Unknown parameter. Known: ").removesuffix(".").split(", "))
        assert known == documented | {"format"}, route
        checked += 1
    assert checked >= 14
