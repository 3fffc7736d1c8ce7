"""The preview's shortcuts give what the plain computation gives: windowed percentiles from each
bucket's two largest values equal a sort of the window's values; the replay by group, which skips
a firing group's steady spans, equals the replay instant by instant (tests/test_alert_preview.py
checks that one against real check_alerts runs); on PostgreSQL the covering indexes hold the
rule's columns and the grouped read leaves the session's planner settings as they were."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.db import connection

from llm import alert_preview, alerts, metrics
from llm.models import AlertRule, LLMRequestLog
from llm.order_statistics import sliding_percentiles, window_top_two
from tests.factories import make_rule

Metric = AlertRule.MetricType
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def sorted_percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks over a plain sort (percentile_cont's)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def random_buckets(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Values in buckets (many empty, some crowded, ties from rounding) behind a few values of
    another group, and the bucket count."""
    buckets = int(rng.integers(1, 50))
    counts = rng.poisson(rng.uniform(0.2, 12), buckets) * (rng.random(buckets) < 0.7)
    before = int(rng.integers(0, 4))
    values = np.round(rng.lognormal(5, 1, before + int(counts.sum()) + 2), int(rng.integers(0, 3)))
    ends = before + np.concatenate([[0], np.cumsum(counts)])
    return values, ends, buckets


@pytest.mark.parametrize("fraction", [0.95, 0.99, 0.5])
def test_sliding_percentiles_equal_a_sort_of_each_window(fraction):
    rng = np.random.default_rng(int(fraction * 100))
    windows = 0
    for _trial in range(150):
        values, ends, buckets = random_buckets(rng)
        span = int(rng.integers(1, 14))
        highs = np.arange(0, buckets + 1)
        got = sliding_percentiles(values, ends, span, highs, fraction)
        for index, high in enumerate(highs.tolist()):
            window = values[ends[max(high - span, 0)] : ends[high]].tolist()
            if not window:
                assert math.isnan(got[index])
                continue
            # The same float, bit for bit: the replay must cross a threshold where a sort would.
            assert got[index] == sorted_percentile(window, fraction), (fraction, span, high, window)
            windows += 1
    assert windows > 1000


def test_window_top_two_are_the_two_largest_of_each_window():
    rng = np.random.default_rng(5)
    for _trial in range(100):
        values, ends, buckets = random_buckets(rng)
        span = int(rng.integers(1, 20))
        largest, second = window_top_two(values, ends, span)
        assert len(largest) == len(second) == buckets + 1
        for high in range(buckets + 1):
            window = sorted(values[ends[max(high - span, 0)] : ends[high]].tolist(), reverse=True)
            window += [-math.inf, -math.inf]
            assert (largest[high], second[high]) == (window[0], window[1])


def sparse_traffic() -> None:
    """A day of calls of three users: long slow and costly stretches, and hours with only a few
    calls, so that firing groups meet instants without a verdict (too few calls)."""
    rng = np.random.default_rng(11)
    start = NOW - timedelta(days=1, hours=2)
    logs = []
    for _index in range(900):
        moment = start + timedelta(seconds=float(rng.uniform(0, 26 * 3600)))
        hour = (moment - start).total_seconds() / 3600
        # Thin traffic for a few hours: fewer than MIN_REQUESTS_TO_JUDGE calls per window.
        if 8 <= hour < 12 and rng.random() < 0.85:
            continue
        slow = 3 <= hour < 14 or 18 <= hour < 20
        failing = rng.random() < (0.4 if 5 <= hour < 11 else 0.03)
        logs.append(
            LLMRequestLog(
                timestamp=moment,
                model_name="llama-3.1-8b-instant",
                user_id=["alice", "bob", "carol"][int(rng.integers(0, 3))],
                status="error" if failing else "success",
                error_type="timeout" if failing else "",
                latency_ms=float(rng.uniform(2500, 9000) if slow and rng.random() < 0.5 else rng.uniform(80, 1500)),
                total_tokens=int(rng.integers(10, 400)),
                cost_estimate=Decimal(f"{rng.uniform(0.0001, 0.004 if slow else 0.001):.6f}"),
            )
        )
    LLMRequestLog.objects.bulk_create(logs)


RULES = [
    {"metric_type": Metric.LATENCY_P95, "threshold": 4000, "warning_threshold": 2000, "group_by": "user"},
    {"metric_type": Metric.LATENCY_P99, "threshold": 5000, "no_data": "alert", "cooldown_minutes": 15},
    {"metric_type": Metric.ERROR_RATE, "threshold": 25, "warning_threshold": 10, "no_data": "ok"},
    {"metric_type": Metric.COST, "threshold": 0.03, "warning_threshold": 0.015, "group_by": "user"},
    {"metric_type": Metric.ERROR_RATE, "threshold": 20, "group_by": "user", "cooldown_minutes": 0},
]


@pytest.mark.django_db
def test_the_replay_by_group_skipping_steady_spans_equals_the_replay_instant_by_instant():
    sparse_traffic()
    times = alert_preview.instants(NOW, 1, 5)
    span_instants = skipped_judging = 0
    for spec in RULES:
        rule = make_rule(time_window_minutes=60, cooldown_minutes=spec.pop("cooldown_minutes", 60), **spec)
        windows = alert_preview.Windows(rule, times)
        fast = alert_preview.replay_by_group(rule, times, windows)
        stepwise = alert_preview.replay_stepwise(rule, times, windows)
        assert fast is not None
        assert fast.events == stepwise.events, (rule.metric_type, rule.group_by)
        assert fast.breaches == stepwise.breaches
        assert alert_preview.worst_series(fast) == alert_preview.worst_series(stepwise)
        kinds = {event["kind"] for event in fast.events}
        assert kinds == {"fire", "resolve"}, (rule.metric_type, kinds)
        spans, judged = firing_instants(stepwise), 0
        for key, instants in spans.items():
            judged += len(instants & set(fast.groups[key].values))
            span_instants += len(instants)
        skipped_judging += len(spans) and judged < sum(len(instants) for instants in spans.values()) / 2
    # Firing spans were long, and the replay by group judged fewer than half their instants.
    assert span_instants > 300
    assert skipped_judging >= 3


def firing_instants(result: alert_preview.Replay) -> dict[str | None, set[int]]:
    """Per group, the instants at which it was firing (from a fire to its resolve, both out)."""
    index_of = {moment: index for index, moment in enumerate(result.times)}
    spans: dict[str | None, set[int]] = {}
    fired_at: dict[str | None, int] = {}
    for event in result.events:
        index = index_of[event["time"]]
        if event["kind"] == "fire":
            fired_at.setdefault(event["group"], index)
        else:
            start = fired_at.pop(event["group"])
            spans.setdefault(event["group"], set()).update(range(start + 1, index))
    for group, start in fired_at.items():
        spans.setdefault(group, set()).update(range(start + 1, len(result.times)))
    return spans


@pytest.mark.django_db
def test_a_firing_group_is_judged_again_where_its_level_may_change_or_a_reminder_is_due():
    sparse_traffic()
    times = alert_preview.instants(NOW, 1, 5)
    rule = make_rule(metric_type=Metric.COST, threshold=0.02, group_by="user", time_window_minutes=60)
    windows = alert_preview.Windows(rule, times)
    highs = np.array([windows.index(moment) for moment in times])
    series = alert_preview.GroupSeries(windows, "alice", highs)
    over = series.values > 0.0201
    # The start of the first run of over 8 instants certainly over the threshold.
    first = next(index for index in range(len(times) - 8) if over[index : index + 9].all())
    state = alerts.State(True, "critical", times[first])
    following = series.steady_until(first + 1, state, rule.cooldown_minutes)
    # Every instant skipped is certainly over the threshold, within the cooldown.
    assert following > first + 1
    assert (series.values[first + 1 : following] > rule.threshold).all()
    assert times[following - 1] - times[first] <= timedelta(minutes=rule.cooldown_minutes)
    # Where it stops: the value may be back under, or a reminder is due.
    assert following == len(times) or (
        series.values[following] <= 0.02 * (1 + 1e-9) or times[following] - times[first] > timedelta(minutes=60)
    )
    # Without a cooldown the reminder is due at once: nothing is skipped.
    assert series.steady_until(first + 1, state, 0) == first + 1


@pytest.mark.postgres_only
@pytest.mark.django_db
def test_grouped_figures_come_from_the_covering_indexes_and_leave_the_planner_as_it_was():
    if connection.vendor != "postgresql":
        pytest.skip("the covering indexes and the planner setting are PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN (%s, %s)",
            ["llm_log_user_time", "llm_log_model_time_user"],
        )
        definitions = dict(cursor.fetchall())
    for name in ("llm_log_user_time", "llm_log_model_time_user"):
        for column in ("status", "error_type", "total_tokens", "cost_estimate", "latency_ms", "ttft_ms"):
            assert column in definitions[name].split("INCLUDE")[1], (name, column)
    assert "model_name" in definitions["llm_log_user_time"].split("INCLUDE")[1]
    sparse_traffic()
    start = NOW - timedelta(days=1)
    for group_by in ("user", "model"):
        scope = metrics.AlertScope(group_by=group_by, percentile="p95_latency_ms", sums=frozenset({"errors", "cost"}))
        figures = metrics.bucketed_figures(scope, start, 24, timedelta(hours=1))
        with connection.cursor() as cursor:
            cursor.execute("SHOW enable_hashagg")
            assert cursor.fetchone()[0] == "on"
        # Each group's day equals the exact figures check_alerts reads.
        exact = metrics.group_totals(scope, start, NOW)
        assert sorted(figures.keys) == sorted(exact)
        for code, key in enumerate(figures.keys):
            requests, errors, _tokens, cost, _up, _down = figures.totals(code, [0], [24])[0].tolist()
            assert (round(requests), round(errors)) == (exact[key].requests, exact[key].errors)
            assert math.isclose(cost, exact[key].cost, rel_tol=1e-12)
            values = figures.values[figures.ends[code, 0] : figures.ends[code, 24]].tolist()
            assert sorted_percentile(values, 0.95) == pytest.approx(exact[key].p95_latency_ms, rel=1e-12)
