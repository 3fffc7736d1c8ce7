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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import connections, transaction
from django.db.models import Aggregate, Avg, Count, F, Field, Max, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import TruncDay, TruncHour, TruncMinute, TruncMonth
from django.utils import timezone

from llm.models import LLMRequestLog, LLMRequestLogQuerySet, ModelPrice, UserFeedback

# Sorting memory for the percentile queries on PostgreSQL. With the default 4 MB the planner walks
# the (model_name, timestamp) index to group by model, reading the table at random: 3.7 s over a
# million rows instead of 0.8 s for a sequential scan and an in-memory sort (bench/api_bench.py).
PERCENTILE_WORK_MEM = "64MB"

# The periods a client may ask for (SPEC's three). `minute` is only ever chosen by the bucket rule
# below, for windows of up to two hours: asked for over a month it would be 43,200 rows.
GROUP_BY = {"hour": TruncHour, "day": TruncDay, "month": TruncMonth}
TRUNCATE = {"minute": TruncMinute, **GROUP_BY}
# The one time-bucketing rule, for the pages and the API alike: the period of a window up to each
# length, and "month" beyond the last. Between 60 and 180 points for a window at its bound, so a
# chart stays readable, and a 1-hour window is drawn per minute rather than as one or two hours.
BUCKETS = [
    (timedelta(hours=2), "minute"),
    (timedelta(days=7), "hour"),
    (timedelta(days=180), "day"),
]
# A period's p50/p95/p99 from a handful of calls is noise drawn as a trend (one slow call of five
# is "the p95"): below this many calls the per-period percentiles are None, a gap in the charts and
# "—" in the tables. Totals over the whole window (overview, per model) are not affected.
MIN_CALLS_FOR_PERCENTILE = 20


class FloatList(Field):
    """The output of Percentiles: a PostgreSQL float8[] arrives as a list, SQLite's as JSON text."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> list[float] | None:
        return json.loads(value) if isinstance(value, str) else value


class Percentiles(Aggregate):
    """One or several percentiles (fractions 0-1) of an expression from a single sort, linearly
    interpolated; answers a list in the order of `fractions` (None over no rows)."""

    function = "PERCENTILE_CONT"
    name = "Percentiles"
    output_field = FloatList()
    template = "%(function)s(ARRAY[%(fractions)s]::float8[]) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, fractions: float | tuple[float, ...], **extra: Any) -> None:
        fractions = (fractions,) if isinstance(fractions, int | float) else tuple(fractions)
        if not fractions or not all(0 <= fraction <= 1 for fraction in fractions):
            raise ValueError("fractions must be between 0 and 1")
        super().__init__(expression, fractions=",".join(repr(float(f)) for f in fractions), **extra)

    def as_sqlite(self, compiler, connection, **extra_context):
        # Aggregate.as_sql passes its own template when there is a filter: change the copy's.
        clone = self.copy()
        clone.function = "llm_percentiles_cont"
        clone.template = "%(function)s(%(expressions)s, '%(fractions)s')"
        return super(Percentiles, clone).as_sql(compiler, connection, **extra_context)


class _SQLitePercentilesCont:
    """percentile_cont for SQLite: collects the group's values inside SQLite, interpolates each
    fraction at the end; answers a JSON list, like PostgreSQL's float8[]."""

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
    """connection_created receiver: add llm_percentiles_cont to every SQLite connection."""
    if connection.vendor == "sqlite":
        connection.connection.create_aggregate("llm_percentiles_cont", 2, _SQLitePercentilesCont)


def group_by_for(length: timedelta) -> str:
    """The period a window of this length is shown by (BUCKETS): minute, hour, day or month."""
    return next((group_by for bound, group_by in BUCKETS if length <= bound), "month")


def _sum(value: Any) -> float:
    """A SUM as the API answers it: 0 over no rows (SQL says NULL), a float rather than a Decimal."""
    if value is None:
        return 0
    # SQLite sums decimals as floats: round back to the column's 10 places.
    return float(round(value, 10)) if isinstance(value, Decimal) else value


def rate(part: int, whole: int) -> float:
    """`part` as a percent of `whole` (the error rate: failed of all requests); 0 of nothing is 0."""
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


def _traffic_aggregates(within: Q | None = None) -> dict[str, Aggregate]:
    """Requests, errors, tokens and cost of the rows (of those matching `within`, when given)."""
    failed = LLMRequestLog.FAILED if within is None else within & LLMRequestLog.FAILED
    return {
        "requests": Count("id", filter=within),
        "errors": Count("id", filter=failed),
        "prompt_tokens": Sum("prompt_tokens", filter=within),
        "completion_tokens": Sum("completion_tokens", filter=within),
        "total_tokens": Sum("total_tokens", filter=within),
        "cost": Sum("cost_estimate", filter=within),
    }


def _traffic(row: dict[str, Any], *percentiles: str, min_calls: int = 0) -> dict[str, Any]:
    """A row of _traffic_aggregates and _latency_aggregates as the API answers it; with fewer than
    `min_calls` requests its percentiles are None."""
    row = _spread(row, *percentiles)
    if row["requests"] < min_calls:
        row |= {f"{name}_latency_ms": None for name in percentiles}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cost"):
        row[key] = _sum(row[key])
    row["error_rate"] = rate(row["errors"], row["requests"])
    return row


def overview(logs: LLMRequestLogQuerySet) -> dict[str, Any]:
    figures = _traffic(
        logs.aggregate(
            **_traffic_aggregates(),
            unique_users=Count("user_id", distinct=True, filter=~Q(user_id="")),
            **_latency_aggregates("p50", "p95", "p99"),
        ),
        "p50",
        "p95",
        "p99",
    )
    total, failed = figures["requests"], figures["errors"]
    return {
        "total_requests": total,
        "successful_requests": total - failed,
        "failed_requests": failed,
        "error_rate": figures["error_rate"],
        "total_tokens": figures["total_tokens"],
        "prompt_tokens": figures["prompt_tokens"],
        "completion_tokens": figures["completion_tokens"],
        "avg_latency_ms": figures["avg_latency_ms"],
        "p50_latency_ms": figures["p50_latency_ms"],
        "p95_latency_ms": figures["p95_latency_ms"],
        "p99_latency_ms": figures["p99_latency_ms"],
        "total_cost": figures["cost"],
        "unique_users": figures["unique_users"],
    }


@dataclass(frozen=True)
class Window:
    """The calls of [start, end), of one model or of all (blank); `latency` asks for its p95 too
    (a sort of the window's rows, so only when a rule needs it)."""

    start: datetime
    end: datetime
    model: str = ""
    latency: bool = False

    def condition(self) -> Q:
        """LLMRequestLog.objects.in_window(start, end).for_model(model) as a condition, so several
        windows can be measured in one query."""
        within = Q(timestamp__gte=self.start, timestamp__lt=self.end)
        return within & Q(model_name=self.model) if self.model else within


@dataclass(frozen=True)
class WindowTotals:
    """What alert rules measure over a window; each figure as overview() answers it."""

    requests: int
    errors: int
    total_tokens: float
    cost: float
    p95_latency_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        """overview()'s error_rate, or None without requests: 0 % of nothing is no rate."""
        return rate(self.errors, self.requests) if self.requests else None


def growth(current: float, previous: float) -> float | None:
    """`current` as a multiple of `previous`; None without a baseline (nothing before)."""
    return current / previous if previous else None


WINDOW_FIGURES = ("requests", "errors", "total_tokens", "cost")


def window_totals(windows: Iterable[Window]) -> dict[Window, WindowTotals]:
    """The totals of several windows in one query: conditional aggregates (one set per window)
    over the rows of the span they cover together. Evaluating every alert rule costs one query."""
    windows = list(dict.fromkeys(windows))
    if not windows:
        return {}
    aggregates: dict[str, Aggregate] = {}
    for index, window in enumerate(windows):
        within = window.condition()
        wanted = {name: aggregate for name, aggregate in _traffic_aggregates(within).items() if name in WINDOW_FIGURES}
        if window.latency:
            wanted["latency_percentiles"] = Percentiles("latency_ms", FRACTIONS["p95"], filter=within)
        aggregates |= {f"w{index}_{name}": aggregate for name, aggregate in wanted.items()}
    span = LLMRequestLog.objects.in_window(min(w.start for w in windows), max(w.end for w in windows))
    row = span.aggregate(**aggregates)
    return {
        window: WindowTotals(
            requests=row[f"w{index}_requests"],
            errors=row[f"w{index}_errors"],
            total_tokens=_sum(row[f"w{index}_total_tokens"]),
            cost=_sum(row[f"w{index}_cost"]),
            p95_latency_ms=(row.get(f"w{index}_latency_percentiles") or [None])[0],
        )
        for index, window in enumerate(windows)
    }


def _by_period(logs: LLMRequestLogQuerySet, group_by: str, **aggregates: Aggregate) -> list[dict[str, Any]]:
    """One row per period that has traffic, oldest first; `period` in TIME_ZONE, ISO 8601."""
    truncate = TRUNCATE[group_by]
    rows = logs.annotate(period=truncate("timestamp")).values("period").annotate(**aggregates).order_by("period")
    return [{**row, "period": row["period"].isoformat()} for row in rows]


FIXED_STEPS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1)}
# Where a period starts in TIME_ZONE, as TRUNCATE groups the rows.
PERIOD_START = {
    "minute": {"second": 0},
    "hour": {"minute": 0, "second": 0},
    "day": {"hour": 0, "minute": 0, "second": 0},
}
# A chart's x axis is filled with empty periods up to this many; beyond, only busy periods are drawn.
MAX_FILLED_PERIODS = 2000


def period_end(period_start: datetime, group_by: str) -> datetime:
    """Where a period that starts at `period_start` ends: days and months end at local midnight."""
    if group_by in FIXED_STEPS:
        # Counted in UTC: adding to a local time adds wall-clock time, and on the night clocks go
        # forward "01:00 + 1 h" would be a 02:00 that does not exist (the same instant as 03:00).
        return timezone.localtime(period_start.astimezone(UTC) + FIXED_STEPS[group_by])
    local = timezone.localtime(period_start)
    if group_by == "day":
        following = local.date() + timedelta(days=1)
    else:
        following = (local.date().replace(day=28) + timedelta(days=4)).replace(day=1)
    return timezone.make_aware(datetime.combine(following, time.min))


def period_starts(start: datetime, end: datetime, group_by: str) -> list[datetime] | None:
    """Every period [start, end) touches, in TIME_ZONE, as `period` in timeseries rows; None for
    months or for more than MAX_FILLED_PERIODS periods (a chart then draws the busy ones)."""
    step = FIXED_STEPS.get(group_by, timedelta(days=1))
    if group_by not in PERIOD_START or (end - start) / step > MAX_FILLED_PERIODS:
        return None
    moment = timezone.localtime(start).replace(microsecond=0, **PERIOD_START[group_by])
    periods = []
    while moment < end:
        periods.append(moment)
        moment = period_end(moment, group_by)
    return periods


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
    return [{key: _sum(value) if key != "period" else value for key, value in row.items()} for row in rows]


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
    return [{"model": row["model_name"], "cost": _sum(row["cost"])} for row in rows]


def errors(logs: LLMRequestLogQuerySet) -> dict[str, Any]:
    """Errors per error_type: count, share of all errors (percent), latest message and time."""
    failed = logs.failed()
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
        "error_rate": rate(total_errors, total_requests),
        "errors": [
            {
                "error_type": row["error_type"],
                "count": row["count"],
                "share": rate(row["count"], total_errors),
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
            errors=Count("id", filter=LLMRequestLog.FAILED),
            total_tokens=Sum("total_tokens"),
            cost=Sum("cost_estimate"),
        )
        .order_by(F(order_by).desc(nulls_last=True), "user_id")[:limit]
    )
    return [{**row, "total_tokens": _sum(row["total_tokens"]), "cost": _sum(row["cost"])} for row in rows]


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
