"""The rule form in a real headless Chromium: the preview chart is drawn from the preview API,
shades the firing spans, and changes as the threshold is edited; saving creates the rule."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from llm.models import AlertLog, AlertRule, LLMRequestLog
from tests.factories import make_rule

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def spend_spikes() -> None:
    """Three calls of $3, far apart over the last two days; $0.01 calls every hour otherwise."""
    now = timezone.now()
    rows = [
        LLMRequestLog(timestamp=now - timedelta(hours=h), model_name="m", cost_estimate=Decimal("0.01"))
        for h in range(48)
    ]
    rows += [
        LLMRequestLog(timestamp=now - timedelta(hours=h, minutes=30), model_name="m", cost_estimate=Decimal("3"))
        for h in (40, 25, 6)
    ]
    LLMRequestLog.objects.bulk_create(rows)


def preview_state(page) -> tuple[str, str]:
    canvas = page.locator("#preview-chart")
    return canvas.get_attribute("data-fires"), page.text_content("#preview-summary")


def test_the_preview_chart_follows_the_threshold_and_the_form_saves(page_for, live_server, settings):
    spend_spikes()
    page = page_for(1280)
    page.goto(f"{live_server.url}/alerts/rules/new/")
    page.fill("#id_name", "Spend spikes")
    page.select_option("#id_metric_type", "cost")
    page.fill("#id_time_window_minutes", "60")
    page.fill("#id_threshold", "100")
    page.select_option("#preview-days", "7")
    # (The page's CSP forbids eval: waiting is by selector, not by a JS predicate.)
    page.wait_for_selector("#preview-chart[data-fires='0']", state="attached")
    fires, text = preview_state(page)
    assert fires == "0"
    assert "checked every 5 min" in text and "over a threshold at 0 of 2016 checks" in text

    # Lower the threshold under $3: each spike fires once (the window is an hour) and resolves.
    page.fill("#id_threshold", "2")
    page.wait_for_selector("#preview-chart[data-fires='3']", state="attached")
    fires, text = preview_state(page)
    assert "3 fire(s), 3 resolve(s), 6 notification(s)" in text
    # Each spike is in the window for 12 checks of 5 minutes: 36 firing points shaded.
    assert page.locator("#preview-chart").get_attribute("data-firing-points") == "36"
    # The chart really has the series, both threshold lines' data and the shaded firing spans.
    datasets = page.evaluate(
        "() => Chart.getChart('preview-chart').data.datasets.map(d => [d.label, d.data.filter(v => v !== null).length])"
    )
    assert datasets == [["value", 2016], ["critical", 2016], ["firing", 36]]

    # A bad value is named by the server; the chart stays as it was.
    page.fill("#id_warning_threshold", "5")
    page.wait_for_selector("#preview-summary.error")
    assert "warning_threshold: The warning level must be below the critical threshold." in page.text_content(
        "#preview-summary"
    )
    page.fill("#id_warning_threshold", "")
    page.click("button:has-text('Save rule')")
    page.wait_for_url(f"{live_server.url}/alerts/")
    rule = AlertRule.objects.get(name="Spend spikes")
    assert (rule.metric_type, rule.threshold, rule.warning_threshold) == ("cost", 2.0, None)
    assert not AlertLog.objects.exists()  # a preview writes nothing
    assert [p for p in page.problems if "400" not in p] == []


def test_editing_a_saved_rule_previews_it_and_admin_links_to_the_form(page_for, live_server, staff_user):
    staff_user.is_superuser = True
    staff_user.save()
    spend_spikes()
    rule = make_rule(name="Spend", metric_type=AlertRule.MetricType.COST, threshold=2, time_window_minutes=60)
    page = page_for(1280)
    page.goto(f"{live_server.url}/admin/llm/alertrule/{rule.pk}/change/")
    page.click("a.rule-form-link")
    page.wait_for_url(f"{live_server.url}/alerts/rules/{rule.pk}/edit/")
    page.wait_for_selector("#preview-chart[data-fires='3']", state="attached")
    assert page.input_value("#id_threshold") == "2.0"
    assert page.problems == []
