"""System checks for configuration mistakes that would otherwise show up only at run time."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Warning, register
from django.db import DatabaseError
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
                id="llm.W003",
            )
        )
    behind = newest - (state.last_id if state else 0)
    if behind > ROLLUPS_BEHIND_WARNING:
        found.append(
            Warning(
                f"The roll-ups are {behind:,} rows behind the logs: figures stay exact but read those rows.",
                hint="Run manage.py rebuild_rollups (check_alerts also catches up, by "
                f"{rollups.CATCH_UP_LIMIT:,} rows a run).",
                id="llm.W004",
            )
        )
    return found
