"""Concurrent ingest through `make run`'s gunicorn (2 workers x 8 threads): answers, 5xx, p50/p99.

    .venv/bin/python bench/ingest_load.py                         # a throwaway SQLite file
    scripts/with-postgres .venv/bin/python bench/ingest_load.py   # the throwaway PostgreSQL

Runs, one after the other on a fresh database: 8 clients posting batches of 100 new events for
INGEST_LOAD_SECONDS (default 20; the load of issue 16), then 16 clients (4 posting new events, 4
overlapping batches, 8 prompts against tests/fake_groq.py). Checks the rows stored against what the
answers said they created.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_groq import FakeGroq  # noqa: E402
from tests.load_clients import (  # noqa: E402
    events_client,
    fresh_ids,
    gunicorn_server,
    manage,
    overlapping_ids,
    prompts_client,
    run_clients,
    server_environment,
)

SECONDS = float(os.environ.get("INGEST_LOAD_SECONDS", "20"))


def stored_rows(environment: dict[str, str]) -> int:
    code = "from llm.models import LLMRequestLog; print(LLMRequestLog.objects.filter(source='api').count())"
    return int(manage(environment, "shell", "-c", code).split()[-1])


def scenario(name: str, database_url: str, groq: FakeGroq, clients_for, work: Path) -> None:
    environment = server_environment(
        database_url, GROQ_BASE_URL=groq.base_url, GROQ_API_KEY="gsk_bench", GROQ_MAX_RETRIES="0"
    )
    manage(environment, "flush", "--noinput")
    key = manage(environment, "create_api_key", f"bench-{name}").strip()
    with gunicorn_server(environment, work / f"{name}.log") as address:
        tally = run_clients(clients_for(address, key), seconds=SECONDS)
    rows = stored_rows(environment)
    exact = rows == tally.created == len(tally.sent_ids) and tally.created + tally.duplicates == tally.events_sent
    print(f"{name}: {tally.summary()}")
    verdict = "exact" if exact else "NOT EXACT"
    print(f"  5xx or no answer: {tally.server_errors() + len(tally.failures)}; events stored {rows:,},")
    print(f"  created {tally.created:,}, duplicates {tally.duplicates:,}: {verdict}")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ingest-load-"))
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{work / 'db.sqlite3'}"
    engine = database_url.split(":", 1)[0]
    print(f"{engine}, {SECONDS:.0f} s per scenario, logs in {work}")
    manage(server_environment(database_url), "migrate", "--noinput")
    groq = FakeGroq().start()
    try:

        def eight_batches(address: str, key: str) -> list:
            return [events_client(address, key, fresh_ids(100), "bench-model", seed) for seed in range(8)]

        def sixteen_mixed(address: str, key: str) -> list:
            overlapping = overlapping_ids(time.monotonic(), size=100, pool=150, round_seconds=0.5)
            clients = [events_client(address, key, fresh_ids(100), "bench-model", seed) for seed in range(4)]
            clients += [events_client(address, key, overlapping, "bench-overlap", 100 + seed) for seed in range(4)]
            return clients + [prompts_client(address, key, "bench-prompt-model") for _ in range(8)]

        scenario("8 clients x 100 events", database_url, groq, eight_batches, work)
        scenario("16 clients, events and prompts", database_url, groq, sixteen_mixed, work)
    finally:
        groq.stop()


if __name__ == "__main__":
    main()
