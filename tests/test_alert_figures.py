"""An alert rule measures the figure the API and the pages answer: one definition in llm/metrics.py."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from llm import alerts, metrics
from llm.models import AlertRule, LLMRequestLog

pytestmark = pytest.mark.django_db

Metric = AlertRule.MetricType
MODELS = ["llama-3.1-8b-instant", "qwen/qwen3-32b"]


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def calls(now):
    """120 calls over the last four hours: two models, some failures, uneven latency, tokens and cost."""
    LLMRequestLog.objects.bulk_create(
        LLMRequestLog(
            timestamp=now - timedelta(minutes=2 * index + 1),
            model_name=MODELS[index % 2],
            status="error" if index % 7 == 0 else "success",
            error_type="timeout" if index % 7 == 0 else "",
            latency_ms=100.0 + (index * 37) % 1500,
            total_tokens=40 + index * (3 if index < 30 else 1),
            cost_estimate=Decimal("0.0001") * (index % 5),
        )
        for index in range(120)
    )


def overview_api(api_client, evaluation: alerts.Evaluation) -> dict:
    params = {"start_date": evaluation.window_start.isoformat(), "end_date": evaluation.window_end.isoformat()}
    if evaluation.rule.model_name:
        params["model"] = evaluation.rule.model_name
    response = api_client.get("/api/metrics/overview/", params)
    assert response.status_code == 200
    return response.json()


def make_rule(metric_type: str, **fields) -> AlertRule:
    fields.setdefault("time_window_minutes", 60)
    return AlertRule.objects.create(
        name=f"{metric_type} {AlertRule.objects.count()}", metric_type=metric_type, threshold=1, **fields
    )


@pytest.mark.parametrize("model", ["", MODELS[1]])
@pytest.mark.parametrize(
    ("metric_type", "figure"),
    [
        (Metric.ERROR_RATE, "error_rate"),
        (Metric.LATENCY_P95, "p95_latency_ms"),
        (Metric.COST, "total_cost"),
        (Metric.NO_TRAFFIC, "total_requests"),
    ],
)
def test_a_rule_measures_the_overview_figure_of_its_window(api_client, calls, now, model, metric_type, figure):
    evaluation = alerts.evaluate(make_rule(metric_type, model_name=model), now)
    overview = overview_api(api_client, evaluation)
    assert overview["total_requests"] == evaluation.requests >= 10
    assert evaluation.value == pytest.approx(overview[figure], rel=1e-12)


def test_a_token_spike_is_the_ratio_of_two_overview_token_totals(api_client, calls, now):
    evaluation = alerts.evaluate(make_rule(Metric.TOKEN_SPIKE), now)
    current = overview_api(api_client, evaluation)["total_tokens"]
    before = api_client.get(
        "/api/metrics/overview/",
        {"start_date": (now - timedelta(minutes=120)).isoformat(), "end_date": evaluation.window_start.isoformat()},
    ).json()["total_tokens"]
    assert before > 0 and current > 0
    assert evaluation.value == pytest.approx(current / before, rel=1e-12)


def test_rules_measured_together_equal_rules_measured_alone(calls, now, django_assert_num_queries):
    rules = [
        make_rule(metric_type, model_name=model, time_window_minutes=minutes)
        for metric_type in Metric.values
        for model in ("", MODELS[0])
        for minutes in (15, 90)
    ]
    # One query for the calls of every window, one for the ratings the feedback rules count.
    with django_assert_num_queries(2):
        measured = alerts.measure_rules(rules, now)
    for rule in rules:
        together = alerts.evaluate(rule, now, measured=measured)
        alone = alerts.evaluate(rule, now)
        assert (together.value, together.breached, together.requests) == (alone.value, alone.breached, alone.requests)


def test_window_totals_of_no_window_asks_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert metrics.window_totals([]) == {}


def test_an_empty_window_has_no_error_rate_while_overview_says_zero(db, now):
    window = metrics.Window(now - timedelta(hours=1), now)
    totals = metrics.window_totals([window])[window]
    assert (totals.requests, totals.error_rate, totals.p95_latency_ms) == (0, None, None)
    assert metrics.overview(LLMRequestLog.objects.in_window(window.start, window.end))["error_rate"] == 0.0
