"""What the roll-up after a write costs an ingest batch: BATCHES batches of 500 events (a few
models, sources, users, sessions and `feature`/`env` tags, timestamps within the last minute,
like an SDK's batch) each stored with `record_many` and then rolled up (`roll_up` as the
after-write receiver calls it), timed apart; median and p95 per batch in ms.

    .venv/bin/python bench/rollup_ingest_bench.py                          # SQLite (a temporary file)
    scripts/with-postgres .venv/bin/python bench/rollup_ingest_bench.py    # PostgreSQL

The after-write roll-up is off while it runs, so each part is timed on its own.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from datetime import timedelta

from common import ROWS  # noqa: F401, I001 - sets Django up

# isort: split
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from llm import rollups  # noqa: E402
from llm.models import LLMRequestLog, ModelPrice  # noqa: E402

BATCHES = int(os.environ.get("BENCH_BATCHES", "20"))
EVENTS_PER_BATCH = 500
MODELS = ["llama-3.1-8b-instant", "llama-3.3-70b-versatile", "openai/gpt-oss-20b"]
SOURCES = ["proxy", "api", "otlp"]
FEATURES = ["support", "search", "summaries", "translate"]


def batch(number: int) -> list[LLMRequestLog]:
    now = timezone.now()
    return [
        LLMRequestLog(
            request_id=uuid.uuid4(),
            timestamp=now - timedelta(milliseconds=index * 100),
            source=SOURCES[index % 3],
            model_name=MODELS[index % 3],
            user_id=f"user-{index % 20}",
            session_id=f"session-{number}-{index % 60}",
            prompt_text="What is the capital of France?",
            response_text="Paris.",
            prompt_tokens=120 + index % 50,
            completion_tokens=40 + index % 30,
            latency_ms=250.5 + index,
            ttft_ms=80.25,
            status="error" if index % 25 == 0 else "success",
            error_type="timeout" if index % 25 == 0 else "",
            tags={"feature": FEATURES[index % 4], "env": "production" if index % 10 else "staging"},
        )
        for index in range(EVENTS_PER_BATCH)
    ]


def main() -> None:
    call_command("migrate", verbosity=0)
    settings.ROLLUPS_AFTER_WRITE = False
    prices = ModelPrice.objects.price_table()
    rollups.roll_up()  # the first roll-up (an empty table)
    stored, rolled = [], []
    for number in range(BATCHES):
        logs = batch(number)
        for log in logs:
            log.prepare_for_storage(prices)
        started = time.perf_counter()
        LLMRequestLog.objects.record_many(logs)
        middle = time.perf_counter()
        rollups.roll_up(limit=rollups.AFTER_WRITE_LIMIT, try_lock=True)
        stored.append((middle - started) * 1000)
        rolled.append((time.perf_counter() - middle) * 1000)
    tag_keys = ",".join(getattr(settings, "ROLLUP_TAG_KEYS", [])) or "-"
    print(
        f"{settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, ROLLUP_TAG_KEYS {tag_keys}, "
        f"{BATCHES} batches of {EVENTS_PER_BATCH}, load average {os.getloadavg()[0]:.1f}"
    )
    for name, times in (("record_many", stored), ("roll_up", rolled)):
        ordered = sorted(times)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        print(f"{name}: median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms")


if __name__ == "__main__":
    main()
