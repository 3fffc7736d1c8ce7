"""Time the metrics endpoints, a logs page and a full CSV export over 1,000,000 logged calls.

    .venv/bin/python bench/api_bench.py                         # SQLite in a temporary file
    scripts/with-postgres .venv/bin/python bench/api_bench.py   # a throwaway PostgreSQL
    make bench                                                  # both, and the metrics scrape bench

The data comes from `generate_sample_data --count N --days 30`; every metrics endpoint is asked
for the whole 30 days (the heaviest window the dashboard offers). Each figure is the median of
three requests through Django's test client (view, serializer and JSON included). The export
runs in a separate process so that its peak memory (max RSS) is its own.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEMP_DIR = tempfile.mkdtemp(prefix="api-bench-")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{TEMP_DIR}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from llm.models import LLMRequestLog  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
ENDPOINTS = [
    "/api/metrics/overview/",
    "/api/metrics/token-usage/",
    "/api/metrics/latency/",
    "/api/metrics/errors/",
    "/api/metrics/model-usage/",
    "/api/metrics/daily-stats/",
    "/api/logs/",
]


def client() -> Client:
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_staff": True})
    browser = Client()
    browser.force_login(user)
    return browser


def window() -> dict[str, str]:
    end = timezone.now()
    return {"start_date": (end - timezone.timedelta(days=30)).isoformat(), "end_date": end.isoformat()}


def export_in_this_process() -> None:
    """--export: stream the whole CSV, print rows, seconds and peak memory as JSON."""
    started = time.perf_counter()
    response = client().get("/api/export/csv/")
    rows = -1  # the header line
    for chunk in response.streaming_content:
        rows += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    call_command("migrate", verbosity=0)
    if LLMRequestLog.objects.count() < ROWS:
        call_command("generate_sample_data", count=ROWS, days=30, seed=1, clear=True, verbosity=0)
    database = connection.vendor
    browser = client()
    params = window()
    results = []
    for path in ENDPOINTS:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            response = browser.get(path, params)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code, response.content[:300])
        results.append((path, statistics.median(times), ""))
    export = subprocess.run(
        [sys.executable, __file__, "--export"], capture_output=True, text=True, check=True, env=os.environ
    )
    figures = json.loads(export.stdout.strip().splitlines()[-1])
    rate = figures["rows"] / figures["seconds"]
    results.append(
        (
            f"/api/export/csv/ ({figures['rows']:,} rows, {rate:,.0f} rows/s)",
            figures["seconds"] * 1000,
            f"{figures['peak_mb']:.0f} MB",
        )
    )
    print("\n| database | rows | endpoint | median ms | export peak memory |\n| --- | ---: | --- | ---: | ---: |")
    for path, milliseconds, memory in results:
        print(f"| {database} | {ROWS:,} | {path} | {milliseconds:,.0f} | {memory} |")


if __name__ == "__main__":
    if "--export" in sys.argv:
        export_in_this_process()
    else:
        main()
