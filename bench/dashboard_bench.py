"""Time the dashboard pages over 1,000,000 logged calls (server side: view, queries, template).

    .venv/bin/python bench/dashboard_bench.py                         # SQLite in a temporary file
    scripts/with-postgres .venv/bin/python bench/dashboard_bench.py   # a throwaway PostgreSQL
    BENCH_ROWS=200000 .venv/bin/python bench/dashboard_bench.py       # a smaller table

The data comes from `generate_sample_data --count N --days 30` (with its default alert rules).
Each page is asked for the 24 hours a page opens on and for the whole 30 days (the heaviest
range the filter bar offers); each figure is the median of three requests through Django's test
client. The browser's share (Chart.js drawing the embedded figures) is not included.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEMP_DIR = tempfile.mkdtemp(prefix="dashboard-bench-")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{TEMP_DIR}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from llm.models import LLMRequestLog  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
PAGES = [
    "/",
    "/analytics/",
    "/logs/",
    "/logs/?status=error&model=llama-3.1-8b-instant",
    "/logs/?sort=slowest",
    "/logs/?search=refund",
    "/feedback/",
]


def main() -> None:
    call_command("migrate", verbosity=0)
    if LLMRequestLog.objects.count() < ROWS:
        started = time.perf_counter()
        call_command("generate_sample_data", count=ROWS, days=30, seed=1, clear=True, verbosity=0)
        print(f"generate_sample_data: {ROWS:,} rows in {time.perf_counter() - started:,.0f} s", file=sys.stderr)
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_staff": True})
    browser = Client()
    browser.force_login(user)
    pages = [(path, range_key) for path in PAGES for range_key in ("24h", "30d")]
    pages.append(("/alerts/", "—"))
    results = []
    for path, range_key in pages:
        url = path if range_key == "—" else f"{path}{'&' if '?' in path else '?'}range={range_key}"
        times = []
        for _ in range(3):
            started = time.perf_counter()
            response = browser.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        results.append((path, range_key, statistics.median(times)))
    print("\n| database | rows | page | range | median ms |\n| --- | ---: | --- | --- | ---: |")
    for path, range_key, milliseconds in results:
        print(f"| {connection.vendor} | {ROWS:,} | `{path}` | {range_key} | {milliseconds:,.0f} |")


if __name__ == "__main__":
    main()
