"""What the roll-up after writes costs ingest through the HTTP API: POST /api/events/ (batches of
500 events with users and a tag, hotpath_bench's) by CLIENTS clients for BENCH_INGEST_SECONDS,
through the server `make run` starts, with the roll-up and without it (a server on
bench/without_rollups_settings.py), ROUNDS rounds interleaved; events/s each, and the medians.

    DATABASE_URL=postgres://... .venv/bin/python bench/ingest_http_rollups.py
    .venv/bin/python bench/ingest_http_rollups.py          # SQLite (a temporary file)

Each "with" round starts with every row rolled up, and the roll-up of the rows its servers left
at the end is timed into it: each row it writes is rolled up once inside its time.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hotpath_bench as hot

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BENCH = Path(__file__).resolve().parent  # where without_rollups_settings.py is


def one_round(port: int, auth: str, loop_run, log: Path, **settings: str) -> float:
    from llm import rollups  # noqa: PLC0415 - after Django is set up

    rollups.catch_up()
    watermark = rollups.watermarks.counted_up_to(rollups.ROLLUPS)
    with hot.app_server(port, "http://127.0.0.1:9", log, **settings):
        loop_run(hot.measure_ingest(port, auth, "/api/events/", [hot.event_batch()], 1, hot.EVENTS_PER_BATCH))
        bodies = hot.prepared(hot.event_batch, int(15_000 * hot.INGEST_SECONDS / hot.EVENTS_PER_BATCH))
        sent = len(bodies)
        started = time.perf_counter()
        result = loop_run(hot.measure_ingest(port, auth, "/api/events/", bodies, CLIENTS, hot.EVENTS_PER_BATCH))
        elapsed = time.perf_counter() - started
    events = (sent - len(bodies)) * hot.EVENTS_PER_BATCH
    assert not result["failures"], result
    by_servers = rollups.watermarks.counted_up_to(rollups.ROLLUPS) - watermark
    assert by_servers == 0 or not settings, "the server without roll-ups rolled up"
    if not settings:  # the tail the servers' roll-ups left
        print(f"  the servers' roll-ups added {by_servers:,} of the {events:,} events", file=sys.stderr)
        started = time.perf_counter()
        rollups.catch_up()
        elapsed += time.perf_counter() - started
    return events / elapsed


def main() -> None:
    raw_key = hot.prepare_database()
    auth = f"Authorization: Bearer {raw_key}\r\n"
    loop_run = hot._loop_runner()
    logs = Path(tempfile.mkdtemp(prefix="ingest-http-rollups-"))
    without = {"DJANGO_SETTINGS_MODULE": "without_rollups_settings", "PYTHONPATH": str(BENCH)}
    rates: dict[str, list[float]] = {"without": [], "with": []}
    loads = [hot.load_average()]
    for number in range(ROUNDS):
        rates["without"].append(one_round(hot.free_port(), auth, loop_run, logs / f"without-{number}.log", **without))
        rates["with"].append(one_round(hot.free_port(), auth, loop_run, logs / f"with-{number}.log"))
        loads.append(hot.load_average())
    told = "; ".join(f"{name}: {', '.join(f'{rate:,.0f}' for rate in got)} events/s" for name, got in rates.items())
    change = statistics.median(rates["with"]) / statistics.median(rates["without"]) - 1
    engine = "PostgreSQL" if os.environ["DATABASE_URL"].startswith("postgres") else "SQLite"
    print(f"{engine}, {CLIENTS} clients, {hot.INGEST_SECONDS:.0f} s rounds: {told}; medians {change:+.1%} with")
    print(f"load averages (1 min) before and after each round pair: {', '.join(loads)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
