"""Where one batch of events goes, in this process, without a server: median milliseconds per
phase over BATCHES batches of 500 new events (bench/hotpath_bench.py's body), then the roll-up of
what they stored, as the first write after a second does (`rollups.after_write`).

    scripts/with-postgres .venv/bin/python bench/ingest_profile.py
    .venv/bin/python bench/ingest_profile.py                         # SQLite (a temporary file)
    INGEST_PROFILE_SESSIONS=1 ...                                    # events carry session ids
    INGEST_PROFILE_EVENTS=scale ...                                  # bench/scale_bench.py's events
    INGEST_PROFILE_SQL=1 ...                                         # the roll-ups' SQL time per statement

The events are bench/hotpath_bench.py's (20 users, one tag, timestamps within a second) or, with
INGEST_PROFILE_EVENTS=scale, bench/scale_bench.py's (500 users, three models, timestamps over the
last hour, 3 % failures), to tell which part of a batch those cost more.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='llm-ingest-profile-')}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

BATCHES = int(os.environ.get("INGEST_PROFILE_BATCHES", "10"))
SESSIONS = os.environ.get("INGEST_PROFILE_SESSIONS") == "1"
EVENTS = os.environ.get("INGEST_PROFILE_EVENTS", "hotpath")
SQL = os.environ.get("INGEST_PROFILE_SQL") == "1"


def batch_maker():
    """A function answering one new batch's body, of the events EVENTS names."""
    from bench.hotpath_bench import event_batch

    if EVENTS == "hotpath":
        return event_batch
    if EVENTS != "scale":
        sys.exit(f"INGEST_PROFILE_EVENTS: hotpath or scale, not {EVENTS}")
    sys.path.insert(0, str(ROOT / "bench"))  # scale_bench imports its neighbours by name
    import scale_bench

    seeds = iter(range(1_000_000))
    return lambda: scale_bench.event_batches(1, next(seeds))[0]


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.db import connection

    event_batch = batch_maker()

    from llm import events, rollups
    from llm.ingest_limits import parse_json
    from llm.models import LLMRequestLog, calls_recorded

    # The roll-up is timed on its own below, not inside the writes.
    calls_recorded.disconnect(dispatch_uid="llm_rollups_after_write")
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    cpu_started = [time.thread_time()]

    def timed(name: str, started: float) -> float:
        """Wall and this thread's CPU milliseconds since the last mark (the CPU figure does not
        count the database server's work, and changes less with the machine's load)."""
        now, cpu_now = time.perf_counter(), time.thread_time()
        times.setdefault(name, []).append((now - started) * 1000)
        cpu.setdefault(name, []).append((cpu_now - cpu_started[0]) * 1000)
        cpu_started[0] = cpu_now
        return now

    # Warm: prices cached, connection open, a first roll-up done.
    events.store_events(events.parse_events(json.loads(event_batch())))
    rollups.roll_up()
    for _ in range(BATCHES):
        body = event_batch()
        if SESSIONS:
            payload = json.loads(body)
            for index, event in enumerate(payload["events"]):
                event["session_id"] = f"session-{index % 50}"
            body = json.dumps(payload).encode()
        started, cpu_started[0] = time.perf_counter(), time.thread_time()
        payload = parse_json(body)
        started = timed("JSON", started)
        validated = events.parse_events(payload)
        started = timed("validation", started)
        logs = [events.log_from_event(data) for data in validated]
        started = timed("building rows", started)
        created, _ = LLMRequestLog.objects.record_many(logs)
        started = timed("record_many", started)
        assert created == len(logs), created
        rollups.roll_up()
        timed("roll-up of the batch", started)
    # The roll-up as it runs in a server: once a second over what every writer stored since.
    statements: dict[str, list[float]] = {}
    for _ in range(3):
        for _ in range(10):
            events.store_events(events.parse_events(json.loads(event_batch())))
        started, cpu_started[0] = time.perf_counter(), time.thread_time()
        with connection.execute_wrapper(_timing(statements)) if SQL else contextlib.nullcontext():
            rollups.roll_up()
        timed("roll-up of 10 batches", started)
    print(f"{connection.vendor}, {EVENTS} events, median of {BATCHES} batches of 500 (roll-ups: of 3), load {_load()}")
    print(f"  {'':24} {'wall':>8}    {'CPU':>8}")
    for name, values in times.items():
        print(f"  {name:24} {statistics.median(values):8.1f} ms {statistics.median(cpu[name]):8.1f} ms")
    if SQL:
        print("  the roll-ups of 10 batches, wall ms per roll-up by statement (client time included):")
        for kind, spent in sorted(statements.items(), key=lambda item: -sum(item[1])):
            print(f"    {sum(spent) / 3:8.1f} ms  {len(spent) / 3:4.1f} x  {kind}")


def _timing(statements: dict[str, list[float]]):
    """An execute wrapper adding each statement's wall time to `statements`, by its verb and table."""

    def wrapper(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            words = sql.replace('"', "").split()
            verb = words[0]
            table = next(
                (w for w, before in zip(words[1:], words[:-1], strict=True) if before in ("INTO", "FROM", "UPDATE")), ""
            )
            statements.setdefault(f"{verb} {table}", []).append((time.perf_counter() - started) * 1000)

    return wrapper


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


if __name__ == "__main__":
    main()
