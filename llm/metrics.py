"""Every figure of the metrics API and the dashboard, computed in the database.

Each function takes an already filtered `LLMRequestLog` queryset (see `llm.filters`) and answers
plain dicts with SPEC's field names. Nothing here loads log rows into Python: counts, sums,
averages and percentiles are aggregate queries, grouped by the database.

Percentiles interpolate linearly between closest ranks, as PostgreSQL's `percentile_cont` and
NumPy's default do. SQLite has no such function, so `register_sqlite_functions` adds one to each
SQLite connection; both databases give the same figure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import connections, transaction
from django.db.models import Aggregate, Avg, Count, F, Field, FloatField, Max, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import TruncDay, TruncHour, TruncMinute, TruncMonth
from django.utils import timezone

from llm.models import LLMRequestLog, LLMRequestLogQuerySet, ModelPrice, UserFeedback

# Sorting memory for the percentile queries on PostgreSQL. With the default 4 MB the planner walks
# the (model_name, timestamp) index to group by model, reading the table at random: 3.7 s over a
# million rows instead of 0.8 s for a sequential scan and an in-memory sort (bench/api_bench.py).
PERCENTILE_WORK_MEM = "64MB"

GROUP_BY = {"hour": TruncHour, "day": TruncDay, "month": TruncMonth}
# The dashboard's 1-hour range also draws per minute; the API offers SPEC's three.
TRUNCATE = {"minute": TruncMinute, **GROUP_BY}
FAILED = Q(status=LLMRequestLog.Status.ERROR)
# A period's p50/p95/p99 from a handful of calls is noise drawn as a trend (one slow call of five
# is "the p95"): below this many calls the per-period percentiles are None, a gap in the charts and
# "—" in the tables. Totals over the whole window (overview, per model) are not affected.
MIN_CALLS_FOR_PERCENTILE = 20


class Percentile(Aggregate):
    """The `fraction` percentile (0–1) of an expression, linearly interpolated."""

    function = "PERCENTILE_CONT"
    name = "Percentile"
    output_field = FloatField()
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be between 0 and 1")
        super().__init__(expression, fraction=repr(float(fraction)), **extra)

    def as_sqlite(self, compiler, connection, **extra_context):
        # Aggregate.as_sql passes its own template when there is a filter: change the copy's.
        clone = self.copy()
        clone.function = "llm_percentile_cont"
        clone.template = "%(function)s(%(expressions)s, %(fraction)s)"
        return super(Percentile, clone).as_sql(compiler, connection, **extra_context)


class FloatList(Field):
    """The output of Percentiles: a PostgreSQL float8[] arrives as a list, SQLite's as JSON text."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> list[float] | None:
        return json.loads(value) if isinstance(value, str) else value


class Percentiles(Aggregate):
    """Several percentiles of one expression from a single sort (one ORDER BY, not one per fraction)."""

    function = "PERCENTILE_CONT"
    name = "Percentiles"
    output_field = FloatList()
    template = "%(function)s(ARRAY[%(fractions)s]::float8[]) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, fractions: tuple[float, ...], **extra: Any) -> None:
        if not all(0 <= fraction <= 1 for fraction in fractions):
            raise ValueError("fractions must be between 0 and 1")
        super().__init__(expression, fractions=",".join(repr(float(f)) for f in fractions), **extra)

    def as_sqlite(self, compiler, connection, **extra_context):
        clone = self.copy()
        clone.function = "llm_percentiles_cont"
        clone.template = "%(function)s(%(expressions)s, '%(fractions)s')"
        return super(Percentiles, clone).as_sql(compiler, connection, **extra_context)


class _SQLitePercentileCont:
    """percentile_cont for SQLite: collects the group's values inside SQLite, interpolates at the end."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.fraction = 0.5

    def step(self, value: float | None, fraction: float) -> None:
        if value is not None:
            self.values.append(value)
        self.fraction = fraction

    def finalize(self) -> float | None:
        return interpolated_percentile(self.values, self.fraction)


class _SQLitePercentilesCont:
    """Several percentiles at once for SQLite: answers a JSON list, like PostgreSQL's float8[]."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.fractions = ""

    def step(self, value: float | None, fractions: str) -> None:
        if value is not None:
            self.values.append(value)
        self.fractions = fractions

    def finalize(self) -> str | None:
        if not self.values:
            return None
        self.values.sort()
        return json.dumps(
            [interpolated_percentile(self.values, float(f), is_sorted=True) for f in self.fractions.split(",")]
        )


def interpolated_percentile(values: list[float], fraction: float, *, is_sorted: bool = False) -> float | None:
    """Linear interpolation between closest ranks (NumPy's default method)."""
    if not values:
        return None
    ordered = values if is_sorted else sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@contextmanager
def aggregate_queries(using: str = "default") -> Iterator[None]:
    """A transaction in which heavy aggregate queries get PERCENTILE_WORK_MEM (PostgreSQL only)."""
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL work_mem = '{PERCENTILE_WORK_MEM}'")
        yield


def register_sqlite_functions(sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created receiver: add llm_percentile_cont to every SQLite connection."""
    if connection.vendor == "sqlite":
        connection.connection.create_aggregate("llm_percentile_cont", 2, _SQLitePercentileCont)
        connection.connection.create_aggregate("llm_percentiles_cont", 2, _SQLitePercentilesCont)


def _number(value: Any) -> float:
    """Sums are NULL over no rows; the API answers 0 (and floats, not Decimal strings)."""
    if value is None:
        return 0
    # SQLite sums decimals as floats: round back to the column's 10 places.
    return float(round(value, 10)) if isinstance(value, Decimal) else value


def _rate(part: int, whole: int) -> float:
    return part * 100.0 / whole if whole else 0.0


FRACTIONS = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def _latency_aggregates(*names: str, average: bool = True) -> dict[str, Aggregate]:
    """Average latency and the named percentiles (p50, p95, p99), all from one sort per group."""
    aggregates: dict[str, Aggregate] = {"avg_latency_ms": Avg("latency_ms")} if average else {}
    aggregates["latency_percentiles"] = Percentiles("latency_ms", tuple(FRACTIONS[name] for name in names))
    return aggregates


def _spread(row: dict[str, Any], *names: str) -> dict[str, Any]:
    """Turn the `latency_percentiles` list of a result row into p50_latency_ms, … keys."""
    values = row.pop("latency_percentiles") or [None] * len(names)
    return {**row, **{f"{name}_latency_ms": value for name, value in zip(names, values, strict=True)}}


def overview(logs: LLMRequestLogQuerySet) -> dict[str, Any]:
    figures = logs.aggregate(
        total_requests=Count("id"),
        failed_requests=Count("id", filter=FAILED),
        total_tokens=Sum("total_tokens"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        total_cost=Sum("cost_estimate"),
        unique_users=Count("user_id", distinct=True, filter=~Q(user_id="")),
        **_latency_aggregates("p50", "p95", "p99"),
    )
    figures = _spread(figures, "p50", "p95", "p99")
    total, failed = figures["total_requests"], figures["failed_requests"]
    return {
        "total_requests": total,
        "successful_requests": total - failed,
        "failed_requests": failed,
        "error_rate": _rate(failed, total),
        "total_tokens": _number(figures["total_tokens"]),
        "prompt_tokens": _number(figures["prompt_tokens"]),
        "completion_tokens": _number(figures["completion_tokens"]),
        "avg_latency_ms": figures["avg_latency_ms"],
        "p50_latency_ms": figures["p50_latency_ms"],
        "p95_latency_ms": figures["p95_latency_ms"],
        "p99_latency_ms": figures["p99_latency_ms"],
        "total_cost": _number(figures["total_cost"]),
        "unique_users": figures["unique_users"],
    }


def _by_period(logs: LLMRequestLogQuerySet, group_by: str, **aggregates: Aggregate) -> list[dict[str, Any]]:
    """One row per period that has traffic, oldest first; `period` in TIME_ZONE, ISO 8601."""
    truncate = TRUNCATE[group_by]
    rows = logs.annotate(period=truncate("timestamp")).values("period").annotate(**aggregates).order_by("period")
    return [{**row, "period": row["period"].isoformat()} for row in rows]


FIXED_STEPS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1)}


def period_end(period_start: datetime, group_by: str) -> datetime:
    """Where a period that starts at `period_start` ends: days and months end at local midnight."""
    if group_by in FIXED_STEPS:
        return period_start + FIXED_STEPS[group_by]
    local = timezone.localtime(period_start)
    if group_by == "day":
        following = local.date() + timedelta(days=1)
    else:
        following = (local.date().replace(day=28) + timedelta(days=4)).replace(day=1)
    return timezone.make_aware(datetime.combine(following, time.min))


def is_partial(
    period_start: datetime,
    group_by: str,
    start: datetime | None,
    end: datetime | None,
    now: datetime | None = None,
) -> bool:
    """True when the window covers only part of the period: it starts inside it, or the period
    has not ended yet (by the window's end or by the clock). Its figures are not comparable to a
    whole period's, so pages draw it differently."""
    cutoff = min(end, now or timezone.now()) if end else now or timezone.now()
    return (start is not None and period_start < start) or period_end(period_start, group_by) > cutoff


def token_usage(logs: LLMRequestLogQuerySet, group_by: str = "day") -> list[dict[str, Any]]:
    rows = _by_period(
        logs,
        group_by,
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        total_tokens=Sum("total_tokens"),
        requests=Count("id"),
    )
    return [{key: _number(value) if key != "period" else value for key, value in row.items()} for row in rows]


def _traffic_aggregates() -> dict[str, Aggregate]:
    return {
        "requests": Count("id"),
        "errors": Count("id", filter=FAILED),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "total_tokens": Sum("total_tokens"),
        "cost": Sum("cost_estimate"),
    }


def _traffic(row: dict[str, Any], *percentiles: str, min_calls: int = 0) -> dict[str, Any]:
    """A row of _traffic_aggregates and _latency_aggregates as the API answers it; with fewer than
    `min_calls` requests its percentiles are None."""
    row = _spread(row, *percentiles)
    if row["requests"] < min_calls:
        row |= {f"{name}_latency_ms": None for name in percentiles}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cost"):
        row[key] = _number(row[key])
    row["error_rate"] = _rate(row["errors"], row["requests"])
    return row


def _with_partial(
    rows: list[dict[str, Any]], group_by: str, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    now = timezone.now()
    return [
        {**row, "partial": is_partial(datetime.fromisoformat(row["period"]), group_by, start, end, now)} for row in rows
    ]


def timeseries(
    logs: LLMRequestLogQuerySet,
    group_by: str = "hour",
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[dict[str, Any]]:
    """Requests, errors, tokens, cost and latency per period: what the dashboard's charts draw.

    `start` and `end` are the window `logs` was filtered to; they decide which periods are
    `partial`. Percentiles of a period with fewer than MIN_CALLS_FOR_PERCENTILE calls are None.
    """
    rows = _by_period(logs, group_by, **_traffic_aggregates(), **_latency_aggregates("p50", "p95", "p99"))
    rows = [_traffic(row, "p50", "p95", "p99", min_calls=MIN_CALLS_FOR_PERCENTILE) for row in rows]
    return _with_partial(rows, group_by, start, end)


def empty_period(period_start: datetime, group_by: str, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    """A timeseries row for a period without traffic, for charts whose x axis is time."""
    return {
        "period": period_start.isoformat(),
        "requests": 0,
        "errors": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost": 0,
        "avg_latency_ms": None,
        "p50_latency_ms": None,
        "p95_latency_ms": None,
        "p99_latency_ms": None,
        "error_rate": 0.0,
        "partial": is_partial(period_start, group_by, start, end),
    }


DAILY_FIELDS = [
    "requests",
    "errors",
    "error_rate",
    "total_tokens",
    "cost",
    "avg_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    "partial",
]


def daily_stats(
    logs: LLMRequestLogQuerySet, *, start: datetime | None = None, end: datetime | None = None
) -> list[dict[str, Any]]:
    """Per day (TIME_ZONE); `partial` and the percentile minimum as in `timeseries`."""
    rows = _by_period(logs, "day", **_traffic_aggregates(), **_latency_aggregates("p95", "p99"))
    rows = _with_partial(
        [_traffic(row, "p95", "p99", min_calls=MIN_CALLS_FOR_PERCENTILE) for row in rows], "day", start, end
    )
    return [{"date": row["period"][:10], **{key: row[key] for key in DAILY_FIELDS}} for row in rows]


def latency_by_model(logs: LLMRequestLogQuerySet) -> list[dict[str, Any]]:
    rows = (
        logs.values("model_name")
        .annotate(requests=Count("id"), **_latency_aggregates("p50", "p95", "p99"))
        .order_by("-requests", "model_name")
    )
    return [_spread({"model": row.pop("model_name"), **row}, "p50", "p95", "p99") for row in rows]


def model_usage(logs: LLMRequestLogQuerySet) -> list[dict[str, Any]]:
    """Per model; `priced` is false for a model missing from the price table (its cost counts as 0)."""
    rows = (
        logs.values("model_name")
        .annotate(**_traffic_aggregates(), **_latency_aggregates("p50", "p95", "p99"))
        .order_by("-requests", "model_name")
    )
    priced = set(ModelPrice.objects.values_list("model_name", flat=True))
    usage = []
    for row in rows:
        model = row.pop("model_name")
        usage.append({"model": model, **_traffic(row, "p50", "p95", "p99"), "priced": model in priced})
    return usage


def cost_by_model(logs: LLMRequestLogQuerySet) -> list[dict[str, Any]]:
    """USD per model, costliest first. Cheaper than model_usage: no latency sort per model."""
    rows = logs.values("model_name").annotate(cost=Sum("cost_estimate")).order_by("-cost", "model_name")
    return [{"model": row["model_name"], "cost": _number(row["cost"])} for row in rows]


def errors(logs: LLMRequestLogQuerySet) -> dict[str, Any]:
    """Errors per error_type: count, share of all errors (percent), latest message and time."""
    failed = logs.filter(FAILED)
    latest = failed.filter(error_type=OuterRef("error_type")).order_by("-timestamp", "-id")
    rows = (
        failed.values("error_type")
        .annotate(
            count=Count("id"),
            last_seen=Max("timestamp"),
            latest_message=Subquery(latest.values("error_message")[:1]),
        )
        .order_by("-count", "error_type")
    )
    rows = list(rows)
    total_errors = sum(row["count"] for row in rows)  # a handful of groups, not log rows
    total_requests = logs.count()
    return {
        "total_errors": total_errors,
        "total_requests": total_requests,
        "error_rate": _rate(total_errors, total_requests),
        "errors": [
            {
                "error_type": row["error_type"],
                "count": row["count"],
                "share": _rate(row["count"], total_errors),
                "latest_message": row["latest_message"],
                "last_seen": row["last_seen"].isoformat(),
            }
            for row in rows
        ],
    }


def user_usage(logs: LLMRequestLogQuerySet, order_by: str = "cost", limit: int = 10) -> list[dict[str, Any]]:
    """The top users by `cost` or by `requests`; calls without a user_id are left out."""
    if order_by not in ("cost", "requests"):
        raise ValueError("order_by is cost or requests")
    rows = (
        logs.exclude(user_id="")
        .values("user_id")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=FAILED),
            total_tokens=Sum("total_tokens"),
            cost=Sum("cost_estimate"),
        )
        .order_by(F(order_by).desc(nulls_last=True), "user_id")[:limit]
    )
    return [{**row, "total_tokens": _number(row["total_tokens"]), "cost": _number(row["cost"])} for row in rows]


THUMBS_UP = Q(rating=UserFeedback.Rating.THUMBS_UP)
THUMBS_DOWN = Q(rating=UserFeedback.Rating.THUMBS_DOWN)


def satisfaction_rate(up: int, down: int) -> float | None:
    """Percent of ratings that are thumbs up; None with no rating at all."""
    return up * 100.0 / (up + down) if up + down else None


def _with_rate(row: dict[str, Any]) -> dict[str, Any]:
    up, down = row["thumbs_up"], row["thumbs_down"]
    return {**row, "total": up + down, "satisfaction_rate": satisfaction_rate(up, down)}


def feedback_summary(feedback: QuerySet[UserFeedback]) -> dict[str, Any]:
    """Thumbs up/down counts and satisfaction rate, overall and per model of the rated call.

    Counts ratings: a rater has at most one per call (UserFeedback's unique constraint; rating
    again replaces it), so nobody counts twice, and a call rated by three people weighs three."""
    counts = {"thumbs_up": Count("id", filter=THUMBS_UP), "thumbs_down": Count("id", filter=THUMBS_DOWN)}
    per_model = feedback.values("request__model_name").annotate(**counts).order_by("request__model_name")
    return {
        **_with_rate(feedback.aggregate(**counts)),
        "by_model": [_with_rate({"model": row.pop("request__model_name"), **row}) for row in per_model],
    }


def feedback_by_day(feedback: QuerySet[UserFeedback]) -> list[dict[str, Any]]:
    """Satisfaction per day (TIME_ZONE) of the rating."""
    rows = (
        feedback.annotate(day=TruncDay("created_at"))
        .values("day")
        .annotate(thumbs_up=Count("id", filter=THUMBS_UP), thumbs_down=Count("id", filter=THUMBS_DOWN))
        .order_by("day")
    )
    return [_with_rate({**row, "day": row["day"].date().isoformat()}) for row in rows]
