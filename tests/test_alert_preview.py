"""The rule preview replays check_alerts: on the same data, the notices the replay announces are
exactly the AlertLogs that real check_alerts runs at each instant write (time-machine moves the
clock), for every metric type, grouped or not, with levels and no-data policies."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.core.management import call_command

from llm import alert_preview
from llm.models import AlertLog, AlertRule, AlertState, LLMRequestLog, UserFeedback
from tests.factories import make_rule

pytestmark = pytest.mark.django_db

Metric = AlertRule.MetricType
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
STEP = 20  # minutes: 72 runs over the day
MODELS = ["llama-3.1-8b-instant", "qwen/qwen3-32b"]
USERS = ["alice", "bob", "carol"]


def day_of_traffic() -> list[LLMRequestLog]:
    """A day of calls with bursts: failures (timeouts in one burst), slow calls, spend, silences.
    Latencies and costs are drawn from continuous distributions: no value ties a threshold."""
    rng = np.random.default_rng(20)
    start = NOW - timedelta(days=1, hours=2)
    logs = []
    for _index in range(1500):
        moment = start + timedelta(seconds=float(rng.uniform(0, 26 * 3600)))
        hour = (moment - start).total_seconds() / 3600
        # A silence of ninety minutes: no traffic rules fire, rate rules have no verdict.
        if 9 <= hour < 10.5:
            continue
        failing = rng.random() < (0.45 if 4 <= hour < 6 or 15 <= hour < 16 else 0.04)
        slow = 13 <= hour < 17 and rng.random() < 0.3
        user = USERS[int(rng.integers(0, 3))] if not (20 <= hour < 22) else "alice"
        logs.append(
            LLMRequestLog(
                timestamp=moment,
                model_name=MODELS[int(rng.integers(0, 2))],
                user_id=user,
                tags={"feature": ["chat", "search"][int(rng.integers(0, 2))]},
                status="error" if failing else "success",
                error_type=("timeout" if 4 <= hour < 6 else "server_error") if failing else "",
                latency_ms=float(rng.uniform(2500, 9000) if slow else rng.uniform(80, 1200)),
                ttft_ms=float(rng.uniform(50, 400) * (4 if slow else 1)) if rng.random() < 0.7 else None,
                total_tokens=int(rng.integers(10, 400) * (5 if 18 <= hour < 19 else 1)),
                cost_estimate=Decimal(f"{rng.uniform(0.0001, 0.002):.6f}"),
            )
        )
    return LLMRequestLog.objects.bulk_create(logs)


def rate_some(logs: list[LLMRequestLog]) -> None:
    rng = np.random.default_rng(7)
    ratings = []
    for log in logs[::4]:
        # Unhappy raters while calls are slow.
        unhappy = log.latency_ms > 2500 or rng.random() < 0.2
        rating = UserFeedback.Rating.THUMBS_DOWN if unhappy else UserFeedback.Rating.THUMBS_UP
        ratings.append(UserFeedback(request=log, rating=rating, rater="r", created_at=log.timestamp))
    UserFeedback.objects.bulk_create(ratings)


RULES = [
    {"metric_type": Metric.ERROR_RATE, "threshold": 30, "warning_threshold": 10, "time_window_minutes": 60},
    {
        "metric_type": Metric.ERROR_RATE,
        "threshold": 20,
        "error_type": "timeout",
        "group_by": "model",
        "no_data": "ok",
        "time_window_minutes": 60,
    },
    {
        "metric_type": Metric.LATENCY_P99,
        "threshold": 6000,
        "warning_threshold": 2000,
        "group_by": "tag:feature",
        "time_window_minutes": 60,
    },
    {"metric_type": Metric.LATENCY_P95, "threshold": 3000, "time_window_minutes": 40, "no_data": "alert"},
    {"metric_type": Metric.TTFT_P95, "threshold": 700, "time_window_minutes": 60, "cooldown_minutes": 0},
    {"metric_type": Metric.COST, "threshold": 0.025, "group_by": "user", "time_window_minutes": 60},
    {"metric_type": Metric.TOKEN_SPIKE, "threshold": 2, "time_window_minutes": 60},
    {"metric_type": Metric.NO_TRAFFIC, "threshold": 3, "group_by": "user", "time_window_minutes": 40},
    {"metric_type": Metric.FEEDBACK, "threshold": 60, "warning_threshold": 75, "min_ratings": 5, "no_data": "ok"},
]


@pytest.fixture
def traffic(db):
    logs = day_of_traffic()
    rate_some(logs)
    return logs


def test_the_replay_writes_exactly_the_notices_of_real_runs(traffic, time_machine, settings):
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    rules = [
        make_rule(name=f"rule {index}", cooldown_minutes=spec.pop("cooldown_minutes", 60), **spec)
        for index, spec in enumerate(dict(spec) for spec in RULES)
    ]
    replays = {rule.pk: alert_preview.replay(rule, NOW, 1, STEP) for rule in rules}
    # The replay by group (the fast one) gives what the replay instant by instant gives.
    times = alert_preview.instants(NOW, 1, STEP)
    for rule in rules:
        stepwise = alert_preview.replay_stepwise(rule, times, alert_preview.Windows(rule, times))
        fast = replays[rule.pk]
        assert fast.events == stepwise.events, rule.metric_type
        assert fast.breaches == stepwise.breaches
        assert alert_preview.worst_series(fast) == alert_preview.worst_series(stepwise)

    for moment in alert_preview.instants(NOW, 1, STEP):
        time_machine.move_to(moment, tick=False)
        call_command("check_alerts", stdout=io.StringIO(), stderr=io.StringIO())

    written = sorted(
        (log.alert_rule_id, log.triggered_at, log.group_key, log.kind, log.level)
        for log in AlertLog.objects.order_by("id")
    )
    replayed = sorted(
        (pk, event["time"], event["group"] or "", "fired" if event["kind"] == "fire" else "resolved", event["level"])
        for pk, result in replays.items()
        for event in result.events
    )
    assert replayed == written
    # Every rule fired and resolved at least once: the comparison covers each type's transitions.
    for rule in rules:
        kinds = {event["kind"] for event in replays[rule.pk].events}
        assert kinds == {"fire", "resolve"}, (rule.metric_type, rule.group_by, kinds)
    # And the values the notices carry agree.
    for log in AlertLog.objects.all():
        event = next(
            e
            for e in replays[log.alert_rule_id].events
            if e["time"] == log.triggered_at and (e["group"] or "") == log.group_key
        )
        assert (event["value"] is None) == (log.metric_value is None)
        if log.metric_value is not None:
            assert math.isclose(event["value"], log.metric_value, rel_tol=1e-9)
    # The grouped rules kept one state per group.
    assert set(AlertState.objects.filter(rule=rules[5]).values_list("group_key", flat=True)) <= set(USERS)
