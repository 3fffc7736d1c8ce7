"""HourlyLatency and DailyLatency (llm.models.PeriodModelFigures; llm/rollups.py keeps them,
llm/metrics.py reads them): per UTC hour or local day (TIME_ZONE) and model, every status and error
type merged, the calls' sums, failures and latency histogram. Each row equals those of the raw calls
of its period and model, recomputed here in plain Python, after incremental roll-ups (late calls
among them), rebuilds (whole, --since, in a new time zone), purge_logs and its migration's fill;
and the figures read from them equal the raw rows (percentiles within rollup_math.ERROR_BOUND of
NumPy's), the per-status histograms of DailyRollup no longer fetched for them."""

from __future__ import annotations

import importlib
import random
import zoneinfo
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import metrics, retention, rollup_math, rollups
from llm.models import DailyLatency, DailyRollup, HourlyLatency, LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
ZONE_NAME = "Europe/Paris"  # summer time from March 29th: one day of 23 hours in the data
MODELS = ["model-a", "model-b", "model-c"]
ERROR_TYPES = ["timeout", "rate_limit", "server_error"]
BOUND = rollup_math.ERROR_BOUND


def random_logs(count: int, seed: int, *, days: float = 10) -> None:
    rng = random.Random(seed)
    statuses = ["error" if rng.random() < 0.2 else "success" for _ in range(count)]
    make_logs(
        count,
        timestamp=lambda i: NOW - timedelta(seconds=rng.randint(0, int(days * 86400))),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: statuses[i],
        error_type=lambda i: rng.choice(ERROR_TYPES) if statuses[i] == "error" else "",
        latency_ms=lambda i: rng.lognormvariate(6, 0.9),
        prompt_tokens=lambda i: rng.randint(0, 2000),
        completion_tokens=lambda i: rng.randint(0, 800),
        cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
        ttft_ms=lambda i: rng.choice([None, rng.uniform(5, 500)]),
    )


@pytest.fixture
def zone(settings):
    settings.TIME_ZONE = ZONE_NAME
    local = zoneinfo.ZoneInfo(ZONE_NAME)
    with timezone.override(local):
        yield local


@pytest.fixture
def calls(zone) -> list[LLMRequestLog]:
    """Calls over 10 days, rolled up in two goes, the second with late calls (old timestamps)."""
    random_logs(300, seed=11)
    rollups.roll_up()
    random_logs(100, seed=12)
    rollups.roll_up()
    return list(LLMRequestLog.objects.all())


FIGURES = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost_units", "ttft_count")


def expected_rows(calls, zone, hourly: bool = False) -> dict[tuple, tuple]:
    """Per local day (or UTC hour) and model of the raw calls: FIGURES, the latency histogram
    and the latency sum (rounded: floats added in another order)."""
    found: dict[tuple, dict] = {}
    for log in calls:
        period = rollup_math.floor_hour(log.timestamp) if hourly else log.timestamp.astimezone(zone).date()
        row = found.setdefault((period, log.model_name), {"histogram": rollup_math.empty(), "latency": 0.0})
        for name, value in (
            ("requests", 1),
            ("errors", log.status == "error"),
            ("prompt_tokens", log.prompt_tokens),
            ("completion_tokens", log.completion_tokens),
            ("total_tokens", log.total_tokens),
            ("cost_units", int(log.cost_estimate.scaleb(10))),
            ("ttft_count", log.ttft_ms is not None),
        ):
            row[name] = row.get(name, 0) + int(value)
        row["histogram"][rollup_math.bucket_index(log.latency_ms)] += 1
        row["latency"] += log.latency_ms
    return {
        key: (*(row[name] for name in FIGURES), row["histogram"].tolist(), round(row["latency"], 6))
        for key, row in found.items()
    }


def stored_rows(hourly: bool = False) -> dict[tuple, tuple]:
    table, period = (HourlyLatency, "hour") if hourly else (DailyLatency, "day")
    return {
        (getattr(row, period), row.model_name): (
            *(getattr(row, name) for name in FIGURES),
            rollup_math.add_encoded(rollup_math.empty(), row.latency_histogram).tolist(),
            round(row.latency_sum_ms, 6),
        )
        for row in table.objects.all()
    }


def daily_rollup_merged() -> dict[tuple, list[int]]:
    """DailyRollup's histograms merged per day and model: what DailyLatency's stand for."""
    merged: dict[tuple, np.ndarray] = defaultdict(rollup_math.empty)
    for day, model, blob in DailyRollup.objects.values_list("day", "model_name", "latency_histogram"):
        rollup_math.add_encoded(merged[(day, model)], blob)
    return {key: dense.tolist() for key, dense in merged.items()}


def assert_kept(calls, zone) -> None:
    """Both tables equal the raw calls' figures, and DailyLatency's histograms DailyRollup's merged."""
    assert stored_rows() == expected_rows(calls, zone)
    assert stored_rows(hourly=True) == expected_rows(calls, zone, hourly=True)
    assert {key: row[len(FIGURES)] for key, row in stored_rows().items()} == daily_rollup_merged()


def fill_migration():
    """The migration that creates DailyLatency (found by name: migrations are renumbered at merges)."""
    (path,) = Path(rollups.__file__).parent.joinpath("migrations").glob("*_daily_latency.py")
    return importlib.import_module(f"llm.migrations.{path.stem}")


def test_figures_per_period_and_model_equal_the_calls_kept_rebuilt_and_filled(calls, zone):
    assert len(expected_rows(calls, zone)) >= 30  # 10-11 local days x 3 models
    assert_kept(calls, zone)
    rollups.rebuild()
    assert_kept(calls, zone)
    call_command("rebuild_rollups", "--since", (NOW - timedelta(days=3)).date().isoformat(), verbosity=0)
    assert_kept(calls, zone)
    DailyLatency.objects.all().delete()
    HourlyLatency.objects.update(requests=0, errors=0, latency_histogram=b"")
    fill_migration().fill_from_rollups(django_apps, None)
    assert_kept(calls, zone)


def test_late_calls_and_purge_keep_the_figures_equal_to_the_calls(calls, zone):
    """Late calls after a purge land in their (old) period; the purge deletes calls, not periods."""
    result = retention.purge(4, now=NOW)
    assert result.logs > 0
    assert_kept(calls, zone)
    random_logs(40, seed=13)  # late ones among them: periods the purge emptied of calls
    new = list(LLMRequestLog.objects.filter(id__gt=max(log.id for log in calls)))
    assert any(log.timestamp < NOW - timedelta(days=4) for log in new)
    rollups.roll_up()
    assert_kept(calls + new, zone)


def test_a_rebuild_in_a_new_time_zone_rebuilds_the_days_there(calls, settings):
    settings.TIME_ZONE = "Asia/Kolkata"
    kolkata = zoneinfo.ZoneInfo("Asia/Kolkata")
    with timezone.override(kolkata):
        call_command("rebuild_rollups", verbosity=0)
        assert_kept(calls, kolkata)


def chosen(start, end, model="", status="") -> metrics.Selection:
    rows = LLMRequestLog.objects.in_window(start, end).for_model(model)
    if status:
        rows = rows.filter(status=status)
    return metrics.Selection(rows, start, end, model, status, rollups_apply=True)


def latencies(calls, start, end, model="", status="") -> list[float]:
    return [
        log.latency_ms
        for log in calls
        if start <= log.timestamp < end and model in ("", log.model_name) and status in ("", log.status)
    ]


def histogram_reads(model, queries) -> int:
    return sum(f'"{model._meta.db_table}"' in query["sql"] and "latency_histogram" in query["sql"] for query in queries)


def test_percentiles_over_days_read_daily_latency_and_equal_the_raw_rows(calls, zone):
    """A 9-day window (whole local days, hours and raw edges): its percentiles, alone, from the
    page's shared reading and per model, within the bound of NumPy's; the days' histograms from
    DailyLatency, or from DailyRollup under a status filter (DailyLatency merges the statuses)."""
    start, end = NOW - timedelta(days=9, minutes=13, seconds=7), NOW - timedelta(minutes=41)
    for model, status in (("", ""), ("model-b", ""), ("", "error")):
        with CaptureQueriesContext(connection) as queries:
            alone = metrics.overview(chosen(start, end, model, status))
        assert histogram_reads(DailyLatency, queries.captured_queries) == (0 if status else 1)
        assert histogram_reads(DailyRollup, queries.captured_queries) == (1 if status else 0)
        shared = metrics.overview(metrics.share(chosen(start, end, model, status), "day"))
        exact = latencies(calls, start, end, model, status)
        assert alone["total_requests"] == shared["total_requests"] == len(exact)
        for name, percentile in (("p50", 50), ("p95", 95), ("p99", 99)):
            truth = float(np.percentile(exact, percentile))
            assert alone[f"{name}_latency_ms"] == pytest.approx(truth, rel=BOUND)
            assert shared[f"{name}_latency_ms"] == alone[f"{name}_latency_ms"]
    per_model = metrics.latency_by_model(chosen(start, end))
    assert {row["model"] for row in per_model} == set(MODELS)
    for row in per_model:
        truth = float(np.percentile(latencies(calls, start, end, row["model"]), 95))
        assert row["p95_latency_ms"] == pytest.approx(truth, rel=BOUND)
