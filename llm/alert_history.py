"""One alert rule's timeline, for the page `/alerts/<rule id>/`: what happened to it, newest first.

Built from the rows that already record it, so nothing extra is written: each `AlertLog` gives a
"fired" or "resolved" event with what every channel did with the notice (or why nothing was sent:
muted, no channel), and an "acknowledged" event; each `AlertSilence` gives "muted", and "unmuted"
(someone ended it) or "silence ended" (it ran out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from llm.models import AlertLog, AlertRule, AlertSilence

# The page shows this many notices at most (and every silence: they are few).
HISTORY_NOTICES = 200


@dataclass(frozen=True)
class ChannelResult:
    channel: str
    status: str  # "sent" or "error"
    detail: str = ""


@dataclass(frozen=True)
class TimelineEvent:
    time: datetime
    kind: str  # fired, resolved, acknowledged, muted, unmuted, silence ended
    text: str
    alert_id: int | None = None
    deliveries: list[ChannelResult] = field(default_factory=list)
    # Why nothing was sent, or "pending"/"sending" before delivery.
    delivery_note: str = ""


def channel_results(notifications: dict[str, dict[str, Any]]) -> list[ChannelResult]:
    results = []
    for channel, result in notifications.items():
        status = str(result.get("status", ""))
        if result.get("error"):
            detail = str(result["error"])
        elif result.get("http_status"):
            detail = f"HTTP {result['http_status']}"
        elif result.get("recipients"):
            detail = ", ".join(result["recipients"])
        else:
            detail = ""
        results.append(ChannelResult(channel, status, detail))
    return results


def notice_events(alert: AlertLog) -> list[TimelineEvent]:
    deliveries = channel_results(alert.notifications or {})
    note = "" if deliveries else alert.delivery_summary
    events = [TimelineEvent(alert.triggered_at, alert.kind, alert.message, alert.pk, deliveries, note)]
    if alert.acknowledged and alert.acknowledged_at:
        who = alert.acknowledged_by_name or (alert.acknowledged_by.get_username() if alert.acknowledged_by else "")
        text = f"Acknowledged by {who}" if who else "Acknowledged"
        events.append(TimelineEvent(alert.acknowledged_at, "acknowledged", text, alert.pk))
    return events


def silence_events(silence: AlertSilence, now: datetime) -> list[TimelineEvent]:
    who = f" by {silence.created_by_name}" if silence.created_by_name else ""
    until = timezone.localtime(silence.ends_at).strftime("%Y-%m-%d %H:%M")
    events = [TimelineEvent(silence.starts_at, "muted", f"Muted{who} until {until}: {silence.reason}")]
    if silence.ended_at:
        by = f" by {silence.ended_by_name}" if silence.ended_by_name else ""
        events.append(TimelineEvent(silence.ended_at, "unmuted", f"Unmuted{by}"))
    elif silence.ends_at <= now:
        events.append(TimelineEvent(silence.ends_at, "silence ended", "The silence ran out"))
    return events


def timeline(rule: AlertRule, now: datetime | None = None) -> list[TimelineEvent]:
    """The rule's events, newest first (two queries: its latest notices, its silences)."""
    now = now or timezone.now()
    notices = rule.logs.select_related("acknowledged_by").order_by("-triggered_at", "-id")[:HISTORY_NOTICES]
    events = [event for alert in notices for event in notice_events(alert)]
    events += [event for silence in rule.silences.all() for event in silence_events(silence, now)]
    return sorted(events, key=lambda event: event.time, reverse=True)
