"""Formatting for the dashboard's figures."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from uuid import UUID

from django import template
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from llm import formatting

register = template.Library()


@register.simple_tag
@cache
def favicon_data_uri() -> str:
    """static/favicon.svg inlined as a data: URI. A linked icon is fetched at low priority and
    Chromium aborts that fetch when the user moves on quickly, a failed request on every page."""
    svg = Path(finders.find("favicon.svg")).read_text(encoding="utf-8").strip()
    # ":" and "/" encoded too: the svg namespace URL is no link, and pages are checked for none.
    return "data:image/svg+xml," + quote(svg, safe=" =\"'")


class ScrollTableNode(template.Node):
    def __init__(self, label: template.base.FilterExpression, nodelist: template.NodeList) -> None:
        self.label = label
        self.nodelist = nodelist

    def render(self, context: template.Context) -> str:
        # A wide table scrolls inside its own box instead of widening the page (390 px phones). A
        # box that scrolls must take the keyboard focus to be scrolled without a mouse (axe's
        # scrollable-region-focusable), and a focusable region needs a name to be announced.
        return format_html(
            '<div class="table-wrap" tabindex="0" role="region" aria-label="{}">{}</div>',
            self.label.resolve(context),
            self.nodelist.render(context),
        )


@register.tag
def scroll_table(parser: template.base.Parser, token: template.base.Token) -> ScrollTableNode:
    """`{% scroll_table "Alert rules" %}<table>…</table>{% endscroll_table %}`: the table in a
    focusable scroll box named by the label (a string or a variable)."""
    try:
        _, label = token.split_contents()
    except ValueError:
        raise template.TemplateSyntaxError("scroll_table takes one argument, the table's label") from None
    nodelist = parser.parse(("endscroll_table",))
    parser.delete_first_token()
    return ScrollTableNode(parser.compile_filter(label), nodelist)


@register.simple_tag
def metric_value(key: str, value: float | Decimal | None) -> str:
    """A figure written as everywhere else (llm.formatting): "12,000 ms", "$1,234.5000", "—"."""
    if isinstance(value, Decimal):  # a cost summed by the database, or a row's own
        value = float(value)
    return formatting.figure(key, value)


@register.filter
def signed_change(value: float | None, unit: str = "%") -> str:
    """A card's change: a relative change in percent, or a rate's change in percentage points."""
    if value is None:
        return "—"
    if unit == "pp":
        return f"{value:+.2f} pp"
    return f"{value:+.1f}%"


@register.filter
def day_label(row: dict) -> str:
    """A daily row's label: the current day says it is not over, another partial day says so."""
    if row.get("partial"):
        if row["date"] == timezone.localdate().isoformat():
            return f"{row['date']}, today (so far)"
        return f"{row['date']} (partial)"
    return row["date"]


@register.filter
def duration(value: timedelta) -> str:
    hours = value.total_seconds() / 3600
    if hours < 48:
        return f"{hours:.0f} h"
    return f"{hours / 24:.0f} days"


@register.filter
def urlencode_dict(params: dict[str, Any]) -> str:
    return urlencode(params, doseq=True)  # a list value (`tag`) as the parameter repeated


@register.filter
def iso_datetime(value: str) -> datetime | None:
    """An ISO 8601 string (as the trace API gives it) as a datetime, for the `date` filter."""
    return parse_datetime(value) if value else None


@register.simple_tag
def page_url(params: dict[str, str], page: int) -> str:
    return "?" + urlencode({**params, "page": page}, doseq=True)


# A thumb drawn here rather than an emoji: emoji fonts are missing on many servers and desktops
# (the screenshots and the browser tests run on one), where 👍 shows as an empty box.
THUMB_SVG = (
    '<svg class="icon thumb-{direction}" viewBox="0 0 24 24" width="1.1em" height="1.1em" aria-hidden="true" '
    'focusable="false" fill="none" stroke="currentColor" stroke-width="2" stroke-linejoin="round">'
    '<path d="M2 10h4v11H2z"/><path d="M6 10l4-8a2.5 2.5 0 0 1 3 2.5V9h6a2 2 0 0 1 2 2.3l-1.4 7.6'
    'A2.5 2.5 0 0 1 17.1 21H6"/></svg>'
)


@register.simple_tag
def thumb(rating: str) -> str:
    """The thumbs up/down icon of a rating (decorative: always next to words that say it)."""
    direction = "down" if rating == "thumbs_down" else "up"
    return mark_safe(THUMB_SVG.format(direction=direction))  # noqa: S308 -- a constant, no input


# The badge colour of an event or a delivery result on a rule's history page.
EVENT_BADGES = {"fired": "badge-error", "error": "badge-error", "resolved": "badge-ok", "sent": "badge-ok"}
EVENT_BADGES |= {"muted": "badge-warn"}


@register.filter
def event_badge(kind: str) -> str:
    return EVENT_BADGES.get(kind, "")


def id_url(url_name: str, keyword: str, value: str | UUID) -> str:
    """reverse(url_name, kwargs={keyword: value}): the one way the pages link an id's page."""
    return reverse(url_name, kwargs={keyword: value})


@register.filter
def log_url(request_id: UUID) -> str:
    """A call's page: {% url 'log-detail' request_id %}."""
    return id_url("log-detail", "request_id", request_id)


@register.filter
def trace_url(trace_id: str) -> str:
    """A trace's page: {% url 'trace' trace_id %}."""
    return id_url("trace", "trace_id", trace_id)


# The one home of a session's and a user's link: every page shows these ids through them.
def _id_link(url_name: str, keyword: str, value: str, title: str) -> str:
    if not value:
        return "—"
    return format_html('<a href="{}" title="{}">{}</a>', id_url(url_name, keyword, value), title, value)


@register.filter
def session_link(session_id: str) -> str:
    """A session id as a link to its conversation page ("—" for none)."""
    return _id_link("session", "session_id", session_id, "The session's conversation")


@register.filter
def user_link(user_id: str) -> str:
    """A user id as a link to the user's page ("—" for none)."""
    return _id_link("user", "user_id", user_id, "The user's page")


@register.filter
def get_item(mapping: dict, key: str) -> Any:
    return mapping.get(key, key)


@register.simple_tag
def breakdown_key(by: str, key: str) -> str:
    """A breakdown group's name: a user or a session links to its page; no value is "(none)"."""
    if not key:
        return "(none)"
    if by == "user":
        return user_link(key)
    if by == "session":
        return session_link(key)
    return key
