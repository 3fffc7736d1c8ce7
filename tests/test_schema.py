"""GET /api/schema/ is a valid OpenAPI 3 document of every endpoint; /api/docs/ serves Swagger UI locally
(drf-spectacular-sidecar's files through our static files)."""

from __future__ import annotations

import re

import pytest
import yaml
from django.contrib.staticfiles import finders
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db


def test_schema_validates_as_openapi_3(api_client):
    response = api_client.get("/api/schema/")
    assert response.status_code == 200
    document = yaml.safe_load(response.content)
    validate(document)
    assert document["openapi"].startswith("3.")
    for path in [
        "/api/llm/prompt/",
        "/api/metrics/overview/",
        "/api/metrics/daily-stats/",
        "/api/logs/{request_id}/",
        "/api/feedback/analytics/",
        "/api/export/csv/",
        "/api/alerts/rules/",
        "/api/events/",
    ]:
        assert path in document["paths"], path
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_docs_page_uses_no_cdn(logged_in_client, anonymous_client):
    response = anonymous_client.get("/api/docs/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/api/docs/"
    page = logged_in_client.get("/api/docs/").content.decode()
    scripts = re.findall(r'<script src="([^"]+)"', page)
    # Swagger UI, then its start-up script from this view (?script: no inline script, for the CSP).
    assert scripts == ["/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js", "/api/docs/?script="]
    scripts = scripts[:1]
    assert '<link rel="stylesheet" href="/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css">' in page
    assert "https://" not in page and "http://" not in page
    # The files are there to serve (a missing app in INSTALLED_APPS would 404 them).
    for path in [*scripts, "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css"]:
        assert finders.find(path.removeprefix("/static/")), path


def test_docs_page_points_swagger_ui_at_the_schema(logged_in_client):
    page = logged_in_client.get("/api/docs/?script=").content.decode()
    assert 'url: "/api/schema/"' in page
    # drf-spectacular's script sends the CSRF token with "Try it out" on unsafe methods.
    assert 'request.headers["X-CSRFTOKEN"]' in page


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def test_every_operation_documents_its_errors_with_one_shape(api_client):
    document = api_client.get("/api/schema/", {"format": "json"}).json()
    error = {"$ref": "#/components/schemas/Error"}
    unavailable = document["components"]["responses"]["DatabaseUnavailable"]
    assert unavailable["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert unavailable["content"]["application/json"]["schema"] == error
    # `missing` and `role`: a 403 for a missing right (llm/permissions.py).
    assert set(document["components"]["schemas"]["Error"]["properties"]) == {"error", "fields", "missing", "role"}
    checked = 0
    for name, operation in operations(document):
        responses = operation["responses"]
        assert "401" in responses, name
        assert responses["401"]["content"]["application/json"]["schema"] == error, name
        # A caller without the operation's right; on a POST, PUT, PATCH or DELETE also a session without its CSRF token.
        assert "403" in responses, name
        if "{" in name:
            assert "404" in responses, name
        if "requestBody" in operation:
            assert {"400", "415"} <= set(responses), name
        if name.startswith("GET "):
            assert "400" in responses, name  # an unknown query parameter
        if name != "POST /api/llm/prompt/":  # its 503 is also the provider's (no key configured)
            assert responses["503"] == {"$ref": "#/components/responses/DatabaseUnavailable"}, name
        for code, response in responses.items():
            if code >= "400" and "$ref" not in response:
                assert response["content"]["application/json"]["schema"] != {}, (name, code)
        checked += 1
    assert checked >= 25


def test_the_events_body_is_json_only_one_event_or_a_batch(api_client):
    from llm.events import MAX_EVENTS_PER_BATCH

    document = api_client.get("/api/schema/", {"format": "json"}).json()
    operation = document["paths"]["/api/events/"]["post"]
    assert list(operation["requestBody"]["content"]) == ["application/json"]  # a form answers 415
    assert {"413", "415"} <= set(operation["responses"])
    batch = document["components"]["schemas"]["EventBatch"]["properties"]["events"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_EVENTS_PER_BATCH)
    response = api_client.post("/api/events/", {"model": "m"})  # multipart
    assert response.status_code == 415


def test_an_empty_error_type_is_a_documented_answer(api_client):
    document = api_client.get("/api/schema/", {"format": "json"}).json()
    schemas = document["components"]["schemas"]
    for name in ("Log", "TraceCall"):
        error_type = schemas[name]["properties"]["error_type"]
        choices = [schemas[ref["$ref"].rsplit("/", 1)[1]]["enum"] for ref in error_type["oneOf"]]
        assert "" in sum(choices, []), name
