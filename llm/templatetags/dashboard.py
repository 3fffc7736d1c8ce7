"""Formatting for the dashboard's figures."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django import template

register = template.Library()


@register.simple_tag
def metric_value(key: str, value: float | None) -> str:
    if value is None or value == "":
        return "—"
    if not isinstance(value, int | float):
        raise TypeError(f"metric_value {key}: {value!r}")
    if key == "error_rate":
        return f"{value:.2f}%"
    if key.endswith("latency_ms"):
        return f"{value:,.0f} ms"
    if key in ("total_cost", "cost"):
        return f"${value:,.4f}"
    return f"{value:,.0f}"


@register.filter
def signed_percent(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:+.1f}%"


@register.filter
def duration(value: timedelta) -> str:
    hours = value.total_seconds() / 3600
    if hours < 48:
        return f"{hours:.0f} h"
    return f"{hours / 24:.0f} days"


@register.filter
def urlencode_dict(params: dict[str, str]) -> str:
    return urlencode(params)


@register.simple_tag
def page_url(params: dict[str, str], page: int) -> str:
    return "?" + urlencode({**params, "page": page})
