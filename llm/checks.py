"""System checks for configuration mistakes that would otherwise show up only at run time."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Warning, register


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
