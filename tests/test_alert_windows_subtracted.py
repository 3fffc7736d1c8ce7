"""Alert windows whose part-hours are most of their hour (metrics.window_totals): such a part-hour is
read as the hour's roll-up less the rest of the hour (rollup_math.subtract_edges), the rest read
from the rows up to the roll-ups' watermark. Every figure equals a plain-Python recomputation over
the raw rows: counts, tokens and cost exactly, p95 within the roll-ups' bound (NumPy's), short
windows exactly; with calls in those rests both rolled up and above the watermark (the current
hour's calls after `now`, written later), several models, windows of several lengths ending at the
same instant and previous windows (token spikes) ending earlier."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from llm import alerts, metrics, rollup_math, rollups
from llm.models import AlertRule, LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
# 47 minutes into its hour: a window ending now reads this hour as its roll-up less [now, 11:00).
NOW = datetime(2026, 11, 30, 10, 47, 23, 417000, tzinfo=UTC)
MODELS = ["model-a", "model-b", "model-c"]
# 200 min starts at 07:27:23 (33 min of its hour: subtracted); 181 at 07:46 (14 min: read raw);
# 1410 at 11:17 the day before (43 min: subtracted); 1500 at 09:47 the day before (47 min, but
# more than a day old: purge_logs may have deleted its rest, so read raw); 95 and 120 are short
# (exact, raw); 3000 holds a whole day (the daily roll-ups).
MINUTES = [95, 120, 181, 200, 360, 1410, 1500, 3000]
Metric = AlertRule.MetricType


def random_logs(count: int, seed: int, newest: timedelta, oldest: timedelta) -> None:
    rng = random.Random(seed)
    statuses = ["error" if rng.random() < 0.2 else "success" for _ in range(count)]
    span = int((oldest - newest).total_seconds() * 1e6)
    make_logs(
        count,
        timestamp=lambda i: NOW - newest - timedelta(microseconds=rng.randint(1, span)),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: statuses[i],
        error_type=lambda i: "timeout" if statuses[i] == "error" else "",
        total_tokens=lambda i: rng.randint(0, 3000),
        latency_ms=lambda i: rng.lognormvariate(6, 0.9),
        cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
    )


@pytest.fixture
def calls(time_machine) -> list[LLMRequestLog]:
    """Calls over two days up to the end of NOW's hour (so the rests hold calls), rolled up; then
    more over the last four hours and the rest of NOW's hour, above the watermark."""
    time_machine.move_to(NOW, tick=False)
    to_hour_end = NOW - rollup_math.ceil_hour(NOW)  # negative: after NOW, within its hour
    random_logs(500, seed=21, newest=to_hour_end, oldest=timedelta(days=2))
    rollups.roll_up()
    random_logs(200, seed=22, newest=to_hour_end, oldest=timedelta(hours=4))
    return list(LLMRequestLog.objects.all())


def within(calls, window: metrics.Window) -> list[LLMRequestLog]:
    return [log for log in calls if window.start <= log.timestamp < window.end and window.model in ("", log.model_name)]


def windows() -> list[metrics.Window]:
    found = []
    for minutes in MINUTES:
        length = timedelta(minutes=minutes)
        for model in ("", MODELS[1]):
            found.append(metrics.Window(NOW - length, NOW, model, latency=True))
            found.append(metrics.Window(NOW - length, NOW, model))
            found.append(metrics.Window(NOW - 2 * length, NOW - length, model))  # a token spike's previous
    return found


def test_windows_with_subtracted_part_hours_equal_the_raw_rows(calls):
    measured = metrics.window_totals(windows())
    assert len(measured) == len(windows())
    for window, totals in measured.items():
        rows = within(calls, window)
        assert rows or window.end < NOW  # every window ending now holds calls: the sums below could fail
        assert totals.requests == len(rows), window
        assert totals.errors == sum(log.status == "error" for log in rows), window
        assert totals.total_tokens == sum(log.total_tokens for log in rows), window
        assert totals.cost == float(sum((log.cost_estimate for log in rows), Decimal(0))), window
        if window.latency:
            exact = float(np.percentile([log.latency_ms for log in rows], 95))
            short = window.end - window.start <= metrics.EXACT_WINDOW
            assert totals.p95_latency_ms == pytest.approx(exact, rel=1e-12 if short else rollup_math.ERROR_BOUND)


def test_most_of_an_hour_is_read_as_the_hour_less_its_rest(calls):
    """The rests hold calls (rolled up and not), so the equalities above test the subtraction: these
    are the windows that subtract, and the rests they read."""
    plans = metrics._plan_windows(windows())
    at = {minutes: plans[(NOW - timedelta(minutes=minutes), NOW, "")].split for minutes in (181, 200, 1410, 1500)}
    now_hour_rest = (NOW, rollup_math.ceil_hour(NOW))
    assert at[181].outside == [now_hour_rest]  # its 14-minute start edge is read raw
    first_rest = (NOW.replace(hour=7, minute=0, second=0, microsecond=0), NOW - timedelta(minutes=200))
    assert at[200].outside == [first_rest, now_hour_rest]
    start = NOW - timedelta(minutes=1410)
    assert at[1410].outside == [(rollup_math.floor_hour(start), start), now_hour_rest]
    assert at[1500].outside == [now_hour_rest]
    assert plans[(NOW - timedelta(minutes=3000), NOW, "")].split.days == [(NOW - timedelta(days=1)).date()]
    assert any(log.timestamp >= NOW for log in calls if log.id > metrics.rollup_state().last_id)
    assert any(log.timestamp >= NOW for log in calls if log.id <= metrics.rollup_state().last_id)
    assert all(
        (NOW - timedelta(minutes=minutes), NOW, "") not in plans for minutes in MINUTES if minutes <= 120
    )  # short windows stay raw (exact percentiles)


def test_verdicts_equal_the_raw_rows(calls):
    rules = [
        AlertRule.objects.create(
            name=f"{metric} {minutes} {model}",
            metric_type=metric,
            threshold=threshold,
            time_window_minutes=minutes,
            model_name=model,
        )
        for minutes in (200, 1500)
        for model in ("", MODELS[0])
        for metric, threshold in ((Metric.LATENCY_P95, 600), (Metric.TOKEN_SPIKE, 1), (Metric.COST, 0.0001))
    ]
    for evaluation in alerts.evaluate_rules(rules, NOW):
        rule = evaluation.rule
        length = timedelta(minutes=rule.time_window_minutes)
        rows = within(calls, metrics.Window(NOW - length, NOW, rule.model_name))
        assert evaluation.requests == len(rows)
        if rule.metric_type == Metric.LATENCY_P95:
            expected = float(np.percentile([log.latency_ms for log in rows], 95))
            assert evaluation.value == pytest.approx(expected, rel=rollup_math.ERROR_BOUND)
        elif rule.metric_type == Metric.TOKEN_SPIKE:
            before = within(calls, metrics.Window(NOW - 2 * length, NOW - length, rule.model_name))
            expected = sum(log.total_tokens for log in rows) / sum(log.total_tokens for log in before)
            assert evaluation.value == pytest.approx(expected, rel=1e-12)
        else:
            expected = float(sum((log.cost_estimate for log in rows), Decimal(0)))
            assert evaluation.value == pytest.approx(expected, rel=1e-12)
        if abs(expected - rule.threshold) > rule.threshold * rollup_math.ERROR_BOUND:
            assert evaluation.breached == (expected > rule.threshold)
