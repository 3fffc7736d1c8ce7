"""What storing a batch of 500 new events costs on PostgreSQL, by the ways `record_many` has
(llm/row_insert.py): "copied", COPY straight into the table (what a batch of new request_ids
takes); "staged", COPY into the staging table, then INSERT … SELECT … ON CONFLICT DO NOTHING
RETURNING (what every batch took before); "fallback", a batch holding one stored request_id,
whose COPY into the table fails and is undone before the staged path stores it. Rounds
interleaved; per batch: wall, this process's CPU and the database server's CPU (its processes'
utime + stime), medians of ROUNDS rounds.

    scripts/with-postgres .venv/bin/python bench/ingest_copy_bench.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

ROUNDS = int(os.environ.get("INGEST_COPY_ROUNDS", "5"))
BATCHES = int(os.environ.get("INGEST_COPY_BATCHES", "20"))


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        sys.exit("PostgreSQL only: run it under scripts/with-postgres")
    call_command("migrate", verbosity=0)
    from bench.hotpath_bench import event_batch, postgres_root, tree_cpu_seconds
    from llm import events, row_insert
    from llm.models import LLMRequestLog, cached_price_table, calls_recorded

    # The roll-up after a write is not what is measured here.
    calls_recorded.disconnect(dispatch_uid="llm_rollups_after_write")
    database = postgres_root()
    seed = events.log_from_event(events.parse_events({"model": "seed"})[0])
    LLMRequestLog.objects.record_many([seed])

    def batch(with_stored_id: bool) -> list:
        logs = [events.log_from_event(data) for data in events.parse_events(json.loads(event_batch()))]
        if with_stored_id:
            again = events.parse_events({"model": "seed", "request_id": str(seed.request_id)})[0]
            logs.append(events.log_from_event(again))
        return logs

    def staged(logs: list) -> int:
        """insert_new's staged path alone, as record_many took it for every batch before."""
        prices = cached_price_table()
        for log in logs:
            log.prepare_for_storage(prices)
        logs = sorted(logs, key=lambda log: log.request_id)
        columns = row_insert._Columns.of(LLMRequestLog, connection)
        rows = [columns.values(log, connection) for log in logs]
        with transaction.atomic(), connection.cursor() as cursor:
            return len(row_insert._staged_insert(cursor, columns, rows))

    ways = {
        "copied": (False, lambda logs: LLMRequestLog.objects.record_many(logs)[0]),
        "staged": (False, staged),
        "fallback": (True, lambda logs: LLMRequestLog.objects.record_many(logs)[0]),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    for with_stored_id, store in ways.values():  # warm: prices cached, staging table made
        store(batch(with_stored_id))
    for _ in range(ROUNDS):
        for name, (with_stored_id, store) in ways.items():
            batches = [batch(with_stored_id) for _ in range(BATCHES)]
            database_before = tree_cpu_seconds(database)
            wall, cpu = time.perf_counter(), time.thread_time()
            for logs in batches:
                created = store(logs)
                assert created == 500, created
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            database_cpu = tree_cpu_seconds(database) - database_before
            results[name].append((wall * 1000 / BATCHES, cpu * 1000 / BATCHES, database_cpu * 1000 / BATCHES))
    print(f"record_many of 500 new events, PostgreSQL; median of {ROUNDS} rounds of {BATCHES} batches")
    print(f"1-minute load average {Path('/proc/loadavg').read_text().split()[0]} (a shared machine)")
    print(f"  {'':8} {'wall':>8}    {'client CPU':>10}    {'server CPU':>10}")
    for name, rounds in results.items():
        wall, cpu, database_cpu = (statistics.median(values) for values in zip(*rounds, strict=True))
        print(f"  {name:8} {wall:8.1f} ms {cpu:10.1f} ms {database_cpu:10.1f} ms")


if __name__ == "__main__":
    main()
