"""How long a Prometheus scrape of /metrics takes at 100k and 1M logged calls.

    .venv/bin/python bench/metrics_bench.py                         # SQLite in a temporary file
    scripts/with-postgres .venv/bin/python bench/metrics_bench.py   # a throwaway PostgreSQL

For each size: the first scrape (rolls up every row once: the cost paid once after an upgrade),
a steady-state scrape (nothing new), a scrape after 1,000 new calls (what a 15 s scrape interval
sees at ~70 calls per second), and for comparison the GROUP BY over the whole table that a scrape
would cost without running totals.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
TEMP_DIR = tempfile.mkdtemp(prefix="metrics-bench-")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{TEMP_DIR}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count, Sum  # noqa: E402
from django.test import RequestFactory  # noqa: E402

from llm.api.prometheus import metrics  # noqa: E402
from llm.models import FeedbackTotal, LLMRequestLog, MetricWatermark, RequestTotal  # noqa: E402

SIZES = [100_000, 1_000_000]
NEW_ROWS = 1_000

COLUMNS = (
    "request_id, timestamp, source, provider, model_name, user_id, session_id, trace_id, span_id, parent_span_id, "
    "prompt_text, response_text, prompt_tokens, completion_tokens, total_tokens, latency_ms, ttft_ms, "
    "cost_estimate, status, error_type, error_message, finish_reason, tags"
)


def insert_rows(count: int) -> None:
    """Insert `count` synthetic calls in one SQL statement (the ORM would take minutes at 1M)."""
    table = LLMRequestLog._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""INSERT INTO {table} ({COLUMNS})
                SELECT gen_random_uuid(), now() - (n || ' seconds')::interval, 'api', 'groq',
                       'model-' || (n %% 6), 'u-' || (n %% 50), '', '', '', '', '', '',
                       n %% 3000, n %% 700, n %% 3000 + n %% 700, (n %% 20000)::float,
                       CASE WHEN n %% 2 = 0 THEN (n %% 3000)::float END,
                       0.0001, CASE WHEN n %% 25 = 0 THEN 'error' ELSE 'success' END, '', '', 'stop', '{{}}'
                FROM generate_series(1, %s) AS n""",  # noqa: S608
                [count],
            )
        else:
            cursor.execute(
                f"""WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < %s)
                INSERT INTO {table} ({COLUMNS})
                SELECT lower(hex(randomblob(16))), datetime('now', '-' || n || ' seconds'), 'api', 'groq',
                       'model-' || (n %% 6), 'u-' || (n %% 50), '', '', '', '', '', '',
                       n %% 3000, n %% 700, n %% 3000 + n %% 700, n %% 20000, CASE WHEN n %% 2 = 0 THEN n %% 3000 END,
                       '0.0001', CASE WHEN n %% 25 = 0 THEN 'error' ELSE 'success' END, '', '', 'stop', '{{}}'
                FROM seq""",  # noqa: S608
                [count],
            )


def scrape_ms() -> float:
    request = RequestFactory().get("/metrics")
    started = time.perf_counter()
    response = metrics(request)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200
    return elapsed


def full_scan_ms() -> float:
    started = time.perf_counter()
    list(
        LLMRequestLog.objects.values("model_name", "status")
        .annotate(n=Count("id"), tokens=Sum("total_tokens"), latency=Sum("latency_ms"))
        .order_by()
    )
    return (time.perf_counter() - started) * 1000


def main() -> None:
    call_command("migrate", verbosity=0)
    print(f"Database: {connection.vendor}\n")
    print("| rows | first scrape (rolls up all) | steady scrape | after 1,000 new rows | full-table GROUP BY |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for size in SIZES:
        LLMRequestLog.objects.all().delete()
        for model in (RequestTotal, FeedbackTotal, MetricWatermark):
            model.objects.all().delete()
        insert_rows(size)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {LLMRequestLog._meta.db_table}")
        first = scrape_ms()
        steady = statistics.median(scrape_ms() for _ in range(20))
        after = []
        for _ in range(5):
            insert_rows(NEW_ROWS)
            after.append(scrape_ms())
        full = statistics.median(full_scan_ms() for _ in range(3))
        print(
            f"| {size:,} | {first:,.0f} ms | {steady:,.1f} ms | {statistics.median(after):,.1f} ms | {full:,.0f} ms |"
        )


if __name__ == "__main__":
    main()
