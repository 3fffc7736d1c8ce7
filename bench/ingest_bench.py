"""The ingest half of bench/hotpath_bench.py on its own: events/s with 1, 4 and 8 clients posting
batches of 500 to POST /api/events/, OTLP spans/s (4 clients, exports of 500), next to a raw COPY of
the same rows, through the server `make run` starts; then checks that every answer's `created`
is a stored row and that the roll-ups, once caught up, equal the rows.

    scripts/with-postgres .venv/bin/python bench/ingest_bench.py
    .venv/bin/python bench/ingest_bench.py                         # SQLite (a temporary file)

Prints the 1-minute load average before and after (the machine may be shared).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import hotpath_bench as bench  # noqa: E402 - after the path


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    raw_key = bench.prepare_database()
    auth = f"Authorization: Bearer {raw_key}\r\n"
    engine = "PostgreSQL" if bench.os.environ["DATABASE_URL"].startswith("postgres") else "SQLite"
    logs = Path(tempfile.mkdtemp(prefix="llm-ingest-bench-"))
    port = bench.free_port()
    loop_run = bench._loop_runner()
    started_load = load()
    with bench.app_server(port, "http://127.0.0.1:9", logs / "app.log"):
        results = bench.run_ingest(port, auth, loop_run)
    ended_load = load()
    print(f"\nIngest on {engine}, {bench.os.cpu_count()} cores, load average {started_load} -> {ended_load}")
    for row in bench.ingest_rows(results):
        print(" | ".join(row))
    print(check_rows())
    print(f"server log: {logs / 'app.log'}", file=sys.stderr)


def check_rows() -> str:
    """The rows stored, and the roll-ups caught up and compared with them."""
    import time

    from django.db import connection
    from django.db.models import Count, Sum

    from llm import rollups
    from llm.models import HourlyRollup, LLMRequestLog

    connection.close()
    rows = LLMRequestLog.objects.count()
    started = time.perf_counter()
    rollups.catch_up()
    catch_up = time.perf_counter() - started
    raw = LLMRequestLog.objects.aggregate(requests=Count("id"), tokens=Sum("total_tokens"))
    rolled = HourlyRollup.objects.aggregate(requests=Sum("requests"), tokens=Sum("total_tokens"))
    verdict = "equal" if raw == rolled else f"DIFFER: rows {raw}, roll-ups {rolled}"
    return f"rows stored {rows:,}; roll-ups left to add after the run: {catch_up:.2f} s; roll-ups vs rows: {verdict}"


if __name__ == "__main__":
    main()
