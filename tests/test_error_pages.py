"""No request gets Django's technical pages, DEBUG or not: JSON errors under /api/, /v1/ and
/metrics, plain friendly 404/400/500 pages elsewhere; a 500's traceback is still logged."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

# Phrases of Django's technical 404 and 500 pages.
TECHNICAL = ("Using the URLconf", "Traceback", "You're seeing this error because you have", "Request Method:")


def assert_not_technical(response) -> None:
    body = response.content.decode()
    assert not any(phrase in body for phrase in TECHNICAL), body[:500]


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/api/nothing-here/", 404),
        ("get", "/api/", 404),
        ("post", "/api/logs/not-a-uuid/", 404),
        ("get", "/v1/metrics", 404),
        ("get", "/metrics/extra", 404),
        ("get", "/v1/traces", 405),
        ("post", "/metrics", 405),
        ("put", "/api/logs/", 405),
        ("delete", "/api/events", 405),
    ],
)
def test_api_errors_are_json(api_client, debug, method, path, status):
    response = getattr(api_client, method)(path)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    assert_not_technical(response)
    if status == 405:
        assert method.upper() in body["error"]
        assert response.has_header("Allow")


def test_unknown_api_path_names_itself(api_client, debug):
    body = api_client.get("/api/metrics/overveiw/").json()
    assert body["error"] == "No API endpoint at /api/metrics/overveiw/. The endpoints are listed at /api/schema/."


@pytest.mark.urls("tests.error_urls")
def test_api_exception_is_json_500_and_logged(api_client, debug, caplog):
    api_client.raise_request_exception = False
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = api_client.get("/api/failing/")
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error. The traceback is in the server log."}
    assert_not_technical(response)
    logged = [record for record in caplog.records if record.exc_info]
    assert logged and "the view failed on purpose" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("path", ["/no-such-page/", f"/logs/{'0' * 8}-0000-0000-0000-{'0' * 12}/", "/traces/not-hex/"])
def test_page_404_is_the_friendly_page(logged_in_client, debug, path):
    response = logged_in_client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    body = response.content.decode()
    assert "Page not found" in body and "Back to the overview" in body
    assert_not_technical(response)


def test_anonymous_404_is_friendly_too(debug):
    response = Client().get("/nothing/here/")
    assert response.status_code == 404 and "Page not found" in response.content.decode()
    assert_not_technical(response)


@pytest.mark.urls("tests.error_urls")
def test_page_exception_is_the_friendly_500_and_logged(logged_in_client, debug, caplog):
    logged_in_client.raise_request_exception = False
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = logged_in_client.get("/failing/")
    assert response.status_code == 500
    assert "Something went wrong" in response.content.decode()
    assert_not_technical(response)
    assert any(record.exc_info and "on purpose" in str(record.exc_info[1]) for record in caplog.records)


def test_bad_host_gets_a_plain_400(logged_in_client, debug):
    # DisallowedHost, a SuspiciousOperation: with DEBUG Django answers it with its technical page.
    page = logged_in_client.get("/", HTTP_HOST="bad host")
    assert page.status_code == 400 and "Bad request" in page.content.decode()
    assert_not_technical(page)
    api = logged_in_client.get("/api/logs/", HTTP_HOST="bad host")
    assert api.status_code == 400 and api.json() == {"error": "Bad Request."}


def test_drf_answers_pass_untouched(api_client, debug):
    response = api_client.get("/api/logs/", {"status": "maybe"})
    assert response.status_code == 400
    assert "status" in response.json()["fields"]
    # The browsable API is HTML on purpose: not replaced.
    browsable = api_client.get("/api/logs/", HTTP_ACCEPT="text/html")
    assert browsable.status_code == 200 and browsable["Content-Type"].startswith("text/html")
