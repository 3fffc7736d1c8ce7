"""GET /api/schema/ is a valid OpenAPI 3 document of every endpoint; /api/docs/ serves Swagger UI locally."""

from __future__ import annotations

import pytest
import yaml
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
    assert anonymous_client.get("/api/docs/").status_code == 302
    page = logged_in_client.get("/api/docs/").content.decode()
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page
    assert "https://" not in page and "http://" not in page
