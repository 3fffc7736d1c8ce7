"""The login lockout in a real Chromium: after five wrong passwords the dashboard and admin login
forms say "Too many failed logins; try again in 15 minutes." and keep refusing, the right password too."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LOCKED = "Too many failed logins; try again in 15 minutes."


def test_the_lockout_message_shows_on_the_dashboard_and_admin_login(page_for, live_server):
    page = page_for(log_in=False)
    for attempt in range(5):
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", f"wrong-{attempt}")
        page.click("button[type=submit]")
        alert = page.get_by_role("alert")
        expected = LOCKED if attempt == 4 else "Your username and password didn't match. Please try again."
        assert alert.inner_text().strip() == expected
    page.fill("#id_username", "alice")
    page.fill("#id_password", "secret-password")
    page.click("button[type=submit]")
    assert page.get_by_role("alert").inner_text().strip() == LOCKED
    assert page.url == f"{live_server.url}/accounts/login/"

    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "secret-password")
    page.click("input[type=submit]")
    assert page.locator(".errornote").inner_text().strip() == LOCKED
    # Every refused answer was a 200 (wrong password) or a 429 (locked, which the console also
    # reports as a resource that failed to load), nothing else.
    statuses = {problem.split(":")[0] for problem in page.problems if not problem.startswith("Failed to load")}
    assert statuses == {"429"}
