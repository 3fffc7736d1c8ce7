"""Where the alerts page's time goes, on an existing database (read-only: it migrates nothing).

    DATABASE_URL=postgres://... .venv/bin/python bench/alerts_page_bench.py

Prints the page's median over warm requests, the median of its rules' evaluation alone
(alerts.evaluate_rules: the reading of every rule's window), the rest (the other queries and the
template), the reading's queries by table with their time and rows, and how many calls lie above
the roll-ups' watermark (each reading of a window that ends now reads them again). Logging in
(bench/common.py) updates the bench user and writes a session row; nothing else is written.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import logged_in_client  # noqa: E402  (sets Django up)
from django.conf import settings  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.utils import timezone  # noqa: E402

from llm import alerts  # noqa: E402
from llm.metrics import rollup_state  # noqa: E402
from llm.models import AlertRule, LLMRequestLog  # noqa: E402

RUNS = int(os.environ.get("RUNS", "7"))


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def evaluate() -> None:
    now = timezone.now()
    alerts.evaluate_rules(AlertRule.objects.order_by("name").with_channels_and_silences(now), now)


def main() -> None:
    client = logged_in_client()
    for _ in range(2):  # warm: connections, templates, caches of the process
        client.get("/alerts/")
    pages, readings = [], []
    for _ in range(RUNS):  # interleaved, so that both see the same load
        pages.append(timed(lambda: client.get("/alerts/")))
        readings.append(timed(evaluate))
    page, reading = statistics.median(pages), statistics.median(readings)
    print(f"rules: {AlertRule.objects.count()}; load {load()}")
    print(f"/alerts/ median {page:.0f} ms (min {min(pages):.0f})")
    print(f"  evaluate_rules median {reading:.0f} ms (min {min(readings):.0f})")
    print(f"  the rest (other queries, template) ~{page - reading:.0f} ms")

    settings.DEBUG = True
    reset_queries()
    evaluate()
    by_table: dict[str, list[float]] = defaultdict(list)
    for query in connection.queries:
        table = re.search(r'FROM "(\w+)"', query["sql"])
        by_table[table.group(1) if table else "?"].append(float(query["time"]) * 1000)
    settings.DEBUG = False
    print("  the reading's queries by table:")
    for table, times in sorted(by_table.items(), key=lambda item: -sum(item[1])):
        print(f"    {table}: {len(times)} queries, {sum(times):.0f} ms")
    watermark = rollup_state().last_id
    above = LLMRequestLog.objects.filter(pk__gt=watermark).count()
    print(f"  calls above the roll-ups' watermark ({watermark}): {above}; load {load()}")


if __name__ == "__main__":
    main()
