"""Alert windows ending at the same instant read the calls they need once (metrics.window_totals):
the short windows (<= EXACT_WINDOW) and the long windows' last part-hours come from one reading of
the rows, and every figure equals a plain-Python recomputation over the raw rows (counts, tokens and
cost exactly, short windows' percentiles as NumPy's; long windows' p95 within the roll-ups' bound)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from llm import alerts, metrics, rollup_math, rollups
from llm.models import AlertRule, LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, 417000, tzinfo=UTC)  # not on an hour, minute or second
MODELS = ["model-a", "model-b", "model-c"]
SHORT_MINUTES = [7, 15, 60, 95, 120]
LONG_MINUTES = [181, 360, 1440]
Metric = AlertRule.MetricType


def random_logs(count: int, seed: int, newest: timedelta) -> None:
    rng = random.Random(seed)
    statuses = ["error" if rng.random() < 0.2 else "success" for _ in range(count)]
    make_logs(
        count,
        timestamp=lambda i: NOW - timedelta(microseconds=rng.randint(1, int(newest.total_seconds() * 1e6))),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: statuses[i],
        error_type=lambda i: rng.choice(["timeout", "rate_limit"]) if statuses[i] == "error" else "",
        total_tokens=lambda i: rng.randint(0, 3000),
        latency_ms=lambda i: rng.lognormvariate(6, 0.9),
        ttft_ms=lambda i: None if rng.random() < 0.3 else rng.uniform(10, 900),
        cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
    )


@pytest.fixture
def calls() -> list[LLMRequestLog]:
    """Calls over two days, rolled up, then more in the last three hours (some above the watermark)."""
    random_logs(500, seed=11, newest=timedelta(days=2))
    rollups.roll_up()
    random_logs(300, seed=12, newest=timedelta(hours=3))
    return list(LLMRequestLog.objects.all())


def within(calls, window: metrics.Window) -> list[LLMRequestLog]:
    return [log for log in calls if window.start <= log.timestamp < window.end and window.model in ("", log.model_name)]


def cost(rows) -> float:
    return float(sum((log.cost_estimate for log in rows), Decimal(0)))


def windows_now() -> list[metrics.Window]:
    found = []
    for minutes in SHORT_MINUTES + LONG_MINUTES:
        for model in ("", MODELS[1]):
            found.append(metrics.Window(NOW - timedelta(minutes=minutes), NOW, model, latency=True))
            found.append(metrics.Window(NOW - timedelta(minutes=minutes), NOW, model))
    found += [
        metrics.Window(NOW - timedelta(minutes=60), NOW, MODELS[0], percentile="p99_latency_ms"),
        metrics.Window(NOW - timedelta(minutes=95), NOW, "", percentile="p95_ttft_ms"),
        metrics.Window(NOW - timedelta(minutes=15), NOW, MODELS[2], error_type="timeout"),
        # A previous window (token spikes): ends earlier, not on an hour either.
        metrics.Window(NOW - timedelta(minutes=240), NOW - timedelta(minutes=120), ""),
    ]
    return found


# Rules of later types over longer windows: read raw, summed in SQL (their rows may be millions).
LONG_RAW = [
    metrics.Window(NOW - timedelta(minutes=360), NOW, "", percentile="p99_latency_ms"),
    metrics.Window(NOW - timedelta(minutes=181), NOW, MODELS[0], error_type="rate_limit"),
]


def test_every_window_equals_the_raw_rows(calls):
    measured = metrics.window_totals(windows_now() + LONG_RAW)
    for window, totals in measured.items():
        rows = within(calls, window)
        errors = [log for log in rows if log.status == "error" and window.error_type in ("", log.error_type)]
        assert (totals.requests, totals.errors) == (len(rows), len(errors)), window
        assert totals.total_tokens == sum(log.total_tokens for log in rows)
        assert totals.cost == cost(rows)
        short = window.end - window.start <= metrics.EXACT_WINDOW
        if window.latency:
            exact = float(np.percentile([log.latency_ms for log in rows], 95))
            if short:
                assert totals.p95_latency_ms == pytest.approx(exact, rel=1e-12)
            else:
                assert totals.p95_latency_ms == pytest.approx(exact, rel=rollup_math.ERROR_BOUND)
        if window.percentile == "p99_latency_ms":
            assert totals.p99_latency_ms == pytest.approx(float(np.percentile([r.latency_ms for r in rows], 99)))
        if window.percentile == "p95_ttft_ms":
            ttfts = [log.ttft_ms for log in rows if log.ttft_ms is not None]
            assert totals.p95_ttft_ms == pytest.approx(float(np.percentile(ttfts, 95)))
    assert len(measured) == len(set(windows_now() + LONG_RAW))
    for window in LONG_RAW:
        assert measured[window] == metrics.window_totals([window])[window]


def test_windows_ending_now_read_the_calls_once_and_equal_each_window_alone(calls):
    windows = windows_now()
    with CaptureQueriesContext(connection) as queries:
        together = metrics.window_totals(windows)
    now = NOW.strftime("%Y-%m-%d %H:%M:%S.%f")  # as both databases' SQL writes it
    reads = [query["sql"] for query in queries.captured_queries if now in query["sql"]]
    # NOW's hour is read once, in one reading for every short window and every long window's last
    # part-hour: the long windows' roll-up plans (and their raw first part-hours) end at 10:00.
    assert len(reads) == 1 and "llm_llmrequestlog" in reads[0]
    for window in windows:
        assert together[window] == metrics.window_totals([window])[window], window


def test_verdicts_of_rules_ending_now_equal_the_raw_rows(calls):
    rules = []
    for minutes in (15, 60, 360):
        for model in ("", MODELS[0]):
            rules.append(
                AlertRule.objects.create(
                    name=f"p95 {minutes} {model}",
                    metric_type=Metric.LATENCY_P95,
                    threshold=600,
                    time_window_minutes=minutes,
                    model_name=model,
                )
            )
            rules.append(
                AlertRule.objects.create(
                    name=f"err {minutes} {model}",
                    metric_type=Metric.ERROR_RATE,
                    threshold=20,
                    time_window_minutes=minutes,
                    model_name=model,
                )
            )
    evaluations = alerts.evaluate_rules(rules, NOW)
    for evaluation in evaluations:
        rule = evaluation.rule
        window = metrics.Window(NOW - timedelta(minutes=rule.time_window_minutes), NOW, rule.model_name)
        rows = within(calls, window)
        assert evaluation.requests == len(rows)
        if rule.metric_type == Metric.ERROR_RATE:
            expected = 100 * sum(log.status == "error" for log in rows) / len(rows)
            assert evaluation.value == pytest.approx(expected, rel=1e-12)
        else:
            expected = float(np.percentile([log.latency_ms for log in rows], 95))
            bound = 1e-12 if rule.time_window_minutes <= 120 else rollup_math.ERROR_BOUND
            assert evaluation.value == pytest.approx(expected, rel=bound)
        judged = len(rows) >= alerts.MIN_REQUESTS_TO_JUDGE
        if judged and abs(expected - rule.threshold) > rule.threshold * rollup_math.ERROR_BOUND:
            assert evaluation.breached == (expected > rule.threshold)
        elif not judged:
            assert evaluation.breached is None


def test_costs_beyond_float_precision_are_summed_exactly(db):
    """Calls of nearly the largest cost an event may carry: their cost units pass 2^53, where a
    float no longer holds every integer."""
    costs = [Decimal("999999.1234567891"), Decimal("999998.0000000007"), Decimal("0.0000000001")]
    make_logs(3, timestamp=lambda i: NOW - timedelta(minutes=5 + i), cost_estimate=lambda i: costs[i])
    window = metrics.Window(NOW - timedelta(minutes=15), NOW)
    totals = metrics.window_totals([window])[window]
    if connection.vendor == "postgresql":
        assert totals.cost == float(sum(costs))
    else:  # SQLite keeps a decimal as a float: each cost is already rounded where it is stored
        assert totals.cost == pytest.approx(float(sum(costs)), rel=1e-15)
    assert totals.requests == 3


def test_calls_with_equal_values_each_count_once_in_sums_percentiles_and_histograms(db):
    """The raw rows are summed per group in SQL: calls alike in every grouped column (same minute,
    model, status and latency) become one group with a count, which must weigh as that many calls in
    a percentile and in an edge's latency histogram."""
    rng = random.Random(5)
    latencies = [100.0, 250.0, 250.5, 900.0]
    make_logs(
        400,
        timestamp=lambda i: NOW - timedelta(minutes=rng.choice([3, 40, 70, 150, 200])),
        model_name=lambda i: MODELS[i % 2],
        status=lambda i: "error" if i % 7 == 0 else "success",
        latency_ms=lambda i: rng.choice(latencies),
        ttft_ms=lambda i: None if i % 3 == 0 else rng.choice(latencies[:2]),
        total_tokens=lambda i: i,
        cost_estimate=lambda i: Decimal(i) / 10**6,
    )
    calls = list(LLMRequestLog.objects.all())
    short = [
        metrics.Window(NOW - timedelta(minutes=minutes), NOW, model, latency=True)
        for minutes in (15, 60, 120)
        for model in ("", MODELS[1])
    ]
    short.append(metrics.Window(NOW - timedelta(minutes=120), NOW, "", percentile="p95_ttft_ms"))
    measured = metrics.window_totals(short)
    for window in short:
        rows = within(calls, window)
        totals = measured[window]
        assert (totals.requests, totals.errors) == (len(rows), sum(log.status == "error" for log in rows))
        assert (totals.total_tokens, totals.cost) == (sum(log.total_tokens for log in rows), cost(rows))
        if window.latency:
            assert totals.p95_latency_ms == float(np.percentile([log.latency_ms for log in rows], 95))
        else:
            ttfts = [log.ttft_ms for log in rows if log.ttft_ms is not None]
            assert totals.p95_ttft_ms == float(np.percentile(ttfts, 95))
    # An edge's histogram: each call in its bucket, as the roll-ups count it.
    edge = metrics.Window(NOW - timedelta(minutes=200), NOW - timedelta(minutes=100), MODELS[0], latency=True)
    _, parts = metrics._raw_window_totals([], metrics.RolledUpParts([edge], watermark=metrics.LARGEST_ID))
    rows = within(calls, edge)
    expected = np.bincount([rollup_math.bucket_index(log.latency_ms) for log in rows], minlength=rollup_math.BUCKETS)
    found = parts.edges[edge]
    assert found.figures.latency.tolist() == expected.tolist()
    assert (found.figures.requests, found.errors) == (len(rows), sum(log.status == "error" for log in rows))
