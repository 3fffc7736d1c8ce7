"""Alert rules in a real headless Chromium: the admin list at 1366 px, the page's rule buttons."""

from __future__ import annotations

import pytest
from django.utils import timezone

from llm.alerts import create_default_rules
from llm.models import AlertLog, AlertRule
from tests.factories import make_rule

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_rule_list_fits_a_1366_px_screen(chromium, live_server, django_user_model, settings, screenshots):
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    django_user_model.objects.create_superuser("root", "root@example.com", "secret-password")
    create_default_rules()
    make_rule(
        name="p95 latency of the 70B model above 8 s during business hours",
        metric_type=AlertRule.MetricType.LATENCY_P95,
        threshold=8000,
        time_window_minutes=1440,
        model_name="meta-llama/llama-4-scout-17b-16e-instruct",
        email_recipients="oncall@example.com",
        webhook_url="https://hooks.slack.com/services/T000/B000/XXXX",
        is_firing=True,
        last_value=12345.678,
        last_checked_at=timezone.now(),
    )
    context = chromium.new_context(viewport={"width": 1366, "height": 768})
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/admin/login/?next=/admin/llm/alertrule/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "secret-password")
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/llm/alertrule/")
        page.screenshot(path=screenshots / "admin-alertrule-1366.png")

        assert page.locator("#result_list tbody tr").count() == 6
        overflow = page.evaluate(
            """() => ({
                page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
                table: document.querySelector('#result_list').scrollWidth
                    - document.querySelector('#result_list').parentElement.clientWidth,
            })"""
        )
        assert overflow["page"] <= 0, overflow
        assert overflow["table"] <= 0, overflow
        # The last column (the state check_alerts wrote) is on screen, not cut off.
        last_header = page.locator("#result_list thead th").last.bounding_box()
        assert last_header["x"] + last_header["width"] <= 1366
    finally:
        context.close()


def test_send_test_and_check_now_from_the_alerts_page(page_for, live_server, smtp_server):
    rule = make_rule(
        name="Dead man's switch",
        metric_type=AlertRule.MetricType.NO_TRAFFIC,
        threshold=1,
        time_window_minutes=10,
        email_recipients="oncall@example.com",
    )
    page = page_for(1280)
    page.goto(f"{live_server.url}/alerts/")
    row = page.locator(f"tr[data-rule='{rule.pk}']")
    assert row.locator("td.channels").inner_text() == "email"

    row.locator("button:has-text('Send test')").click()
    page.wait_for_url(f"{live_server.url}/alerts/")
    assert page.locator(".messages").inner_text() == "Test notification for Dead man's switch: email sent."
    assert smtp_server.messages[0]["Subject"].startswith("[TEST] Dead man's switch")
    assert AlertLog.objects.count() == 0

    page.locator(f"tr[data-rule='{rule.pk}'] button:has-text('Check now')").click()
    page.wait_for_url(f"{live_server.url}/alerts/")
    messages = page.locator(".messages").inner_text()
    assert "Checked now:" in messages and "FIRING; notice: fired" in messages
    assert "(fired, Dead man's switch): email sent" in messages
    assert len(smtp_server.messages) == 2
    assert page.locator("tr.alert-log").count() == 1
    assert page.problems == []
