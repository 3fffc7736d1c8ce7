"""Issue 14's quick fixes before and after, at 1,000,000 calls over 90 days on PostgreSQL.

    scripts/with-postgres .venv/bin/python bench/quickfix_bench.py
    BENCH_ROWS=200000 scripts/with-postgres .venv/bin/python bench/quickfix_bench.py

Migrates to 0007 (the indexes as they were), loads the rows by one set-based INSERT, times the
old ways (SELECT DISTINCT for the model list, an exact COUNT per logs page, one /metrics roll-up
of every row, the user/session/search filters without the new indexes), then migrates to the
latest (the session index and the trigram indexes, their build time printed) and times the new
ways. Each figure is the median of three runs, warm cache. PostgreSQL only (the loader is SQL).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta

from common import ROWS, logged_in_client
from django.core.management import call_command
from django.db import connection
from django.http import QueryDict
from django.utils import timezone

from llm import dashboard, prometheus
from llm.filters import filter_logs, search_logs
from llm.models import LLMRequestLog, MetricWatermark, RequestTotal
from llm.paging import count_rows

DAYS = 90
WINDOWS = {"24 h": 1, "7 d": 7, "30 d": 30, "90 d": 90}
RARE_WORD = "refund"  # in 1 prompt of 1,000
ABSENT_WORD = "zebra"  # in none

LOAD_SQL = """
INSERT INTO llm_llmrequestlog (
    request_id, timestamp, source, provider, model_name, user_id, session_id, trace_id, span_id,
    parent_span_id, prompt_text, response_text, prompt_tokens, completion_tokens, total_tokens,
    latency_ms, ttft_ms, cost_estimate, status, error_type, error_message, finish_reason, tags)
SELECT
    gen_random_uuid(),
    now() - (random() * interval '%(days)s days'),
    'api', 'groq',
    (ARRAY['llama-3.1-8b-instant', 'llama-3.3-70b-versatile', 'gemma2-9b-it', 'mixtral-8x7b-32768',
           'qwen-2.5-32b', 'deepseek-r1-distill-llama-70b', 'openai/gpt-oss-20b', 'whisper-large-v3'])[1 + i %% 8],
    'user-' || (i * 7919 %% 5000),
    'session-' || (i * 104729 %% 100000),
    '', '', '',
    (ARRAY['Summarise this support ticket about a late delivery',
           'Translate the following paragraph into French',
           'Write a haiku about the ocean at night',
           'Explain the difference between TCP and UDP',
           'Draft a polite reply declining the meeting'])[1 + i %% 5]
        || CASE WHEN i %% 1000 = 0 THEN ' and the refund policy' ELSE '' END || ' #' || i,
    'Here is the answer to request ' || i || ': the text goes on for a while to look like a reply.',
    50 + i %% 500, 20 + i %% 300, 70 + i %% 500 + i %% 300,
    100 + (i %% 997) * 3.1, CASE WHEN i %% 3 = 0 THEN NULL ELSE 40 + i %% 200 END,
    (i %% 1000) / 1000000.0,
    CASE WHEN i %% 50 = 0 THEN 'error' ELSE 'success' END,
    CASE WHEN i %% 50 = 0 THEN 'server_error' ELSE '' END,
    CASE WHEN i %% 50 = 0 THEN 'upstream 500' ELSE '' END,
    'stop', '{}'::jsonb
FROM generate_series(1::bigint, %(rows)s) AS i
"""


def median_ms(function: Callable[[], object]) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def get_ms(client, path: str, params: dict[str, str]) -> float:
    def get() -> None:
        response = client.get(path, params)
        assert response.status_code == 200, (path, response.status_code, response.content[:300])

    return median_ms(get)


def window(days: int, **filters: str) -> dict[str, str]:
    end = timezone.now()
    return {"start_date": (end - timedelta(days=days)).isoformat(), "end_date": end.isoformat(), **filters}


def logs(params: dict[str, str]):
    query = QueryDict(mutable=True)
    query.update(params)
    return search_logs(filter_logs(query).queryset, query).order_by("-timestamp", "-id")


def first_page(params: dict[str, str]) -> None:
    list(logs(params)[:51])


def row(label: str, before: float | None, after: float | None, note: str = "") -> None:
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:,.1f}"

    print(f"| {label} | {cell(before)} | {cell(after)} | {note} |", flush=True)


def load() -> None:
    call_command("migrate", "llm", "0007", verbosity=0)
    if LLMRequestLog.objects.count() < ROWS:
        started = time.perf_counter()
        LLMRequestLog.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute(LOAD_SQL % {"days": DAYS, "rows": ROWS})
            cursor.execute("VACUUM ANALYZE llm_llmrequestlog")
        print(f"loaded {ROWS:,} rows over {DAYS} days in {time.perf_counter() - started:,.0f} s", file=sys.stderr)


def old_counts() -> dict[str, float]:
    return {name: median_ms(lambda days=days: logs(window(days)).count()) for name, days in WINDOWS.items()}


def filters_cases() -> dict[str, dict[str, str]]:
    return (
        {f"user_id, {name}": {"days": days, "user_id": "user-42"} for name, days in (("24 h", 1), ("30 d", 30))}
        | {
            f"session_id, {name}": {"days": days, "session_id": "session-4242"}
            for name, days in (("24 h", 1), ("30 d", 30))
        }
        | {
            f"search '{word}', {name}": {"days": days, "search": word}
            for word in (RARE_WORD, ABSENT_WORD)
            for name, days in (("24 h", 1), ("30 d", 30), ("90 d", 90))
        }
    )


def filtered_page_ms(case: dict[str, str], counter: Callable) -> float:
    params = window(case["days"], **{key: value for key, value in case.items() if key != "days"})
    return median_ms(lambda: (first_page(params), counter(logs(params))))


def roll_up_ms(bounded: bool) -> tuple[float, int]:
    """The first scrape's roll-up from an empty watermark, and how many scrapes catch up."""
    RequestTotal.objects.all().delete()
    MetricWatermark.objects.all().delete()
    limit = prometheus.ROLL_UP_MAX_IDS
    prometheus.ROLL_UP_MAX_IDS = limit if bounded else 10**12
    try:
        started = time.perf_counter()
        prometheus.roll_up_requests()
        first = (time.perf_counter() - started) * 1000
        scrapes = 1
        while prometheus.roll_up_requests():
            scrapes += 1
    finally:
        prometheus.ROLL_UP_MAX_IDS = limit
    return first, scrapes


def main() -> None:
    if connection.vendor != "postgresql":
        sys.exit("PostgreSQL only: run it as scripts/with-postgres .venv/bin/python bench/quickfix_bench.py")
    load()
    rows = LLMRequestLog.objects.count()
    old = {
        "models": median_ms(lambda: list(LLMRequestLog.objects.values_list("model_name", flat=True).distinct()[:200])),
        "counts": old_counts(),
        "filters": {label: filtered_page_ms(case, lambda qs: qs.count()) for label, case in filters_cases().items()},
        "roll_up": roll_up_ms(bounded=False),
    }
    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE llm_llmrequestlog")
    migrate_s = time.perf_counter() - started
    new_counts = {name: median_ms(lambda days=days: count_rows(logs(window(days)))) for name, days in WINDOWS.items()}
    client = logged_in_client()

    print(f"\n{rows:,} calls over {DAYS} days, PostgreSQL {connection.pg_version // 10000}, median of 3, ms\n")
    print("| what | before | after | note |\n| --- | ---: | ---: | --- |")
    model_list = median_ms(dashboard.logged_model_names)
    row("model list (model_choices)", old["models"], model_list, "DISTINCT vs loose index scan")
    for name, days in WINDOWS.items():
        count, estimate = count_rows(logs(window(days)))
        exact = logs(window(days)).count()
        note = f"{'estimate' if estimate else 'exact'} {count:,} (exact {exact:,})"
        row(f"logs count, {name}", old["counts"][name], new_counts[name], note)
        params = window(days)
        row(f"GET /api/logs/, {name}", None, get_ms(client, "/api/logs/", params), "")
        row(f"GET /logs/, {name}", None, get_ms(client, "/logs/", {**params, "range": "custom"}), "")
    for label, case in filters_cases().items():
        after = filtered_page_ms(case, lambda qs: count_rows(qs))
        row(f"first page + count, {label}", old["filters"][label], after, "")
    first, scrapes = roll_up_ms(bounded=True)
    row("first /metrics roll-up after upgrade", old["roll_up"][0], first, f"catches up in {scrapes} scrapes")
    print(f"\nmigrate to the new indexes (session b-tree + 2 trigram GIN): {migrate_s:,.1f} s")


if __name__ == "__main__":
    main()
