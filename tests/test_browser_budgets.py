"""The overview's spend cards in a real Chromium: each budget's card and this month's forecast, at
desktop and phone widths, accessible and within the screen."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from llm.models import Budget
from tests.factories import make_logs
from tests.test_browser import wcag_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("width", [1280, 390])
def test_budget_cards_show_spend_percent_and_forecast(page_for, live_server, width, screenshots):
    now = timezone.now()
    make_logs(4, timestamp=lambda index: now - timedelta(minutes=index + 1), cost_estimate=Decimal("0.25"))
    Budget.objects.create(name="Team daily", period="day", amount_usd=Decimal("2"), hard_limit=True)
    Budget.objects.create(name="Chat", scope="tag", scope_value="feature:chat", amount_usd=Decimal("5"))
    page = page_for(width)
    page.goto(f"{live_server.url}/")
    page.wait_for_load_state("networkidle")
    card = page.locator("article.budget", has_text="Team daily")
    assert card.is_visible()
    assert "$1.0000" in card.inner_text() and "50.00% of $2.0000" in card.inner_text()
    assert card.locator("meter").get_attribute("value") == "50.00"
    assert page.locator("[data-key=forecast]").is_visible()
    page.screenshot(path=screenshots / f"overview-budgets-{width}.png", full_page=True)
    overflow = page.evaluate(
        """() => [...document.querySelectorAll(".spend *")].filter((el) => {
            const box = el.getBoundingClientRect();
            return box.width && box.right > document.documentElement.clientWidth + 0.5;
        }).map((el) => el.tagName + "." + el.className)"""
    )
    assert overflow == []
    assert wcag_violations(page) == []
    assert page.problems == []
