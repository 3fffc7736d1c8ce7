"""Every answer carries the Content-Security-Policy (no inline script or style, this site's files
only) next to the headers that were already right; no template has inline script, style or event
handlers; GET /health/ answers without auth and says nothing more than ok."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from tests.factories import make_log

pytestmark = pytest.mark.django_db

TEMPLATES = Path(settings.BASE_DIR) / "templates"


def policy(response) -> dict[str, list[str]]:
    directives = [part.split() for part in response["Content-Security-Policy"].split(";")]
    return {words[0]: words[1:] for words in directives if words}


@pytest.fixture
def pages() -> list[str]:
    log = make_log(trace_id="ab" * 16, span_id="1" * 16)
    pages = ["/", "/analytics/", "/logs/", "/feedback/", "/alerts/", "/playground/", "/api/docs/"]
    return [*pages, f"/logs/{log.request_id}/", f"/traces/{'ab' * 16}/", "/no-such-page/", "/admin/"]


def test_every_page_and_answer_sends_the_policy(logged_in_client, api_client, pages):
    answers = [logged_in_client.get(path, follow=True) for path in pages]
    answers += [Client().get("/accounts/login/"), Client().get("/health/")]
    answers += [api_client.get(path) for path in ("/api/logs/", "/api/nothing/", "/metrics")]
    for response in answers:
        assert policy(response) == {
            "default-src": ["'self'"],
            "script-src": ["'self'"],
            "style-src": ["'self'"],
            "img-src": ["'self'", "data:"],
            "font-src": ["'self'"],
            "connect-src": ["'self'"],
            "object-src": ["'none'"],
            "base-uri": ["'self'"],
            "form-action": ["'self'"],
            "frame-ancestors": ["'none'"],
        }, response.request["PATH_INFO"]
        # The rest as it was.
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["X-Frame-Options"] == "DENY"
        assert response["Referrer-Policy"] == "same-origin"


def test_the_swagger_ui_script_is_a_file_of_its_own(logged_in_client):
    page = logged_in_client.get("/api/docs/").content.decode()
    sources = re.findall(r'<script src="([^"]+)"></script>', page)
    assert len(sources) == 2 and sources[1] == "/api/docs/?script="
    script = logged_in_client.get(sources[1])
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle(" in script.content and b'"/api/schema/"' in script.content


@pytest.mark.parametrize("template", sorted(TEMPLATES.rglob("*.html")), ids=lambda path: path.name)
def test_no_template_has_inline_script_or_style(template):
    text = template.read_text()
    # json_script blocks (type="application/json") are data, never executed: CSP does not apply.
    scripts = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", text)
    assert scripts == []
    assert "<style" not in text
    assert re.findall(r"\sstyle=", text) == []
    assert re.findall(r"\son[a-z]+=", text) == []
    assert "javascript:" not in text


def test_production_keeps_hsts_and_secure_cookies():
    # What DEBUG=False sets (tests/test_settings.py builds both); here only that CSP did not change it.
    assert settings.X_FRAME_OPTIONS == "DENY" and settings.SECURE_CONTENT_TYPE_NOSNIFF
    assert r"^health/?$" in settings.SECURE_REDIRECT_EXEMPT


@pytest.mark.parametrize("path", ["/health/", "/health"])
def test_health_answers_ok_without_auth_and_without_data(path, django_assert_max_num_queries):
    make_log()
    with django_assert_max_num_queries(1):
        response = Client().get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]
    assert Client().post(path).status_code == 405
