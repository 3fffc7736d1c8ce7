"""Rule evaluation (llm/alerts.py) and the state it records (AlertRule.record_check)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from llm import alerts
from llm.metrics import Percentiles
from llm.models import AlertLog, AlertRule, LLMRequestLog

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
MetricType = AlertRule.MetricType


def make_rule(metric_type: str, threshold: float, **fields) -> AlertRule:
    fields.setdefault("name", f"{metric_type} {threshold} {AlertRule.objects.count()}")
    fields.setdefault("time_window_minutes", 60)
    fields.setdefault("cooldown_minutes", 60)
    return AlertRule.objects.create(metric_type=metric_type, threshold=threshold, **fields)


def make_logs(count: int, *, minutes_ago: float = 5, model: str = "llama-3.1-8b-instant", **fields) -> None:
    fields.setdefault("status", LLMRequestLog.Status.SUCCESS)
    fields.setdefault("latency_ms", 100.0)
    fields.setdefault("total_tokens", 10)
    fields.setdefault("cost_estimate", Decimal(0))
    timestamp = NOW - timedelta(minutes=minutes_ago)
    LLMRequestLog.objects.bulk_create(
        LLMRequestLog(timestamp=timestamp, model_name=model, **fields) for _ in range(count)
    )


def make_errors(count: int, **fields) -> None:
    make_logs(count, status=LLMRequestLog.Status.ERROR, error_type=LLMRequestLog.ErrorType.SERVER_ERROR, **fields)


# error_rate


@pytest.mark.parametrize(
    ("failed", "expected_value", "fires"),
    [(2, 10.0, False), (3, 15.0, True), (0, 0.0, False)],
)
def test_error_rate_rule_fires_only_above_threshold(failed, expected_value, fires):
    make_logs(20 - failed)
    make_errors(failed)
    evaluation = alerts.evaluate(make_rule(MetricType.ERROR_RATE, 10), NOW)
    assert evaluation.requests == 20
    assert evaluation.value == pytest.approx(expected_value)
    assert evaluation.breached is fires


def test_error_rate_rule_with_too_little_traffic_gives_no_verdict():
    make_errors(alerts.MIN_REQUESTS_TO_JUDGE - 1)
    evaluation = alerts.evaluate(make_rule(MetricType.ERROR_RATE, 10), NOW)
    assert evaluation.value == 100.0
    assert evaluation.breached is None
    assert "too little traffic" in evaluation.note


def test_error_rate_rule_judges_at_the_minimum_traffic():
    make_errors(alerts.MIN_REQUESTS_TO_JUDGE)
    assert alerts.evaluate(make_rule(MetricType.ERROR_RATE, 10), NOW).breached is True


def test_error_rate_rule_with_no_traffic_gives_no_verdict():
    evaluation = alerts.evaluate(make_rule(MetricType.ERROR_RATE, 10), NOW)
    assert (evaluation.value, evaluation.breached, evaluation.requests) == (None, None, 0)


def test_window_includes_its_start_and_excludes_now_and_older_calls():
    rule = make_rule(MetricType.ERROR_RATE, 10, time_window_minutes=30)
    make_logs(10, minutes_ago=30)  # exactly at the start: counted
    make_errors(5, minutes_ago=30.01)  # just before the window
    make_errors(5, minutes_ago=0)  # at `now`: the window is [start, now)
    evaluation = alerts.evaluate(rule, NOW)
    assert (evaluation.requests, evaluation.value) == (10, 0.0)
    assert evaluation.window_start == NOW - timedelta(minutes=30)
    assert evaluation.window_end == NOW


def test_window_override_replaces_the_rules_window():
    rule = make_rule(MetricType.ERROR_RATE, 10, time_window_minutes=30)
    make_logs(10, minutes_ago=45)
    make_errors(10, minutes_ago=45)
    assert alerts.evaluate(rule, NOW).requests == 0
    evaluation = alerts.evaluate(rule, NOW, window_minutes=60)
    assert (evaluation.requests, evaluation.value, evaluation.breached) == (20, 50.0, True)


def test_model_filter_counts_only_that_model():
    rule = make_rule(MetricType.ERROR_RATE, 10, model_name="qwen/qwen3-32b")
    make_logs(20, model="qwen/qwen3-32b")
    make_errors(20, model="llama-3.3-70b-versatile")
    evaluation = alerts.evaluate(rule, NOW)
    assert (evaluation.requests, evaluation.value, evaluation.breached) == (20, 0.0, False)
    all_models = alerts.evaluate(make_rule(MetricType.ERROR_RATE, 10), NOW)
    assert (all_models.requests, all_models.value, all_models.breached) == (40, 50.0, True)


# latency_p95


@pytest.mark.parametrize("count", [1, 2, 3, 10, 20, 21, 101, 250])
def test_p95_matches_numpy_linear_interpolation(count):
    generator = random.Random(count)
    latencies = [round(generator.lognormvariate(6, 1), 3) for _ in range(count)]
    for latency in latencies:
        make_logs(1, latency_ms=latency)
    [p95] = LLMRequestLog.objects.aggregate(p95=Percentiles("latency_ms", 0.95))["p95"]
    assert p95 == pytest.approx(float(np.percentile(latencies, 95)), rel=1e-12)


def test_p95_of_nothing_is_none():
    assert LLMRequestLog.objects.aggregate(p95=Percentiles("latency_ms", 0.95))["p95"] is None


def test_latency_rule_fires_only_above_p95_threshold():
    latencies = [100.0 * step for step in range(1, 21)]  # 100 … 2000 ms
    for latency in latencies:
        make_logs(1, latency_ms=latency)
    p95 = float(np.percentile(latencies, 95))  # 1905.0
    at_threshold = alerts.evaluate(make_rule(MetricType.LATENCY_P95, p95), NOW)
    assert at_threshold.value == pytest.approx(p95)
    assert at_threshold.breached is False
    assert alerts.evaluate(make_rule(MetricType.LATENCY_P95, p95 - 0.5), NOW).breached is True


def test_latency_rule_with_too_little_traffic_gives_no_verdict():
    make_logs(alerts.MIN_REQUESTS_TO_JUDGE - 1, latency_ms=60_000)
    evaluation = alerts.evaluate(make_rule(MetricType.LATENCY_P95, 1000), NOW)
    assert evaluation.value == 60_000
    assert evaluation.breached is None


def test_latency_rule_with_model_filter():
    make_logs(20, latency_ms=5000, model="slow-model")
    make_logs(20, latency_ms=50, model="fast-model")
    assert alerts.evaluate(make_rule(MetricType.LATENCY_P95, 1000, model_name="fast-model"), NOW).breached is False
    assert alerts.evaluate(make_rule(MetricType.LATENCY_P95, 1000, model_name="slow-model"), NOW).breached is True


# token_spike


@pytest.mark.parametrize(("current_tokens", "fires"), [(3000, False), (3001, True), (900, False)])
def test_token_spike_rule_compares_with_the_previous_window(current_tokens, fires):
    rule = make_rule(MetricType.TOKEN_SPIKE, 3, time_window_minutes=60)
    make_logs(1, minutes_ago=90, total_tokens=1000)  # previous window [now-120, now-60)
    make_logs(1, minutes_ago=121, total_tokens=50_000)  # before both windows: ignored
    make_logs(1, minutes_ago=10, total_tokens=current_tokens)
    evaluation = alerts.evaluate(rule, NOW)
    assert evaluation.value == pytest.approx(current_tokens / 1000)
    assert evaluation.breached is fires
    assert evaluation.requests == 1


def test_token_spike_with_an_empty_previous_window_gives_no_verdict():
    make_logs(5, minutes_ago=10, total_tokens=1_000_000)
    evaluation = alerts.evaluate(make_rule(MetricType.TOKEN_SPIKE, 3), NOW)
    assert evaluation.value is None
    assert evaluation.breached is None
    assert "previous window" in evaluation.note


def test_token_spike_with_an_empty_current_window_is_zero():
    make_logs(1, minutes_ago=90, total_tokens=1000)
    evaluation = alerts.evaluate(make_rule(MetricType.TOKEN_SPIKE, 3), NOW)
    assert (evaluation.value, evaluation.breached) == (0.0, False)


def test_token_spike_with_model_filter():
    rule = make_rule(MetricType.TOKEN_SPIKE, 2, model_name="a")
    make_logs(1, minutes_ago=90, total_tokens=100, model="a")
    make_logs(1, minutes_ago=10, total_tokens=150, model="a")
    make_logs(1, minutes_ago=10, total_tokens=10_000, model="b")
    assert alerts.evaluate(rule, NOW).value == pytest.approx(1.5)


# cost


@pytest.mark.parametrize(("threshold", "fires"), [(1.0, False), (0.9999, True)])
def test_cost_rule_fires_only_above_threshold(threshold, fires):
    make_logs(4, cost_estimate=Decimal("0.25"))
    make_logs(3, minutes_ago=61, cost_estimate=Decimal("100"))  # outside the window
    evaluation = alerts.evaluate(make_rule(MetricType.COST, threshold), NOW)
    assert evaluation.value == pytest.approx(1.0)
    assert evaluation.breached is fires


def test_cost_rule_needs_no_minimum_traffic():
    make_logs(1, cost_estimate=Decimal("12.5"))
    evaluation = alerts.evaluate(make_rule(MetricType.COST, 10), NOW)
    assert (evaluation.value, evaluation.breached) == (12.5, True)


# no_traffic


@pytest.mark.parametrize(("requests", "fires"), [(5, False), (4, True), (0, True), (6, False)])
def test_no_traffic_rule_fires_below_threshold(requests, fires):
    make_logs(requests)
    evaluation = alerts.evaluate(make_rule(MetricType.NO_TRAFFIC, 5), NOW)
    assert evaluation.value == requests
    assert evaluation.breached is fires


def test_no_traffic_rule_with_model_filter():
    make_logs(10, model="busy")
    assert alerts.evaluate(make_rule(MetricType.NO_TRAFFIC, 1, model_name="quiet"), NOW).breached is True
    assert alerts.evaluate(make_rule(MetricType.NO_TRAFFIC, 1, model_name="busy"), NOW).breached is False


# State: fire once, remind after the cooldown, resolve once


def check(rule: AlertRule, at: datetime) -> alerts.CheckOutcome:
    rule.refresh_from_db()
    return alerts.check_rule(rule, at)


def test_firing_rule_writes_one_alert_then_reminds_after_cooldown_then_resolves():
    rule = make_rule(MetricType.NO_TRAFFIC, 1, time_window_minutes=10, cooldown_minutes=30)

    first = check(rule, NOW)
    assert first.notice == AlertLog.Kind.FIRED
    alert = first.alert
    assert (alert.kind, alert.metric_value, alert.threshold) == ("fired", 0.0, 1.0)
    assert (alert.window_start, alert.window_end, alert.triggered_at) == (NOW - timedelta(minutes=10), NOW, NOW)
    assert alert.delivery_claimed_at is None
    rule.refresh_from_db()
    assert (rule.is_firing, rule.last_value, rule.last_checked_at, rule.last_notified_at) == (True, 0.0, NOW, NOW)

    assert check(rule, NOW + timedelta(minutes=30)).alert is None  # not yet *after* the cooldown
    reminder = check(rule, NOW + timedelta(minutes=31)).alert
    assert reminder is not None and reminder.kind == AlertLog.Kind.FIRED
    assert check(rule, NOW + timedelta(minutes=61)).alert is None  # the cooldown counts from the reminder

    make_logs(3, minutes_ago=-62)  # traffic again, at NOW + 62 min
    resolved = check(rule, NOW + timedelta(minutes=65)).alert
    assert resolved is not None and resolved.kind == AlertLog.Kind.RESOLVED
    assert resolved.metric_value == 3
    assert check(rule, NOW + timedelta(minutes=66)).alert is None
    assert list(AlertLog.objects.order_by("id").values_list("kind", flat=True)) == ["fired", "fired", "resolved"]
    rule.refresh_from_db()
    assert rule.is_firing is False
    assert rule.last_checked_at == NOW + timedelta(minutes=66)


def test_rule_that_stays_fine_writes_nothing():
    make_logs(5)
    rule = make_rule(MetricType.NO_TRAFFIC, 1)
    assert check(rule, NOW).alert is None
    assert check(rule, NOW + timedelta(minutes=1)).alert is None
    assert not AlertLog.objects.exists()
    rule.refresh_from_db()
    assert (rule.is_firing, rule.last_value) == (False, 5.0)


def test_rule_without_verdict_keeps_its_state():
    rule = make_rule(MetricType.ERROR_RATE, 10, time_window_minutes=10)
    make_errors(20, minutes_ago=5)
    assert check(rule, NOW).notice == AlertLog.Kind.FIRED
    # Ten minutes later the errors are out of the window and only 2 calls are in it: no verdict.
    make_logs(2, minutes_ago=-8)
    later = check(rule, NOW + timedelta(minutes=10))
    assert later.evaluation.breached is None
    assert later.alert is None
    rule.refresh_from_db()
    assert rule.is_firing is True
    assert rule.last_value == 0.0


def test_dry_run_reports_the_notice_and_writes_nothing():
    rule = make_rule(MetricType.NO_TRAFFIC, 1)
    outcome = alerts.check_rule(rule, NOW, dry_run=True)
    assert outcome.notice == AlertLog.Kind.FIRED
    assert outcome.alert is None
    assert not AlertLog.objects.exists()
    rule.refresh_from_db()
    assert (rule.is_firing, rule.last_checked_at, rule.last_value) == (False, None, None)


@pytest.mark.parametrize(
    ("is_firing", "minutes_since_notice", "breached", "expected"),
    [
        (False, None, True, "fired"),
        (True, 10, True, None),
        (True, 60, True, None),
        (True, 61, True, "fired"),
        (True, 10, False, "resolved"),
        (False, None, False, None),
        (True, 10, None, None),
    ],
)
def test_planned_notice_matches_what_record_check_writes(is_firing, minutes_since_notice, breached, expected):
    last = NOW - timedelta(minutes=minutes_since_notice) if minutes_since_notice is not None else None
    rule = make_rule(MetricType.COST, 1, cooldown_minutes=60)
    AlertRule.objects.filter(pk=rule.pk).update(is_firing=is_firing, last_notified_at=last)
    rule.refresh_from_db()
    evaluation = alerts.Evaluation(rule, 2.0, breached, 10, NOW - timedelta(hours=1), NOW)
    assert alerts.planned_notice(evaluation, NOW) == expected
    written = rule.record_check(
        value=2.0,
        level={True: "critical", False: "", None: None}[breached],
        window_start=evaluation.window_start,
        window_end=NOW,
        message="m",
        now=NOW,
    )
    assert (written.kind if written else None) == expected


def test_create_default_rules_is_idempotent():
    first = alerts.create_default_rules()
    # One default rule for each of the first five metric types.
    assert {rule.metric_type for rule in first} == set(alerts.FIRST_TYPES)
    assert alerts.create_default_rules() == []
    assert AlertRule.objects.count() == len(alerts.DEFAULT_RULES)


@pytest.mark.parametrize("cooldown", [0, 60])
def test_two_runs_holding_the_same_stale_rule_write_one_alert(cooldown):
    # Both runs loaded the rule while it was not firing; the conditional UPDATE lets one win.
    rule = make_rule(MetricType.NO_TRAFFIC, 1, cooldown_minutes=cooldown)
    first, second = AlertRule.objects.get(pk=rule.pk), AlertRule.objects.get(pk=rule.pk)
    assert alerts.check_rule(first, NOW).alert is not None
    assert alerts.check_rule(second, NOW).alert is None
    assert AlertLog.objects.count() == 1


def test_firing_lists_active_rules_over_threshold():
    firing = make_rule(MetricType.NO_TRAFFIC, 1, model_name="quiet")
    make_rule(MetricType.NO_TRAFFIC, 1, model_name="quiet", is_active=False)
    make_rule(MetricType.NO_TRAFFIC, 1, model_name="busy")
    make_logs(5, model="busy")
    for rule in AlertRule.objects.all():
        alerts.check_rule(rule, NOW)
    assert list(AlertRule.objects.firing()) == [firing]


@pytest.mark.django_db(transaction=True)
def test_migration_marks_alerts_written_before_it_as_delivered():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    graph = executor.loader.graph
    # Found by name, so that renumbering at merge time does not break this test.
    alert_state = next(key for key in graph.nodes if key[0] == "llm" and key[1].endswith("_alert_state"))
    before = next(parent.key for parent in graph.node_map[alert_state].parents if parent.key[0] == "llm")
    executor.migrate([before])
    old_apps = executor.loader.project_state([before]).apps
    OldRule, OldLog = old_apps.get_model("llm", "AlertRule"), old_apps.get_model("llm", "AlertLog")  # noqa: N806
    rule = OldRule.objects.create(name="old", metric_type="cost", threshold=1)
    OldLog.objects.create(alert_rule=rule, triggered_at=NOW, message="m", threshold=1, window_start=NOW, window_end=NOW)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    alert = AlertLog.objects.get()
    assert (alert.kind, alert.delivery_claimed_at, alert.delivered_at) == ("fired", NOW, NOW)
    assert not AlertLog.objects.undelivered().exists()


def test_an_older_evaluation_recorded_late_changes_nothing():
    rule = make_rule(MetricType.NO_TRAFFIC, 1)
    newer = rule.record_check(value=5, level="", window_start=NOW, window_end=NOW, message="m", now=NOW)
    assert newer is None
    # A slow run that measured a minute earlier (and saw no traffic) arrives now.
    late = rule.record_check(
        value=0, level="critical", window_start=NOW, window_end=NOW, message="m", now=NOW - timedelta(minutes=1)
    )
    assert late is None
    rule.refresh_from_db()
    assert (rule.is_firing, rule.last_value, rule.last_checked_at) == (False, 5.0, NOW)
    assert not AlertLog.objects.exists()


def test_admin_form_refuses_an_error_rate_above_100(admin_client):
    response = admin_client.post(
        "/admin/llm/alertrule/add/",
        {
            "name": "impossible",
            "metric_type": "error_rate",
            "threshold": "150",
            "time_window_minutes": "15",
            "cooldown_minutes": "60",
            # What the admin form sends for the fields left at their defaults.
            "min_ratings": "10",
            "no_data": "keep",
            "email_recipients": "not-an-address",
            "webhook_url": "ftp://example.com/",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"threshold", "email_recipients", "webhook_url"}
    assert not AlertRule.objects.exists()


def test_describe_says_value_scope_window_threshold_and_traffic():
    make_logs(17, model="qwen/qwen3-32b")
    make_errors(3, model="qwen/qwen3-32b")
    rule = make_rule(MetricType.ERROR_RATE, 5, model_name="qwen/qwen3-32b", time_window_minutes=15)
    assert alerts.evaluate(rule, NOW).describe() == (
        "error rate 15.00% for qwen/qwen3-32b over the last 15 min (fires above 5.00%; 20 requests)"
    )
    quiet = make_rule(MetricType.NO_TRAFFIC, 100, time_window_minutes=15)
    assert alerts.evaluate(quiet, NOW).describe() == "requests 20 over the last 15 min (fires below 100)"
    thin = make_rule(MetricType.LATENCY_P95, 1000, model_name="nothing-here")
    assert alerts.evaluate(thin, NOW).describe() == (
        "Latency p95 (ms): no value for nothing-here over the last 60 min (fires above 1,000 ms; 0 requests); "
        "too little traffic to judge: fewer than 10 requests"
    )
