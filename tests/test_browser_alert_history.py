"""A rule's history page and the mute form in a real headless Chromium, at desktop width and 390 px."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from llm.models import AlertLog
from tests.factories import make_alert, make_rule

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("width", [1280, 390])
def test_history_page_and_mute_from_it(width, page_for, live_server, settings, screenshots):
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    rule = make_rule(name="p95 latency above 10 s", email_recipients="oncall@example.com")
    now = timezone.now()
    fired = make_alert(rule, triggered_at=now - timedelta(hours=1), message="p95 latency 12,000 ms")
    fired.record_delivery({"email": {"status": "sent", "recipients": ["oncall@example.com"]}})
    resolved = make_alert(rule, triggered_at=now - timedelta(minutes=5), kind=AlertLog.Kind.RESOLVED, message="ok")
    resolved.record_delivery({"email": {"status": "error", "error": "SMTPServerDisconnected: gone"}})

    page = page_for(width)
    page.goto(f"{live_server.url}/alerts/")
    page.click(f"tr[data-rule='{rule.pk}'] th a")
    page.wait_for_url(f"{live_server.url}/alerts/{rule.pk}/")
    assert page.locator("h1").inner_text() == "p95 latency above 10 s"
    assert page.locator("tr.event").evaluate_all("rows => rows.map(row => row.dataset.kind)") == ["resolved", "fired"]
    assert "SMTPServerDisconnected: gone" in page.locator("tr[data-kind='resolved'] td.delivery").inner_text()
    # Nothing sticks out of the page sideways (the timeline scrolls inside its own box).
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    page.screenshot(path=screenshots / f"alert-history-{width}.png", full_page=True)

    page.select_option(".rule-summary select[name=minutes]", "60")
    page.fill(".rule-summary input[name=reason]", "deploy in progress")
    page.click(".rule-summary button:has-text('Mute')")
    page.wait_for_url(f"{live_server.url}/alerts/{rule.pk}/")
    assert "muted" in page.locator(".silence-state").inner_text()
    assert page.locator("tr.event").first.get_attribute("data-kind") == "muted"
    assert "deploy in progress" in page.locator("tr.event").first.inner_text()
    assert rule.active_silence().reason == "deploy in progress"

    page.click(".rule-summary button:has-text('Unmute')")
    page.wait_for_url(f"{live_server.url}/alerts/{rule.pk}/")
    assert page.locator(".silence-state").inner_text().strip() == "not muted"
    assert page.locator("tr.event").first.get_attribute("data-kind") == "unmuted"
    assert page.problems == []
