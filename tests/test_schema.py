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
