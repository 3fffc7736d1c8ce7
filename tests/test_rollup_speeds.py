"""The provider speed sums of the roll-ups (speed_count, speed_sum, queue_count, queue_sum_ms) and
`metrics.model_speeds` read from them, against plain Python over the raw rows: counts exactly, the
means to float rounding, whatever part of the rows has been rolled up (late calls among the rest),
for windows not aligned to hours; rebuild equals incremental; purge keeps them; the migration's
set-based fill equals what the roll-ups hold."""

from __future__ import annotations

import importlib
import random
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection
from django.test import Client

from llm import metrics, retention, rollups
from llm.models import (
    DailyBreakdownRollup,
    DailyRollup,
    HourlyBreakdownRollup,
    HourlyRollup,
    LLMRequestLog,
)
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
MODELS = ["model-a", "model-b", "model-c"]
SPEED_COLUMNS = ("speed_count", "speed_sum", "queue_count", "queue_sum_ms")
WINDOWS = [
    (NOW - timedelta(days=9, minutes=13, seconds=7), NOW - timedelta(minutes=41)),
    (NOW - timedelta(days=3, hours=5, minutes=2), NOW - timedelta(days=1, minutes=3)),
    (NOW - timedelta(hours=30, minutes=1), NOW),
]


def random_calls(count: int, seed: int) -> None:
    """Calls over 12 days: some streamed (a speed), some with a queue time, some with both or neither."""
    rng = random.Random(seed)
    make_logs(
        count,
        timestamp=lambda i: NOW - timedelta(seconds=rng.randint(0, 12 * 86400)),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: rng.choice(["success"] * 6 + ["error"]),
        source=lambda i: rng.choice(["proxy", "events", "otlp"]),
        tags=lambda i: rng.choice([{}, {"feature": "chat"}, {"feature": "search", "env": "prod"}]),
        latency_ms=lambda i: rng.uniform(50, 3000),
        output_tokens_per_second=lambda i: rng.choice([None, rng.uniform(20, 900)]),
        queue_time_ms=lambda i: rng.choice([None, None, rng.uniform(0.1, 80)]),
    )


@pytest.fixture(scope="module")
def half_rolled(module_transaction, django_db_blocker) -> list[LLMRequestLog]:
    """Random calls, part rolled up, then more (old timestamps among them) above the watermark."""
    with django_db_blocker.unblock():  # written once for the module: tests/conftest.py's module_transaction
        random_calls(500, seed=11)
        rollups.roll_up()
        random_calls(200, seed=12)
        return list(LLMRequestLog.objects.all())


def chosen(start: datetime, end: datetime, model: str = "") -> metrics.Selection:
    queryset = LLMRequestLog.objects.in_window(start, end).for_model(model)
    return metrics.Selection(queryset, start, end, model, rollups_apply=True)


def expected_speeds(logs: list[LLMRequestLog], start: datetime, end: datetime, model: str = "") -> dict:
    """Plain Python: per model, the mean of each figure over the calls that have it."""
    per_model = defaultdict(list)
    for log in logs:
        if start <= log.timestamp < end and (not model or log.model_name == model):
            per_model[log.model_name].append(log)
    expected = {}
    for name, rows in sorted(per_model.items()):
        speeds = [log.output_tokens_per_second for log in rows if log.output_tokens_per_second is not None]
        queues = [log.queue_time_ms for log in rows if log.queue_time_ms is not None]
        if speeds or queues:
            expected[name] = {
                "output_tokens_per_second": statistics.fmean(speeds) if speeds else None,
                "streamed_calls": len(speeds),
                "queue_time_ms": statistics.fmean(queues) if queues else None,
                "queued_calls": len(queues),
            }
    return expected


def assert_speeds(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for name, row in found.items():
        assert (row["streamed_calls"], row["queued_calls"]) == (
            expected[name]["streamed_calls"],
            expected[name]["queued_calls"],
        )
        assert row == pytest.approx(expected[name], rel=1e-9)


def test_model_speeds_from_roll_ups_equal_raw_rows(half_rolled, subtests):
    for start, end in WINDOWS:
        for model in ("", "model-b"):
            with subtests.test(start=start, end=end, model=model):
                selection = chosen(start, end, model)
                assert metrics.plan(selection) is not None  # the roll-ups answer: they are what is tested
                expected = expected_speeds(half_rolled, start, end, model)
                assert_speeds(metrics.model_speeds(selection), expected)
                # The analytics page's way: from the window read once by day.
                assert_speeds(metrics.model_speeds(metrics.share(selection, "day")), expected)
                # And the raw rows alone (a bare queryset) agree.
                assert_speeds(metrics.model_speeds(selection.logs), expected)


def speed_contents() -> dict:
    """Every roll-up row's speed counts (exact) and sums (rounded: the order of float additions
    differs between adding batches and adding all at once)."""
    contents = {}
    for table, period in (
        (HourlyRollup, "hour"),
        (DailyRollup, "day"),
        (HourlyBreakdownRollup, "hour"),
        (DailyBreakdownRollup, "day"),
    ):
        key = [period, "model_name", "status", "error_type", *(("by", "key") if "Breakdown" in table.__name__ else ())]
        for row in table.objects.values(*key, *SPEED_COLUMNS):
            contents[(table.__name__, *(row[name] for name in key))] = (
                row["speed_count"],
                round(row["speed_sum"], 6),
                row["queue_count"],
                round(row["queue_sum_ms"], 6),
            )
    return contents


def test_rebuild_equals_incremental_and_the_migration_fills_the_same(half_rolled):
    rollups.roll_up()
    incremental = speed_contents()
    tables = {name for name, *_ in incremental}
    assert tables == {"HourlyRollup", "DailyRollup", "HourlyBreakdownRollup", "DailyBreakdownRollup"}
    assert sum(count for count, *_ in (incremental[key] for key in incremental if key[0] == "HourlyRollup")) == sum(
        log.output_tokens_per_second is not None for log in half_rolled
    )
    call_command("rebuild_rollups", verbosity=0)
    assert speed_contents() == incremental

    # An upgrade: the columns start at 0 and the migration fills them from the calls rolled up.
    for table in (HourlyRollup, DailyRollup, HourlyBreakdownRollup, DailyBreakdownRollup):
        table.objects.update(speed_count=0, speed_sum=0, queue_count=0, queue_sum_ms=0)
    migration = importlib.import_module("llm.migrations.0031_rollup_speeds")
    migration.fill_speed_sums(django_apps, SimpleNamespace(connection=connection, quote_name=connection.ops.quote_name))
    assert speed_contents() == incremental


def test_the_migration_leaves_calls_above_the_watermark_to_the_next_roll_up(half_rolled):
    """The 200 calls written after the roll-up are not in the sums the migration fills."""
    HourlyRollup.objects.update(speed_count=0, speed_sum=0, queue_count=0, queue_sum_ms=0)
    migration = importlib.import_module("llm.migrations.0031_rollup_speeds")
    migration.fill_speed_sums(django_apps, SimpleNamespace(connection=connection, quote_name=connection.ops.quote_name))
    watermark = rollups.watermarks.counted_up_to(rollups.ROLLUPS)
    rolled = [log for log in half_rolled if log.id <= watermark]
    assert 0 < len(rolled) < len(half_rolled)
    assert sum(HourlyRollup.objects.values_list("queue_count", flat=True)) == sum(
        log.queue_time_ms is not None for log in rolled
    )
    start, end = WINDOWS[0]
    assert_speeds(metrics.model_speeds(chosen(start, end)), expected_speeds(half_rolled, start, end))


def test_purge_keeps_the_speeds_in_the_roll_ups(half_rolled):
    start, end = rollups.rollup_math.floor_hour(WINDOWS[0][0]), WINDOWS[0][1]
    before = metrics.model_speeds(chosen(start, end))
    assert_speeds(before, expected_speeds(half_rolled, start, end))
    result = retention.purge(5, now=NOW)
    assert result.logs > 0
    assert_speeds(metrics.model_speeds(chosen(start, end)), before)


def test_the_analytics_page_shows_the_rolled_up_speeds(staff_user, half_rolled):
    rollups.roll_up()
    client = Client()
    client.force_login(staff_user)
    start, end = WINDOWS[0]
    html = client.get(
        "/analytics/", {"range": "custom", "start_date": start.isoformat(), "end_date": end.isoformat()}
    ).content.decode()
    table = html.split("Model comparison", 1)[1].split("</table>", 1)[0]
    for name, row in expected_speeds(half_rolled, start, end).items():
        cells = table.split(name, 1)[1].split("</tr>", 1)[0]
        assert f"{row['output_tokens_per_second']:,.1f} tokens/s" in cells
        assert f"{row['queue_time_ms']:,.0f} ms" in cells
