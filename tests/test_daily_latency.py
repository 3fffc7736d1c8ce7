"""DailyLatency (llm/rollups.py keeps it, llm/metrics.py reads it): the latency histogram of each
local day (TIME_ZONE) and model, every status and error type merged. It equals the histogram of the
raw calls of that day and model, recomputed here in plain Python, after incremental roll-ups (late
calls among them), rebuilds (whole, --since, in a new time zone), purge_logs and its migration's
fill; and the percentiles read from it stay within rollup_math.ERROR_BOUND of NumPy's over the raw
rows, the DailyRollup histograms no longer fetched for them."""

from __future__ import annotations

import importlib
import random
import zoneinfo
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import metrics, retention, rollup_math, rollups
from llm.models import DailyLatency, DailyRollup, LLMRequestLog
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
    random_logs(500, seed=11)
    rollups.roll_up()
    random_logs(150, seed=12)
    rollups.roll_up()
    return list(LLMRequestLog.objects.all())


def expected_latency(calls, zone) -> dict[tuple, list[int]]:
    """Each local day and model's latency histogram, from the raw calls."""
    expected: dict[tuple, np.ndarray] = defaultdict(rollup_math.empty)
    for log in calls:
        expected[(log.timestamp.astimezone(zone).date(), log.model_name)][rollup_math.bucket_index(log.latency_ms)] += 1
    return {key: dense.tolist() for key, dense in expected.items()}


def daily_latency() -> dict[tuple, list[int]]:
    stored = DailyLatency.objects.values_list("day", "model_name", "latency_histogram")
    return {(day, model): rollup_math.add_encoded(rollup_math.empty(), blob).tolist() for day, model, blob in stored}


def daily_rollup_merged() -> dict[tuple, list[int]]:
    """DailyRollup's histograms merged per day and model: what DailyLatency stands for."""
    merged: dict[tuple, np.ndarray] = defaultdict(rollup_math.empty)
    for day, model, blob in DailyRollup.objects.values_list("day", "model_name", "latency_histogram"):
        rollup_math.add_encoded(merged[(day, model)], blob)
    return {key: dense.tolist() for key, dense in merged.items()}


def fill_migration():
    """The migration that creates DailyLatency (found by name: migrations are renumbered at merges)."""
    (path,) = Path(rollups.__file__).parent.joinpath("migrations").glob("*_daily_latency.py")
    return importlib.import_module(f"llm.migrations.{path.stem}")


def test_daily_latency_equals_each_local_day_and_models_calls_kept_rebuilt_and_filled(calls, zone):
    expected = expected_latency(calls, zone)
    assert len(expected) >= 30  # 10-11 local days x 3 models
    assert daily_latency() == expected == daily_rollup_merged()
    rollups.rebuild()
    assert daily_latency() == expected
    call_command("rebuild_rollups", "--since", (NOW - timedelta(days=3)).date().isoformat(), verbosity=0)
    assert daily_latency() == expected
    DailyLatency.objects.all().delete()
    fill_migration().fill_from_daily_rollups(django_apps, None)
    assert daily_latency() == expected


def test_late_calls_and_purge_keep_daily_latency_equal_to_the_calls(calls, zone):
    """Late calls after a purge land in their (old) day; the purge deletes calls, not their days."""
    before = expected_latency(calls, zone)
    result = retention.purge(4, now=NOW)
    assert result.logs > 0
    assert daily_latency() == before
    random_logs(60, seed=13)  # late ones among them: days the purge emptied of calls
    new = list(LLMRequestLog.objects.filter(id__gt=max(log.id for log in calls)))
    assert any(log.timestamp < NOW - timedelta(days=4) for log in new)
    rollups.roll_up()
    expected = defaultdict(list, {key: list(counts) for key, counts in before.items()})
    for key, counts in expected_latency(new, zone).items():
        expected[key] = (np.array(expected.get(key, rollup_math.empty().tolist())) + counts).tolist()
    assert daily_latency() == dict(expected) == daily_rollup_merged()


def test_a_rebuild_in_a_new_time_zone_rebuilds_the_days_there(calls, settings):
    settings.TIME_ZONE = "Asia/Kolkata"
    kolkata = zoneinfo.ZoneInfo("Asia/Kolkata")
    with timezone.override(kolkata):
        call_command("rebuild_rollups", verbosity=0)
        assert daily_latency() == expected_latency(calls, kolkata) == daily_rollup_merged()


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
