"""The issue-18 pages in a real headless Chromium, at desktop and phone width: the sessions list,
a session read as a conversation, a user's page and the analytics breakdown (axe's WCAG checks,
nothing sticking out sideways, charts drawn, no console error), and the questions they answer:
"cost per feature", "what did user-007 ask, and what did it cost"."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from llm.models import LLMRequestLog
from tests.factories import build_log, make_feedback
from tests.test_browser import canvas_has_pixels, wcag_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FEATURES = ["summarize", "chat", "classify"]


@pytest.fixture
def conversations(model_prices) -> list[LLMRequestLog]:
    """Six sessions of 3 to 8 calls, one user each (user-007 has two), tagged by feature."""
    now = timezone.now()
    logs = []
    for number in range(6):
        start = now - timedelta(hours=3 * number + 1)
        for turn in range(3 + number):
            failed = (number + turn) % 7 == 0
            logs.append(
                build_log(
                    timestamp=start + timedelta(minutes=2 * turn),
                    model_name="llama-3.1-8b-instant" if turn % 2 else "openai/gpt-oss-20b",
                    user_id="user-007" if number < 2 else f"user-{number:03d}",
                    session_id=f"conv-{number}",
                    prompt_text=f"Question {turn} of conversation {number}",
                    response_text="" if failed else f"Answer {turn} of conversation {number}",
                    prompt_tokens=100 + 10 * turn,
                    completion_tokens=0 if failed else 40 + turn,
                    latency_ms=300.0 + 50 * turn,
                    cost_estimate=Decimal("0.0001") * (1 + turn + number),
                    status="error" if failed else "success",
                    error_type="timeout" if failed else "",
                    tags={"feature": FEATURES[number % 3], "env": "prod"},
                )
            )
    LLMRequestLog.objects.bulk_create(logs)
    make_feedback(LLMRequestLog.objects.get(session_id="conv-0", prompt_text__startswith="Question 1 "), "thumbs_down")
    return logs


def sideways_overflow(page) -> list[str]:
    return page.evaluate(
        """() => [...document.querySelectorAll("body *")].filter((el) => {
            const box = el.getBoundingClientRect();
            return box.width && box.right > document.documentElement.clientWidth + 0.5 && !el.closest(".table-wrap");
        }).map((el) => el.tagName + "." + el.className)"""
    )


@pytest.mark.parametrize("width", [1280, 390])
def test_the_new_pages_load_cleanly(page_for, live_server, conversations, width, screenshots):
    page = page_for(width)
    pages = {
        "sessions": ("/sessions/?range=24h", None),
        "session": ("/sessions/conv-0/", None),
        "user": ("/users/user-007/?range=24h", "#chart-user-usage"),
        "breakdown": ("/analytics/?range=24h&by=tag:feature", "#chart-breakdown"),
    }
    inaccessible = {}
    for name, (path, chart) in pages.items():
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")
        assert page.locator("h1").first.is_visible()
        suffix = "" if width == 1280 else "-phone"
        page.screenshot(path=screenshots / f"{name}{suffix}.png", full_page=True)
        inaccessible[name] = wcag_violations(page)
        assert sideways_overflow(page) == [], name
        if chart:
            assert canvas_has_pixels(page, chart), name
    assert page.problems == []
    assert inaccessible == dict.fromkeys(pages, [])


def test_cost_per_feature_in_two_clicks_equals_the_api(page_for, live_server, conversations):
    page = page_for()
    page.goto(f"{live_server.url}/analytics/?range=24h")
    page.select_option("select[name=by]", "tag:feature")
    page.wait_for_url("**by=tag%3Afeature**")
    rows = page.locator(".breakdown-table tbody tr")
    shown = {rows.nth(i).locator("th").inner_text(): rows.nth(i).locator("td").nth(4).inner_text() for i in range(3)}
    expected = {
        feature: sum(log.cost_estimate for log in conversations if log.tags["feature"] == feature)
        for feature in FEATURES
    }
    assert shown == {feature: f"${float(cost):,.4f}" for feature, cost in expected.items()}
    assert page.problems == []


def test_what_user_007_asked_and_what_it_cost(page_for, live_server, conversations):
    page = page_for(390)
    page.goto(f"{live_server.url}/sessions/?range=24h")
    page.locator("a", has_text="user-007").first.click()
    page.wait_for_url("**/users/user-007/**")
    mine = [log for log in conversations if log.user_id == "user-007"]
    total = sum(log.cost_estimate for log in mine)
    assert f"${float(total):,.4f}" in page.locator("dl.facts").inner_text()
    page.locator("a", has_text="conv-1").first.click()
    page.wait_for_url("**/sessions/conv-1/")
    turns = page.locator(".turn")
    calls = sorted((log for log in mine if log.session_id == "conv-1"), key=lambda log: log.timestamp)
    assert turns.count() == len(calls)
    for index, log in enumerate(calls):
        assert log.prompt_text in turns.nth(index).locator(".turn-prompt").inner_text()
    running = sum(log.cost_estimate for log in calls)
    assert f"${float(running):,.4f}" in turns.nth(len(calls) - 1).locator(".running-cost").inner_text()
    assert page.problems == []
