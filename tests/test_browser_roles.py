"""What a Viewer sees in a real headless Chromium: figures and calls, never their text; the
features of other roles shown disabled with the role they need; a direct visit answers 403."""

from __future__ import annotations

import pytest
from django.utils import timezone

from tests.factories import make_log, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PROMPT = "PROMPT-SECRET-5150"
RESPONSE = "RESPONSE-SECRET-6262"


def log_in(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "secret-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def test_a_viewer_sees_calls_without_text_and_what_needs_another_role(page_for, live_server):
    call = make_log(timestamp=timezone.now(), prompt_text=PROMPT, response_text=RESPONSE, prompt_tokens=4)
    make_user("vera", "Viewer")
    page = page_for(log_in=False)
    log_in(page, live_server, "vera")
    nav = page.locator("nav[aria-label=Main]")
    assert nav.get_by_role("link", name="Playground").count() == 0
    assert "Needs the Operator role." in nav.inner_text()

    page.goto(f"{live_server.url}/logs/")
    assert PROMPT not in page.content()
    assert page.is_disabled("input[name=search]") and page.is_disabled("#export-csv")
    assert "Needs the Analyst role." in page.inner_text("main")

    page.goto(f"{live_server.url}/logs/{call.request_id}/")
    html = page.content()
    assert PROMPT not in html and RESPONSE not in html
    assert page.inner_text("#text-hidden") == "Hidden: Needs the Analyst role."
    assert page.locator("form.feedback-form").count() == 0

    response = page.goto(f"{live_server.url}/playground/")
    assert response.status == 403
    assert "Needs the Operator role to send prompts" in page.inner_text("main")
    # The only problem the browser saw is that 403.
    assert [problem for problem in page.problems if "403" not in problem] == []


def test_an_analyst_reads_the_text_and_searches(page_for, live_server):
    call = make_log(timestamp=timezone.now(), prompt_text=PROMPT, response_text=RESPONSE, prompt_tokens=4)
    make_user("anna", "Analyst")
    page = page_for(log_in=False)
    log_in(page, live_server, "anna")
    page.goto(f"{live_server.url}/logs/")
    page.fill("input[name=search]", "SECRET-5150")
    page.press("input[name=search]", "Enter")
    page.wait_for_url("**search=SECRET-5150**")
    assert PROMPT in page.inner_text("main")
    page.goto(f"{live_server.url}/logs/{call.request_id}/")
    assert RESPONSE in page.inner_text("main")
    assert page.locator("form.feedback-form").count() == 1
    assert page.problems == []
