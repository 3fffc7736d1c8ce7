"""/api/docs/ in a real headless Chromium: Swagger UI from drf-spectacular-sidecar's files, served
by the app itself, draws the schema and its answers' fields; nothing is fetched from elsewhere."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_swagger_ui_draws_the_schema_from_local_files(page_for, live_server):
    page = page_for()
    hosts = []
    page.on("request", lambda request: hosts.append(urlsplit(request.url).netloc))
    page.goto(f"{live_server.url}/api/docs/")
    overview = page.locator(".opblock-summary", has_text="/api/metrics/overview/").first
    overview.wait_for()
    overview.click()
    # The answer's fields, from the response serializer, in the example Swagger UI derives from it.
    page.get_by_text('"total_requests"', exact=False).first.wait_for()
    assert set(hosts) == {urlsplit(live_server.url).netloc}
    assert page.problems == []


def test_anonymous_visitors_are_sent_to_log_in(page_for, live_server):
    page = page_for(log_in=False)
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_url(f"{live_server.url}/accounts/login/?next=/api/docs/")
    assert page.locator("#id_username").is_visible()
