"""Budgets and the spend forecast on 1,000,000 calls over 90 days (bench/rollup_bench.py's INSERT,
six models, 500 users, then rebuild_rollups): GET /api/metrics/forecast/ per period, GET
/api/budgets/ with one budget of each scope, the overview page, and the prompt path's refresh of
the spent hard-limit budgets (llm.budgets.spent_hard_limits, once per HARD_LIMIT_CACHE_SECONDS
per worker). Medians of 3.

    .venv/bin/python bench/budget_bench.py                                   # SQLite, a temporary file
    BENCH_SQLITE=/tmp/budgets.sqlite3 .venv/bin/python bench/budget_bench.py # kept between runs
    scripts/with-postgres .venv/bin/python bench/budget_bench.py             # PostgreSQL
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from decimal import Decimal

if os.environ.get("BENCH_SQLITE") and "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{os.environ['BENCH_SQLITE']}"

from common import logged_in_client  # noqa: E402 - sets Django up

# isort: split
import rollup_bench  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from llm import budgets  # noqa: E402
from llm.models import Budget, LLMRequestLog  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
SCOPES = [
    ("all", ""),
    ("model", "model-1"),
    ("user", "u-7"),
    ("tag", "feature:chat"),
    ("api_key", "ci"),
]


def prepare() -> None:
    call_command("migrate", verbosity=0)
    if not LLMRequestLog.objects.exists():
        started = time.perf_counter()
        rollup_bench.insert_rows(ROWS)
        call_command("rebuild_rollups", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
        print(f"loaded {ROWS:,} calls in {time.perf_counter() - started:,.0f} s", file=sys.stderr)
    Budget.objects.all().delete()
    for index, (scope, value) in enumerate(SCOPES):
        for period in ("day", "week", "month"):
            Budget.objects.create(
                name=f"{scope} {period}",
                scope=scope,
                scope_value=value,
                period=period,
                amount_usd=Decimal(10 + index),
                hard_limit=True,
            )


def median_ms(work) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def get(client, path: str, params: dict | None = None):
    def work():
        response = client.get(path, params or {})
        assert response.status_code == 200, (path, response.status_code, response.content[:300])

    return work


def main() -> None:
    prepare()
    client = logged_in_client()
    print(f"{connection.vendor}, {LLMRequestLog.objects.count():,} calls, {Budget.objects.count()} budgets")
    for period in ("day", "week", "month"):
        took = median_ms(get(client, "/api/metrics/forecast/", {"period": period}))
        print(f"GET /api/metrics/forecast/?period={period}: {took:,.0f} ms")
    print(f"GET /api/budgets/ (15 budgets, 5 scopes x 3 periods): {median_ms(get(client, '/api/budgets/')):,.0f} ms")
    print(f"GET / (overview with 15 budget cards): {median_ms(get(client, '/')):,.0f} ms")

    def refresh():
        budgets.forget_spent()
        budgets.spent_hard_limits(timezone.now())

    print(f"hard-limit refresh (spend of 15 budgets): {median_ms(refresh):,.0f} ms")


if __name__ == "__main__":
    main()
