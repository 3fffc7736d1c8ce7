"""System checks for configuration mistakes that would otherwise show up only at run time."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register
from django.db import DatabaseError, connection
from django.db.models import Max

# Rows above the roll-ups' watermark beyond which reads slow down enough to say so.
ROLLUPS_BEHIND_WARNING = 100_000


@register()
def groq_key_configured(app_configs, **kwargs) -> list[Warning]:
    if settings.GROQ_API_KEY:
        return []
    return [
        Warning(
            "GROQ_API_KEY is not set: POST /api/llm/prompt/ will answer 503.",
            hint="Set GROQ_API_KEY in the environment or in .env.",
            id="llm.W001",
        )
    ]


@register()
def alert_channels_configured(app_configs, **kwargs) -> list[Warning]:
    if settings.ALERT_WEBHOOK_URL and not settings.ALERT_WEBHOOK_URL.startswith(("http://", "https://")):
        return [Warning("ALERT_WEBHOOK_URL must start with http:// or https://.", id="llm.W002")]
    return []


@register()
def metrics_token_configured(app_configs, **kwargs) -> list[Warning]:
    if not settings.METRICS_REQUIRE_AUTH or settings.METRICS_TOKEN:
        return []
    return [
        Warning(
            "DEBUG=False and METRICS_TOKEN is not set: GET /metrics answers 401 to every request without an "
            "API key, so Prometheus cannot scrape it with a token.",
            hint="Set METRICS_TOKEN (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) and "
            "give Prometheus the same token (authorization: credentials: in prometheus.yml), or an API key.",
            id="llm.W017",
        )
    ]


# The trigram indexes `search` uses on PostgreSQL (migration 0008), and how to create them by hand.
SEARCH_INDEXES = {"llm_log_prompt_trgm": "prompt_text", "llm_log_response_trgm": "response_text"}


def search_index_sql() -> str:
    statements = ["CREATE EXTENSION IF NOT EXISTS pg_trgm;"] + [
        f"CREATE INDEX IF NOT EXISTS {name} ON llm_llmrequestlog USING gin (UPPER({column}) gin_trgm_ops);"
        for name, column in SEARCH_INDEXES.items()
    ]
    return " ".join(statements)


@register(Tags.database)
def search_indexes_present(app_configs, databases=None, **kwargs) -> list[Warning]:
    """On PostgreSQL, `search` needs pg_trgm's indexes, which migration 0008 skips when the database
    user may not create the extension (runs with `migrate` and `check --database default`)."""
    if not databases or "default" not in databases or connection.vendor != "postgresql":
        return []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE indexname = ANY(%s)", [list(SEARCH_INDEXES)])
            present = {name for (name,) in cursor.fetchall()}
            # The migration that creates them, whatever number it has.
            cursor.execute("SELECT 1 FROM django_migrations WHERE app = 'llm' AND name LIKE %s", ["%_search_trigrams"])
            migrated = cursor.fetchone() is not None
    except DatabaseError:
        return []  # not migrated yet, or the database is down: other errors say so
    missing = sorted(set(SEARCH_INDEXES) - present)
    if not migrated or not missing:
        return []
    return [
        Warning(
            f"The search indexes {', '.join(missing)} are missing: `search` reads every row of its window "
            "(seconds at millions of calls). The database user could not create the pg_trgm extension.",
            hint=f"As a PostgreSQL superuser (or the database owner, PostgreSQL 13+), run: {search_index_sql()}",
            id="llm.W003",
        )
    ]


@register()
def rollups_current(app_configs, **kwargs) -> list[Warning]:
    """The roll-ups built in another TIME_ZONE, or far behind the logs."""
    from llm import rollups
    from llm.models import LLMRequestLog, MetricWatermark

    try:
        state = MetricWatermark.objects.filter(name=rollups.ROLLUPS).first()
        newest = LLMRequestLog.objects.aggregate(top=Max("id"))["top"] or 0
    except DatabaseError:
        return []  # no database (yet): migrate first
    found = []
    if state is not None and state.last_id and not rollups.daily_rows_valid(state):
        found.append(
            Warning(
                f"The daily roll-ups were built in TIME_ZONE {state.time_zone or '(another zone)'}, "
                f"not {settings.TIME_ZONE}: daily figures read hourly roll-ups and logs instead (slower).",
                hint="Run manage.py rebuild_rollups.",
                id="llm.W005",
            )
        )
    behind = newest - (state.last_id if state else 0)
    if behind > ROLLUPS_BEHIND_WARNING:
        found.append(
            Warning(
                f"The roll-ups are {behind:,} rows behind the logs: figures stay exact but read those rows.",
                hint="Run manage.py rebuild_rollups (check_alerts also catches up, by "
                f"{rollups.CATCH_UP_LIMIT:,} rows a run).",
                id="llm.W006",
            )
        )
    return found
