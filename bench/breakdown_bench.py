"""Issue 18's speed target: breakdowns, the session and user lists (and their pages) under 500 ms
on PostgreSQL at 1,000,000 calls over 30 days; and the new filters (tag, session_id, source,
error_type) on the logs list and a metric.

    scripts/with-postgres .venv/bin/python bench/breakdown_bench.py
    BENCH_ROWS=200000 scripts/with-postgres .venv/bin/python bench/breakdown_bench.py   # quicker
    BENCH_ONLY=sessions ...                                   # only the requests whose label has it

Loading: bench/scale_data.py's set-based INSERT (sessions are one user's calls in a half hour,
60 % of calls tagged `feature` and `env`, drawn per call), rebuild_rollups, VACUUM ANALYZE.
Breakdowns by source and by a ROLLUP_TAG_KEYS tag, and the figures and sessions under one source
or tag value, read the breakdown roll-ups; `by=tag:env, tag=feature:search` (two keys) reads the calls. Each cell is the
median of 3 GETs through Django's test client (logged in, API and pages alike), in ms; a cell
over 500 ms is marked with *. EXPLAIN lines for the tag filter show whether the GIN index is used.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

from common import logged_in_client, median_get_ms  # noqa: I001 - sets Django up

# isort: split
import scale_data  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from llm.filters import filter_logs  # noqa: E402
from llm.models import LLMRequestLog  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
DAYS = 30
WINDOWS = {"24 h": 1, "7 d": 7, "30 d": 30}
TARGET_MS = 500


def prepare() -> None:
    call_command("migrate", verbosity=0)
    if LLMRequestLog.objects.exists():
        return
    scale_data.load_calls(ROWS, days=DAYS, rebuild_indexes=True, progress=lambda line: print(line, file=sys.stderr))
    scale_data.load_feedback()
    scale_data.make_app_consistent(progress=lambda line: print(line, file=sys.stderr))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def cases(user_id: str, session_id: str) -> list[tuple[str, str, dict[str, str]]]:
    """(label, path, params) of every timed request."""
    breakdowns = [
        (f"breakdown by={by} order_by={order}", "/api/metrics/breakdown/", {"by": by, "order_by": order})
        for by, order in [
            ("model", "cost"),
            ("user", "cost"),
            ("user", "p95"),
            ("session", "cost"),
            ("source", "requests"),
            ("error_type", "errors"),
            ("tag:feature", "cost"),
            ("tag:feature", "p95"),
        ]
    ]
    return [
        *breakdowns,
        ("breakdown by=model, tag=env:staging", "/api/metrics/breakdown/", {"by": "model", "tag": "env:staging"}),
        ("breakdown by=error_type, source=api", "/api/metrics/breakdown/", {"by": "error_type", "source": "api"}),
        (
            "breakdown by=tag:env, tag=feature:search",
            "/api/metrics/breakdown/",
            {"by": "tag:env", "tag": "feature:search"},
        ),
        ("sessions (latest first)", "/api/sessions/", {}),
        ("sessions by cost", "/api/sessions/", {"order_by": "cost"}),
        ("sessions, tag=feature:search", "/api/sessions/", {"tag": "feature:search"}),
        ("sessions, source=otlp, by cost", "/api/sessions/", {"source": "otlp", "order_by": "cost"}),
        ("users (costliest first)", "/api/users/", {}),
        (f"user detail {user_id}", f"/api/users/{user_id}/", {}),
        (f"session detail {session_id}", f"/api/sessions/{session_id}/", {}),
        ("logs, tag=feature:search", "/api/logs/", {"tag": "feature:search"}),
        ("logs, tag=env:staging&tag=feature:search", "/api/logs/", {"tag": ["env:staging", "feature:search"]}),
        ("logs, error_type=timeout", "/api/logs/", {"error_type": "timeout"}),
        ("logs, source=otlp", "/api/logs/", {"source": "otlp"}),
        (f"logs, session_id={session_id}", "/api/logs/", {"session_id": session_id}),
        ("overview, tag=feature:search", "/api/metrics/overview/", {"tag": "feature:search"}),
        ("page /analytics/ by=tag:feature", "/analytics/", {"range": "custom", "by": "tag:feature"}),
        ("page /sessions/", "/sessions/", {"range": "custom"}),
        (f"page /users/{user_id}/", f"/users/{user_id}/", {"range": "custom"}),
    ]


def explain(params: dict[str, str]) -> str:
    """The plan's first line for the logs list's query with these filters."""
    rows = filter_logs(params).queryset.order_by("-timestamp", "-id")[:50]
    sql, sql_params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", sql_params)
        return " / ".join(line for (line,) in cursor.fetchall()[:4])


def main() -> None:
    prepare()
    client = logged_in_client()
    # A session's page shows prompts and answers: the read_text right (superuser holds every role's).
    get_user_model().objects.filter(username="bench").update(is_superuser=True)
    end = timezone.now()
    recent = LLMRequestLog.objects.filter(timestamp__gte=end - timedelta(hours=2)).exclude(session_id="", user_id="")
    sample = recent.values("user_id", "session_id").first()
    user_id, session_id = sample["user_id"], sample["session_id"]
    print(
        f"{LLMRequestLog.objects.count():,} calls over {DAYS} days, {connection.vendor}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| request | " + " | ".join(WINDOWS) + " |")
    print("| --- |" + " ---: |" * len(WINDOWS))
    over = []
    only = os.environ.get("BENCH_ONLY", "")
    for label, path, params in cases(user_id, session_id):
        if only not in label:
            continue
        cells = []
        for window, days in WINDOWS.items():
            query = {"start_date": (end - timedelta(days=days)).isoformat(), "end_date": end.isoformat(), **params}
            if "/sessions/" in path and path != "/api/sessions/" and path != "/sessions/":
                query = {}  # a session's calls: any time, no window
            milliseconds = median_get_ms(client, path, query)
            cells.append(f"{milliseconds:,.0f}{' *' if milliseconds > TARGET_MS else ''}")
            if milliseconds > TARGET_MS:
                over.append(f"{label} {window}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    if connection.vendor == "postgresql":
        window = {"start_date": (end - timedelta(days=30)).isoformat(), "end_date": end.isoformat()}
        print("tag=feature:search plan:", explain({**window, "tag": "feature:search"}))
        print("tag=env plan:", explain({**window, "tag": "env"}))
    print(f"over {TARGET_MS} ms: {', '.join(over) or 'none'}; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
