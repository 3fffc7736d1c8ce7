"""The alerts page: figures written as the overview writes them, and a query count that does not
grow with the number of rules (every rule's windows are measured by one query)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from llm.models import AlertRule

pytestmark = pytest.mark.django_db

Metric = AlertRule.MetricType


@pytest.fixture
def browser(client, staff_user):
    client.force_login(staff_user)
    return client


def make_rule(metric_type: str, threshold: float, **fields) -> AlertRule:
    return AlertRule.objects.create(
        name=f"{metric_type} {threshold} {AlertRule.objects.count()}",
        metric_type=metric_type,
        threshold=threshold,
        **fields,
    )


def test_alerts_page_writes_thresholds_as_the_overview_writes_figures(browser):
    make_rule(Metric.LATENCY_P95, 12000)
    make_rule(Metric.COST, 1234.5)
    html = browser.get("/alerts/").content.decode()
    assert "&gt; 12,000 ms" in html
    assert "&gt; $1,234.5000" in html
    assert "12000 ms" not in html and "$1234.5000" not in html


def test_alerts_page_queries_do_not_grow_with_the_rules(browser, django_assert_max_num_queries):
    def queries_with(rule_count: int) -> int:
        AlertRule.objects.all().delete()
        kinds = list(Metric.values)
        for index in range(rule_count):
            make_rule(kinds[index % len(kinds)], 5, model_name="" if index % 2 else "qwen/qwen3-32b")
        with CaptureQueriesContext(connection) as queries:
            assert browser.get("/alerts/").status_code == 200
        return len(queries)

    browser.get("/alerts/")  # the first request of a session writes what later ones only read
    # Every rule's windows are measured by one query (one more for the ratings of feedback rules).
    one, ten = queries_with(len(Metric.values)), queries_with(3 * len(Metric.values))
    assert one == ten
    with django_assert_max_num_queries(ten):
        browser.get("/alerts/")
    # At most 8 before named channels and silences; now also the rules' channels, their silences (one prefetch
    # each) and the failing channels shown on top; the ratings of feedback rules; the user's permissions (roles).
    with django_assert_max_num_queries(12):
        browser.get("/alerts/")
