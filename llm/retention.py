"""Deleting old data (purge_logs): logs older than the retention period, their feedback, the
traces' context spans, and acknowledged alert notices, in small batches so no transaction holds
locks for long."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from llm import prometheus, rollups, watermarks
from llm.models import (
    AlertLog,
    AlertLogQuerySet,
    LLMRequestLog,
    LLMRequestLogQuerySet,
    TraceSpan,
    TraceSpanQuerySet,
    UserFeedback,
)

# Rows deleted per transaction: each batch is a short transaction, so writers and readers of the
# log table are never held up for long, and a purge that is stopped halfway keeps what it did.
BATCH_SIZE = 5_000


@dataclass
class PurgeResult:
    cutoff: datetime
    logs: int = 0
    feedback: int = 0
    alert_logs: int = 0
    spans: int = 0
    batches: int = 0


def old_logs(cutoff: datetime, *, counted_only: bool = True) -> LLMRequestLogQuerySet:
    """Logs older than `cutoff`. `counted_only`: only those the Prometheus totals and the roll-ups
    already count, with all their feedback counted too; deleting an uncounted row would make a
    counter or a roll-up miss it."""
    logs = LLMRequestLog.objects.filter(timestamp__lt=cutoff).order_by()
    if counted_only:
        counted = min(prometheus.counted_up_to(prometheus.REQUESTS), watermarks.counted_up_to(rollups.ROLLUPS))
        logs = logs.filter(id__lte=counted).exclude(feedback__id__gt=prometheus.counted_up_to(prometheus.FEEDBACK))
    return logs


def old_spans(cutoff: datetime) -> TraceSpanQuerySet:
    """Context spans that started before `cutoff`: they go by time, with the calls of their
    time (no counter or roll-up counts them, so none has to catch up first)."""
    return TraceSpan.objects.filter(start__lt=cutoff).order_by()


def old_alert_logs(cutoff: datetime) -> AlertLogQuerySet:
    """Acknowledged notices older than `cutoff`; unacknowledged ones stay until someone looks."""
    return AlertLog.objects.filter(acknowledged=True, triggered_at__lt=cutoff).order_by()


def purge(
    older_than_days: int, *, dry_run: bool = False, batch_size: int = BATCH_SIZE, now: datetime | None = None
) -> PurgeResult:
    """Delete what is older than `older_than_days`; answers the counts (what would go, on a dry run)."""
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1.")
    cutoff = (now or timezone.now()) - timedelta(days=older_than_days)
    result = PurgeResult(cutoff=cutoff)
    if dry_run:
        # Writes nothing, not even the roll-up a real run starts with: counts every old row.
        logs = old_logs(cutoff, counted_only=False)
        result.logs = logs.count()
        result.feedback = UserFeedback.objects.filter(request__in=logs).count()
        result.alert_logs = old_alert_logs(cutoff).count()
        result.spans = old_spans(cutoff).count()
        return result

    # First add everything to the running totals and the roll-ups, so the deleted rows stay
    # counted: figures over old windows keep reading them from the roll-ups.
    prometheus.roll_up(limit=None)
    rollups.catch_up()

    def delete_logs(ids: list[int]) -> None:
        result.feedback += UserFeedback.objects.filter(request_id__in=ids).delete()[0]
        result.logs += LLMRequestLog.objects.filter(id__in=ids).delete()[1].get("llm.LLMRequestLog", 0)

    def delete_alert_logs(ids: list[int]) -> None:
        result.alert_logs += AlertLog.objects.filter(id__in=ids).delete()[0]

    def delete_spans(ids: list[int]) -> None:
        result.spans += TraceSpan.objects.filter(id__in=ids).delete()[0]

    result.batches += _in_batches(lambda: old_logs(cutoff), delete_logs, batch_size)
    if result.logs:
        rollups.forget_purged_sessions(cutoff)  # the session summaries answer what the logs hold
    result.batches += _in_batches(lambda: old_spans(cutoff), delete_spans, batch_size)
    result.batches += _in_batches(lambda: old_alert_logs(cutoff), delete_alert_logs, batch_size)
    return result


def _in_batches(rows: Callable[[], QuerySet], delete: Callable[[list[int]], None], batch_size: int) -> int:
    """Delete what `rows()` selects, `batch_size` ids per transaction; answers the number of batches."""
    batches = 0
    while True:
        with transaction.atomic():
            ids = list(rows().order_by("id").values_list("id", flat=True)[:batch_size])
            if not ids:
                return batches
            delete(ids)
        batches += 1
