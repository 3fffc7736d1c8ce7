"""One formatter per figure (llm/formatting.py): the overview, the alerts page, notices and admin agree."""

from __future__ import annotations

import pytest
from django.template import Context, Template

from llm import formatting
from llm.models import AlertRule

pytestmark = pytest.mark.one_database  # plain functions, no database

Metric = AlertRule.MetricType


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("error_rate", 12.345, "12.35%"),
        ("p95_latency_ms", 12000.0, "12,000 ms"),
        ("latency_ms", 1905.4, "1,905 ms"),
        ("total_cost", 1234.5, "$1,234.5000"),
        ("cost", 0.5, "$0.5000"),
        ("token_ratio", 3.0, "3.00x"),
        ("requests", 1_234_567, "1,234,567"),
        ("requests", 1.5, "1.50"),
        ("total_tokens", None, "—"),
        ("total_tokens", "", "—"),
    ],
)
def test_a_figure_is_written_by_its_key(key, value, text):
    assert formatting.figure(key, value) == text


def test_a_figure_that_is_not_a_number_is_a_bug_not_a_blank():
    with pytest.raises(TypeError):
        formatting.figure("cost", "1.5")


@pytest.mark.parametrize(
    ("metric_type", "value", "text"),
    [
        (Metric.NO_TRAFFIC, 1_234_567.0, "1,234,567"),
        (Metric.NO_TRAFFIC, 1.5, "1.50"),
        (Metric.ERROR_RATE, 12.345, "12.35%"),
        (Metric.LATENCY_P95, 12000.0, "12,000 ms"),
        (Metric.TOKEN_SPIKE, 3.0, "3.00x"),
        (Metric.COST, 1234.5, "$1,234.5000"),
        (Metric.COST, None, "—"),
        ("retired_metric", 2.0, "2"),
    ],
)
def test_a_rule_value_is_written_as_the_figure_it_measures(metric_type, value, text):
    assert formatting.rule_value(metric_type, value) == text


def test_the_template_tag_is_the_same_formatter():
    rendered = Template("{% load dashboard %}{% metric_value 'p95_latency_ms' v %}|{% metric_value 'total_cost' c %}")
    assert rendered.render(Context({"v": 12000.0, "c": 1234.5})) == "12,000 ms|$1,234.5000"
