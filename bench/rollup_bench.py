"""Figures from raw rows vs from the roll-ups, and ingest with and without them.

    .venv/bin/python bench/rollup_bench.py                         # SQLite in a temporary file
    scripts/with-postgres .venv/bin/python bench/rollup_bench.py   # a throwaway PostgreSQL

BENCH_ROWS calls (default 1,000,000) over 90 days are inserted by one SQL statement; then the
overview and the timeseries at 24 h, 7 d, 30 d and 90 d are timed (median of 3) from raw rows (the
code before roll-ups: a bare queryset) and from the roll-ups (a Selection, after rebuild_rollups),
each checked to give the same request count. Last, record_many of 500-event batches with and
without the roll-up that follows writes.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='rollup-bench-')}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from llm import metrics, rollups  # noqa: E402
from llm.models import LLMRequestLog, calls_recorded  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
DAYS = 90
WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30), "90d": timedelta(days=90)}
COLUMNS = (
    "request_id, timestamp, source, provider, model_name, user_id, session_id, trace_id, span_id, parent_span_id, "
    "prompt_text, response_text, prompt_tokens, completion_tokens, total_tokens, latency_ms, ttft_ms, "
    "cost_estimate, status, error_type, error_message, finish_reason, tags, cached_tokens, tokens_estimated"
)


def insert_rows(count: int) -> None:
    table = LLMRequestLog._meta.db_table
    step = DAYS * 86400 / count
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""INSERT INTO {table} ({COLUMNS})
                SELECT gen_random_uuid(), now() - (n * %s || ' seconds')::interval, 'api', 'groq',
                       'model-' || (n %% 6), 'u-' || (n %% 500), '', '', '', '', '', '',
                       n %% 3000, n %% 700, n %% 3000 + n %% 700, 50 + (n::bigint * 7919 %% 20000)::float,
                       CASE WHEN n %% 2 = 0 THEN (n %% 3000)::float END,
                       (n %% 1000) * 0.0000001, CASE WHEN n %% 25 = 0 THEN 'error' ELSE 'success' END,
                       CASE WHEN n %% 25 = 0 THEN (ARRAY['timeout', 'rate_limit', 'server_error'])[n %% 3 + 1]
                            ELSE '' END,
                       CASE WHEN n %% 25 = 0 THEN 'failed ' || n ELSE '' END, 'stop', '{{}}', 0, false
                FROM generate_series(1, %s) AS n""",  # noqa: S608
                [step, count],
            )
        else:
            cursor.execute(
                f"""WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < %s)
                INSERT INTO {table} ({COLUMNS})
                SELECT lower(hex(randomblob(16))),
                       strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || (n * %s) || ' seconds'), 'api', 'groq',
                       'model-' || (n %% 6), 'u-' || (n %% 500), '', '', '', '', '', '',
                       n %% 3000, n %% 700, n %% 3000 + n %% 700, 50 + (n * 7919 %% 20000),
                       CASE WHEN n %% 2 = 0 THEN n %% 3000 END,
                       (n %% 1000) * 0.0000001, CASE WHEN n %% 25 = 0 THEN 'error' ELSE 'success' END,
                       CASE WHEN n %% 25 = 0 THEN (CASE n %% 3 WHEN 0 THEN 'timeout' WHEN 1 THEN 'rate_limit'
                            ELSE 'server_error' END) ELSE '' END,
                       CASE WHEN n %% 25 = 0 THEN 'failed ' || n ELSE '' END, 'stop', '{{}}', 0, false
                FROM seq""",  # noqa: S608
                [count, step],
            )


def median_ms(work: Callable[[], object]) -> tuple[float, object]:
    times, answer = [], None
    for _ in range(3):
        started = time.perf_counter()
        answer = work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), answer


def overview_requests(logs: object) -> int:
    return metrics.overview(logs)["total_requests"]


def timeseries_requests(logs: object, group_by: str) -> int:
    return sum(row["requests"] for row in metrics.timeseries(logs, group_by))


def figures_table() -> None:
    now = timezone.now()
    print("| figure | window | raw rows (before) | roll-ups (after) | requests equal |")
    print("| --- | --- | --- | --- | --- |")
    for name, length in WINDOWS.items():
        start = now - length
        raw = LLMRequestLog.objects.in_window(start, now)
        chosen = metrics.Selection(raw, start, now, rollups_apply=True)
        group_by = metrics.group_by_for(length)
        for figure, work in (
            ("overview", overview_requests),
            (f"timeseries ({group_by})", lambda logs, period=group_by: timeseries_requests(logs, period)),
        ):
            with metrics.aggregate_queries():
                before_ms, before = median_ms(lambda work=work, raw=raw: work(raw))
                after_ms, after = median_ms(lambda work=work, chosen=chosen: work(chosen))
            print(f"| {figure} | {name} | {before_ms:,.0f} ms | {after_ms:,.1f} ms | {before == after} |")


def ingest_rate(batches: int = 20, size: int = 500, *, finish: Callable[[], object] | None = None) -> float:
    """Events a second through record_many; `finish` (timed too) runs after the last batch."""

    def batch() -> list[LLMRequestLog]:
        return [
            LLMRequestLog(request_id=uuid.uuid4(), model_name="model-1", prompt_tokens=10, latency_ms=120.0)
            for _ in range(size)
        ]

    started = time.perf_counter()
    for _ in range(batches):
        LLMRequestLog.objects.record_many(batch())
    if finish is not None:
        finish()
    return batches * size / (time.perf_counter() - started)


def main() -> None:
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    insert_rows(ROWS)
    print(f"{connection.vendor}: inserted {ROWS:,} rows over {DAYS} days in {time.perf_counter() - started:,.0f} s")
    started = time.perf_counter()
    call_command("rebuild_rollups", verbosity=0)
    print(f"rebuild_rollups: {time.perf_counter() - started:,.1f} s")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # what autovacuum does after a bulk load
    figures_table()
    # Three rounds, the three ways interleaved: other work on the machine weighs on each alike.
    rates: dict[str, list[float]] = {"without": [], "throttled": [], "every batch": []}
    for _ in range(3):
        calls_recorded.disconnect(dispatch_uid="llm_rollups_after_write")
        rates["without"].append(ingest_rate())
        calls_recorded.connect(rollups.after_write, dispatch_uid="llm_rollups_after_write")
        rollups.AFTER_WRITE_INTERVAL = 1.0
        rates["throttled"].append(ingest_rate())
        rollups.AFTER_WRITE_INTERVAL = 0  # the worst case: a roll-up after every batch
        rates["every batch"].append(ingest_rate())
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"ingest (record_many, 500-event batches, median of 3): {medians['without']:,.0f} events/s without "
        f"roll-ups, {medians['throttled']:,.0f} with (at most one roll-up a second), "
        f"{medians['every batch']:,.0f} with one after every batch"
    )


if __name__ == "__main__":
    main()
