"""Time the metrics endpoints, a logs page and a full CSV export over 1,000,000 logged calls.

    .venv/bin/python bench/api_bench.py                         # SQLite in a temporary file
    scripts/with-postgres .venv/bin/python bench/api_bench.py   # a throwaway PostgreSQL
    make bench                                                  # both, then the dashboard and scrape benches

The data comes from `generate_sample_data --count N --days 30`; every metrics endpoint is asked
for the whole 30 days (the heaviest window the dashboard offers). Each figure is the median of
three requests through Django's test client (view, serializer and JSON included). The export
runs in a separate process so that its peak memory (max RSS) is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROWS, ensure_sample_data, logged_in_client, median_get_ms
from django.db import connection
from django.utils import timezone

ENDPOINTS = [
    "/api/metrics/overview/",
    "/api/metrics/token-usage/",
    "/api/metrics/latency/",
    "/api/metrics/errors/",
    "/api/metrics/model-usage/",
    "/api/metrics/daily-stats/",
    "/api/logs/",
]


def window() -> dict[str, str]:
    end = timezone.now()
    return {"start_date": (end - timezone.timedelta(days=30)).isoformat(), "end_date": end.isoformat()}


def export_in_this_process() -> None:
    """--export: stream the whole CSV, print rows, seconds and peak memory as JSON."""
    started = time.perf_counter()
    response = logged_in_client().get("/api/export/csv/")
    rows = -1  # the header line
    for chunk in response.streaming_content:
        rows += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    ensure_sample_data()
    database = connection.vendor
    client = logged_in_client()
    params = window()
    results = [(path, median_get_ms(client, path, params), "") for path in ENDPOINTS]
    export = subprocess.run([sys.executable, __file__, "--export"], capture_output=True, text=True, check=True)
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
