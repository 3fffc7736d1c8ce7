"""System checks for configuration mistakes that would otherwise show up only at run time."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register
from django.db import DatabaseError, connection


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
