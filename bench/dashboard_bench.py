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

from common import ROWS, ensure_sample_data, logged_in_client, median_get_ms
from django.db import connection

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
    ensure_sample_data()
    client = logged_in_client()
    pages = [(path, range_key) for path in PAGES for range_key in ("24h", "30d")]
    pages.append(("/alerts/", "—"))
    results = []
    for path, range_key in pages:
        url = path if range_key == "—" else f"{path}{'&' if '?' in path else '?'}range={range_key}"
        results.append((path, range_key, median_get_ms(client, url)))
    print("\n| database | rows | page | range | median ms |\n| --- | ---: | --- | --- | ---: |")
    for path, range_key, milliseconds in results:
        print(f"| {connection.vendor} | {ROWS:,} | `{path}` | {range_key} | {milliseconds:,.0f} |")


if __name__ == "__main__":
    main()
