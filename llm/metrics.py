"""Every figure of the metrics API and the dashboard, computed in the database.

Each function takes an already filtered `LLMRequestLog` queryset (see `llm.filters`) and answers
plain dicts with SPEC's field names. Nothing here loads log rows into Python: counts, sums,
averages and percentiles are aggregate queries, grouped by the database. One exception: the
rule preview (`bucketed_figures`) replays a rule at thousands of instants, and reads the columns
it needs once, a value per call, packed (see `Packed`).

Percentiles interpolate linearly between closest ranks, as PostgreSQL's `percentile_cont` and
NumPy's default do. SQLite has no such function, so `register_sqlite_functions` adds one to each
SQLite connection; both databases give the same figure.
"""

from __future__ import annotations

import functools
import json
import math
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from datetime import date as date_type
from decimal import Decimal
from typing import Any

import numpy as np
from django.db import connections, transaction
from django.db.models import (
    Aggregate,
    Avg,
    BigIntegerField,
    BinaryField,
    BooleanField,
    Case,
    CharField,
    Count,
    ExpressionWrapper,
    F,
    Field,
    FloatField,
    Func,
    IntegerField,
    Max,
    Min,
    Q,
    QuerySet,
    Sum,
    TextField,
    Value,
    When,
)
from django.db.models import Window as SQLWindow
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Round, TruncDay, TruncHour, TruncMinute, TruncMonth
from django.utils import timezone

from llm import plain_sql, rollup_math, rollup_sql, rollups
from llm.models import (
    DailyBreakdownRollup,
    DailyLatency,
    DailyRollup,
    DailyUserRollup,
    DailyUserTotals,
    HourlyBreakdownRollup,
    HourlyLatency,
    HourlyRollup,
    HourlyUserTotals,
    LLMRequestLog,
    LLMRequestLogQuerySet,
    MetricWatermark,
    ModelPrice,
    SessionGroupTotals,
    SessionTotals,
    SessionUser,
    UserFeedback,
    WeeklyUserRollup,
)

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
    if connection.vendor != "postgresql":
        # On SQLite a transaction here would be a write lock (transaction_mode IMMEDIATE): reads
        # must not hold up writers.
        yield
        return
    with transaction.atomic(using=using):
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


# Reading the roll-ups (llm/rollups.py keeps them).
#
# A window is read as whole days (DailyRollup), whole UTC hours (HourlyRollup) and raw rows for
# the rest (rollup_math.split_window), plus the rows above the roll-ups' watermark wherever the
# roll-ups answer (rows written since the last roll-up: an index range on the primary key). The
# watermark is read before and after; if a roll-up moved it meanwhile, the reading starts over,
# so a row is never counted twice nor missed, without a transaction that would hold up writers.
# Counts, tokens and cost are exact. Percentiles come from the histograms, within
# rollup_math.ERROR_BOUND, unless the window is read from raw rows only: a window of at most
# EXACT_WINDOW, a filter the roll-ups do not break down by (user_id), or a period they cannot
# answer (minutes; local hours in a time zone a half hour off UTC) are read raw and exact.

EXACT_WINDOW = timedelta(hours=2)
# The hours whose log rows purge_logs cannot have deleted (it keeps at least a day): subtracting
# an hour's rows outside a window from its roll-up (rollup_math.subtract_edges) needs them all.
UNPURGED = timedelta(days=1)
READ_ATTEMPTS = 3
PERCENTILES_EXACT = rollup_math.EXACT_LABEL
PERCENTILES_APPROXIMATE = rollup_math.ERROR_LABEL


@dataclass(frozen=True)
class Selection:
    """The rows a figure covers: `logs` (filtered), their window, and the filters the roll-ups
    break down by; `rollups_apply` is False when another filter narrows the rows."""

    logs: LLMRequestLogQuerySet
    start: datetime | None = None
    end: datetime | None = None
    model: str = ""
    status: str = ""
    rollups_apply: bool = False
    # The one breakdown group (by, key) the other filters narrow the rows to, if that is all they
    # do (llm.filters.one_group): read from the breakdown roll-ups where the function knows how.
    narrowed_to: tuple[str, str] | None = None
    # A page's figures of this window read once (`shared`), which the figures derive from.
    shared: SharedReading | None = field(default=None, compare=False)

    @classmethod
    def of(cls, filtered: Any) -> Selection:
        """From llm.filters.FilteredLogs."""
        return cls(
            filtered.queryset,
            filtered.start,
            filtered.end,
            filtered.model,
            filtered.status,
            rollups_apply=not filtered.other_filters,
            narrowed_to=filtered.narrowed_to,
        )

    def matching(self, **lookups: Any) -> Q:
        """The model and status filters on a roll-up (or log) table."""
        condition = Q(**lookups)
        if self.model:
            condition &= Q(model_name=self.model)
        if self.status:
            condition &= Q(status=self.status)
        return condition


def selection(logs: Selection | LLMRequestLogQuerySet | Any) -> Selection:
    """A Selection of a Selection, of llm.filters.FilteredLogs, or of a bare queryset (read raw)."""
    if isinstance(logs, Selection):
        return logs
    if isinstance(logs, QuerySet):
        return Selection(logs)
    return Selection.of(logs)


@dataclass
class Plan:
    """How one reading of a Selection goes: the split of its window and the roll-ups' state."""

    selection: Selection
    split: rollup_math.Split
    zone: Any
    period: str | None
    watermark: int = 0  # as the plan was made: the first reading's
    # A plan of the breakdown roll-ups (breakdown_plan): their `by`, and the one group (`key`)
    # the rows are narrowed to, if they are.
    breakdown: str = ""
    group: str | None = None

    def raw_rows(self, watermark: int) -> list[LLMRequestLogQuerySet]:
        """Rows read from the logs, as querysets that do not overlap, each one index range: every
        raw span (on timestamp), and the rows above the watermark where roll-ups answer (on id)."""
        matching = LLMRequestLog.objects.filter(self.selection.matching()).order_by()
        if self.breakdown:
            matching = matching.alias(breakdown_group=rollups.breakdown_group(self.breakdown))
            if self.group is not None:
                matching = matching.filter(breakdown_group=self.group)
        above = above_watermark(matching, watermark, self.rolled_up_within())
        if not self.split.raw:
            return [above]
        edges = Q(pk__in=[])
        for start, end in self.split.raw:
            edges |= Q(timestamp__gte=start, timestamp__lt=end)
        return [matching.filter(edges), above]

    def outside_rows(self, watermark: int) -> LLMRequestLogQuerySet | None:
        """The rows of the split's `outside` spans in the roll-ups (up to the watermark): what the
        whole hours hold beyond the window, subtracted (rollup_math.subtract_edges)."""
        if not self.split.outside:
            return None
        spans = Q(pk__in=[])
        for start, end in self.split.outside:
            spans |= Q(timestamp__gte=start, timestamp__lt=end)
        return LLMRequestLog.objects.filter(self.selection.matching(), spans, id__lte=watermark).order_by()

    def rolled_up_within(self) -> list[tuple[datetime, datetime]]:
        """The instants the days and hours cover within the window: where the rows above the
        watermark count (a whole hour of subtract_edges reaches beyond the window)."""
        start, end = self.selection.start, self.selection.end
        spans = [(max(low, start), min(high, end)) for low, high in self.split.rolled_up_spans(self.zone)]
        return [(low, high) for low, high in spans if low < high]

    def daily(self) -> Q:
        days = self.split.days
        return self.selection.matching(day__gte=days[0], day__lte=days[-1]) & self._group() if days else Q(pk__in=[])

    def hourly(self) -> Q:
        condition = Q(pk__in=[])
        for start, end in self.split.hours:
            condition |= Q(hour__gte=start, hour__lt=end)
        return self.selection.matching() & self._group() & condition if self.split.hours else condition

    def _group(self) -> Q:
        """The breakdown roll-ups' rows of the plan's `by` (and group): nothing on the others."""
        if not self.breakdown:
            return Q()
        return Q(by=self.breakdown) if self.group is None else Q(by=self.breakdown, key=self.group)

    def tables(self) -> tuple[type, type]:
        """The (daily, hourly) roll-ups the plan reads."""
        return (DailyBreakdownRollup, HourlyBreakdownRollup) if self.breakdown else (DailyRollup, HourlyRollup)


def above_watermark(
    rows: LLMRequestLogQuerySet, watermark: int, spans: list[tuple[datetime, datetime]]
) -> LLMRequestLogQuerySet:
    """The rows above the watermark within `spans`: an index range on the id (rows written since
    the last roll-up, a handful). The spans are tested on COALESCE(timestamp, timestamp), which no
    index answers: else SQLite walks the timestamp index over the spans (90 days of rows) to
    find those few; and the id range is closed (up to the largest id there can be), else SQLite
    walks a whole index that spares it sorting for the GROUP BY."""
    within = Q(pk__in=[])
    for start, end in spans:
        within |= Q(stamp__gte=start, stamp__lt=end)
    ids = rows.filter(id__gt=watermark, id__lte=LARGEST_ID)
    return ids.alias(stamp=Coalesce("timestamp", "timestamp")).filter(within)


LARGEST_ID = 2**63 - 1


# The calls above the watermark (written since the last roll-up), read once for a page.
#
# Every reading of a window reads them apart (above_watermark): an index range on the id, but each
# of them read from the table (at 10,000,000 calls with 10,000 not rolled up yet: ~9 ms a reading,
# though they all fall in the last hour). The overview page read them three times: its window, the
# previous window (which they seldom touch) and the month's forecast. Summed once per UTC hour,
# model and status, they tell a window whose rolled-up spans they do not touch that it has none
# (its reading skips them), and give the forecast its cost per hour where its spans hold whole
# hours; anything else reads them as before.

# Beyond this many calls above the watermark (roll-ups far behind, or none yet), no summary is
# read: the readings read their part apart.
RECENT_ROWS_LIMIT = 50_000


@dataclass(frozen=True)
class RecentRows:
    """The calls above `watermark`: {(UTC hour as epoch seconds, model, status): (requests, cost
    units)}; `state`, the roll-ups' state they were read at (the page's readings plan from it)."""

    watermark: int
    hours: dict[tuple[int, str, str], tuple[int, int]]
    state: MetricWatermark | None = None
    # {(error type, model): the UTC hours (epoch seconds) with a failure of that type}: where the
    # latest failures of a window may lie beyond the roll-ups (errors()).
    failed_hours: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    # The calls grouped as a shared reading groups raw rows by hour (_raw_grouped: UTC hour number,
    # model, status, error type, latency bucket, then _raw_sums): a page's reading takes those of
    # its rolled-up spans from here rather than reading the calls again (_recent_within).
    groups: list[tuple] = field(default_factory=list)

    def failed_within(self, error_type: str, model: str, start: datetime, end: datetime) -> list[datetime]:
        """The latest hour in [start, end) with one of these calls failing with `error_type` (of
        `model`, when given), as a list of one or none."""
        hours = [
            hour
            for (failed_type, model_name), epochs in self.failed_hours.items()
            for hour in map(hour_at, epochs)
            if failed_type == error_type and model in ("", model_name) and start <= hour < end
        ]
        return [max(hours)] if hours else []

    def touch(self, spans: list[tuple[datetime, datetime]], model: str = "", status: str = "") -> bool:
        """Whether some of these calls may lie within `spans` (of `model` and `status`, if given):
        a call's hour overlaps its span."""
        bounds = [(start.timestamp(), end.timestamp()) for start, end in spans]
        for hour, model_name, call_status in self.hours:
            if (model and model_name != model) or (status and call_status != status):
                continue
            if any(hour < end and hour + SECONDS_PER_HOUR > start for start, end in bounds):
                return True
        return False

    def costs(self, spans: list[tuple[datetime, datetime]]) -> dict[tuple[datetime, str], int] | None:
        """{(UTC hour, model): cost units} of these calls within `spans`; None when an hour with
        calls lies partly within them (then only the rows tell)."""
        bounds = [(start.timestamp(), end.timestamp()) for start, end in spans]
        found: dict[tuple[datetime, str], int] = defaultdict(int)
        for (hour, model_name, _status), (_requests, units) in self.hours.items():
            inside = [max(start, hour) < min(end, hour + SECONDS_PER_HOUR) for start, end in bounds]
            whole = any(start <= hour and hour + SECONDS_PER_HOUR <= end for start, end in bounds)
            if any(inside) and not whole:
                return None
            if whole:
                found[(hour_at(hour), model_name)] += units
        return found


def recent_rows(watermark: int, state: MetricWatermark | None = None) -> RecentRows | None:
    """The calls above `watermark` summed per UTC hour, model and status (one query); None when
    there are more than RECENT_ROWS_LIMIT of them (told by the largest id, an index lookup).
    `state`: the roll-ups' state `watermark` is from, kept for the readings to plan from."""
    newest = rollup_sql.newest_id()
    if newest - watermark > RECENT_ROWS_LIMIT:
        return None
    sums = _raw_sums()
    requests, cost = list(sums).index("requests") + 5, list(sums).index("cost_units") + 5
    groups: list[tuple] = []
    if newest > watermark:  # else every call is rolled up (roll-ups kept as calls are written): no query
        above = LLMRequestLog.objects.filter(id__gt=watermark, id__lte=LARGEST_ID).order_by()
        grouped = above.annotate(
            bucket=rollups.bucket_of("latency_ms"), period=EpochSeconds("timestamp") / Value(SECONDS_PER_HOUR)
        )
        groups = _driver_rows(grouped.values("period", "model_name", "status", "error_type", "bucket").annotate(**sums))
    hours: dict[tuple[int, str, str], tuple[int, int]] = {}
    failed_hours: dict[tuple[str, str], set[int]] = defaultdict(set)
    for group in groups:
        hour, model_name, status, error_type = int(group[0]) * SECONDS_PER_HOUR, *group[1:4]
        count, units = hours.get((hour, model_name, status), (0, 0))
        hours[(hour, model_name, status)] = (count + int(group[requests]), units + rollups.as_units(group[cost]))
        if status == LLMRequestLog.Status.ERROR:
            failed_hours[(error_type, model_name)].add(hour)
    kept = state if state is not None and state.last_id == watermark else None
    return RecentRows(watermark, hours, kept, dict(failed_hours), groups)


def rollup_state() -> MetricWatermark:
    return MetricWatermark.objects.filter(name=rollups.ROLLUPS).first() or MetricWatermark(name=rollups.ROLLUPS)


def state_of(chosen: Selection) -> MetricWatermark:
    """The roll-ups' state as the page's shared reading found it, else as it is now: the figures of
    a page plan from the one state (a query each: 9 per analytics page). A plan's watermark is only
    its first guess: `consistent` reads the state again after each reading and retries if it moved."""
    return chosen.shared.state if chosen.shared is not None and chosen.shared.state is not None else rollup_state()


def plan(
    logs: Selection | Any, period: str | None = None, *, state: MetricWatermark | None = None, subtract: bool = False
) -> Plan | None:
    """How to read `logs` from the roll-ups, grouped by `period` (None: totals); None: read raw.
    `state`: the roll-ups' state, when already read (several windows planned at once). `subtract`:
    the reader subtracts the split's `outside` rows (read_shared does): an edge that is most of
    a recent hour is read as that hour less the rest (rollup_math.subtract_edges)."""
    chosen = selection(logs)
    start, end = chosen.start, chosen.end
    if not chosen.rollups_apply or start is None or end is None or end - start <= EXACT_WINDOW or period == "minute":
        return None
    zone = timezone.get_current_timezone()
    state = state or state_of(chosen)
    days = (
        period != "hour"
        and rollups.daily_rows_valid(state)
        and (state.days_since is None or start >= rollup_math.day_start(state.days_since, zone))
    )
    hours = period is None or rollup_math.whole_hour_offsets(zone, start, end)
    split = rollup_math.split_window(start, end, zone, days=days, hours=hours)
    if subtract:
        split = rollup_math.subtract_edges(split, start, end, since=timezone.now() - UNPURGED)
    return Plan(chosen, split, zone, period, state.last_id) if split.uses_rollups else None


def breakdown_plan(logs: Selection | Any, by: str | None = None, period: str | None = None) -> Plan | None:
    """How to read `logs` from the breakdown roll-ups (llm/rollups.py): grouped `by` (a rolled-up
    breakdown, the rows narrowed by model and status at most), or, without `by`, narrowed to one
    group (Selection.narrowed_to). None: they do not answer (a `by` they do not hold, or not yet in
    full for the window's days: ROLLUP_TAG_KEYS changed since the last rebuild_rollups)."""
    chosen = selection(logs)
    group = None
    if by is None and chosen.narrowed_to is not None:
        by, group = chosen.narrowed_to
    elif by is None or not chosen.rollups_apply:
        return None
    if by not in rollups.rolled_up_breakdowns():
        return None
    complete = state_of(chosen).breakdowns or {}
    the_plan = plan(replace(chosen, rollups_apply=True), period) if by in complete else None
    if the_plan is None:
        return None
    first_day = complete[by] and date_type.fromisoformat(complete[by])
    if first_day and chosen.start < rollup_math.day_start(first_day, the_plan.zone):
        return None
    the_plan.breakdown, the_plan.group = by, group
    return the_plan


def percentiles_kind(logs: Selection | Any, period: str | None = None, *, narrowed: bool = False) -> str:
    """What an answer over `logs` says of its percentiles: "exact" or "approximate (<=1 %)".
    `narrowed`: the answer reads the breakdown roll-ups under one source or tag value too (the
    overview, breakdowns)."""
    if plan(logs, period) is not None or (narrowed and breakdown_plan(logs, period=period) is not None):
        return PERCENTILES_APPROXIMATE
    return PERCENTILES_EXACT


def consistent(read: Any, the_plan: Plan | None = None) -> Any:
    """`read(watermark)` at a watermark that did not move while it ran (see above); the first try
    at the plan's."""
    for attempt in range(READ_ATTEMPTS):
        before = the_plan.watermark if the_plan is not None and attempt == 0 else rollup_sql.watermark()
        answer = read(before)
        if rollup_sql.watermark() == before:
            return answer
    return None  # roll-ups kept moving: the caller reads the logs instead


class PeriodOf:
    """The local period (an aware datetime's ISO text, as _by_period answers) of an hour or a day."""

    def __init__(self, period: str | None, zone: Any) -> None:
        self.period = period
        self.zone = zone
        self.cache: dict[Any, str] = {}

    def __call__(self, moment: datetime | date_type) -> str | None:
        if self.period is None:
            return None
        if moment not in self.cache:
            self.cache[moment] = self._compute(moment)
        return self.cache[moment]

    def _compute(self, moment: datetime | date_type) -> str:
        if isinstance(moment, datetime):
            local = moment.astimezone(self.zone)
            if self.period == "hour":
                return local.isoformat()
            moment = local.date()
        if self.period == "month":
            moment = moment.replace(day=1)
        return timezone.make_aware(datetime.combine(moment, time.min), self.zone).isoformat()


KeyedFigures = dict[tuple, rollups.Figures]
ROLLUP_SUMS = rollups.Figures.SUMS


FLOAT_SUMS = ("latency_sum_ms", "ttft_sum_ms", "speed_sum", "queue_sum_ms")
INTEGER_SUMS = tuple(name for name in ROLLUP_SUMS if name not in FLOAT_SUMS)
INTEGER_POSITIONS = [ROLLUP_SUMS.index(name) for name in INTEGER_SUMS]
FLOAT_POSITIONS = [ROLLUP_SUMS.index(name) for name in FLOAT_SUMS]


def _add_rollups(
    found: KeyedFigures, rows: QuerySet, period_field: str, key: Any, group: tuple, percentiles: bool
) -> None:
    """Add roll-up rows to `found`: their sums added up by the database per `group` (and period),
    so a 90-day reading returns a few rows, not one per day, model, status and error type; the
    histograms, when percentiles are asked for, fetched bare and merged in NumPy per group."""
    names = [name for name in group if name != "period"]
    moment_of = _moment_of(period_field)
    if "period" in group and period_field == "hour":  # as epoch seconds: see hour_at
        rows, period_field = rows.annotate(hour_epoch=EpochSeconds("hour")), "hour_epoch"
        moment_of = _moment_of(period_field)
    if "period" in group:
        names.append(period_field)
    sums = {name: Sum(name) for name in ROLLUP_SUMS}
    for row in rows.values(*names).annotate(**sums).order_by():
        for name in ROLLUP_SUMS:
            row[name] = float(row[name] or 0) if name in FLOAT_SUMS else int(row[name] or 0)
        figures = found.get(keyed := key(row, moment_of(row)))
        if figures is None:
            figures = found[keyed] = rollups.Figures()
        figures.add_sums(row)
    if percentiles:
        _add_rollup_histograms(found, rows, names, key, moment_of)


def _add_rollup_histograms(found: KeyedFigures, rows: QuerySet, names: list[str], key: Any, moment_of: Any) -> None:
    """Merge the latency histograms of roll-up rows per key of `found`, in one NumPy pass."""
    keys: dict[tuple, int] = {}
    groups, stored = [], []
    for *values, histogram in rows.values_list(*names, "latency_histogram").order_by():
        row = dict(zip(names, values, strict=True))
        groups.append(keys.setdefault(key(row, moment_of(row)), len(keys)))
        stored.append(histogram)
    merged = rollup_math.merge_grouped(groups, stored, len(keys))
    for keyed, index in keys.items():
        found[keyed].latency += merged[index]


def _moment_of(period_field: str) -> Any:
    """How to read a roll-up row's day or hour (None without one) from its `period_field`."""
    if period_field == "hour_epoch":
        return lambda row: hour_at(row["hour_epoch"])
    return lambda row: row.get(period_field)


class RawPeriod:
    """The period of raw rows as the API names it (PeriodOf's text). By hour, where every UTC hour
    of the window is one local hour (whole-hour offsets, as hourly roll-ups need too), the rows are
    grouped by UTC hour as an integer, mapped to text once per hour: a truncated timestamp is parsed
    by psycopg in Python, ~15 µs a row, and raw rows grouped by hour and latency bucket are many
    (the two edge hours of a window at 10 million calls: ~9,000 calls, about a thousand groups)."""

    def __init__(self, the_plan: Plan) -> None:
        chosen = the_plan.selection
        self.by_hour_number = (
            the_plan.period == "hour"
            and chosen.start is not None
            and rollup_math.whole_hour_offsets(the_plan.zone, chosen.start, chosen.end)
        )
        self.period = the_plan.period
        self.period_of = PeriodOf(the_plan.period, the_plan.zone)

    def expression(self) -> Any:
        if self.by_hour_number:
            return EpochSeconds("timestamp") / Value(SECONDS_PER_HOUR)
        return TRUNCATE[self.period]("timestamp")

    def text(self, value: Any) -> str:
        if self.by_hour_number:
            return self.period_of(hour_at(value * SECONDS_PER_HOUR))
        return value.isoformat()


SECONDS_PER_HOUR = 3600
ONE_HOUR = timedelta(hours=1)
ONE_DAY = timedelta(days=1)


def _add_raw(
    found: KeyedFigures,
    the_plan: Plan,
    watermark: int,
    group: tuple[str, ...],
    percentiles: bool,
    recent: RecentRows | None = None,
) -> None:
    names = [name for name in group if name != "period"]
    raw_period = RawPeriod(the_plan)
    if "period" in group:
        names.append("period")
    if percentiles:
        names.append("bucket")
    for rows in _raw_parts(the_plan, watermark, recent):
        if "key" in group:  # a breakdown roll-up's group (measure_at of a breakdown_plan)
            rows = rows.annotate(key=rollups.breakdown_group(the_plan.breakdown))
        if "period" in group:
            rows = rows.annotate(period=raw_period.expression())
        if percentiles:
            rows = rows.annotate(bucket=rollups.bucket_of("latency_ms"))
        for row in rows.values(*names).annotate(**_raw_sums()):
            row["cost_units"] = rollups.as_units(row["cost_units"])
            if "period" in row:
                row["period"] = raw_period.text(row["period"])
            key = tuple(row[name] for name in group)
            figures = found.get(key)
            if figures is None:
                figures = found[key] = rollups.Figures()
            figures.add_sums(row)
            if percentiles:
                figures.latency[row["bucket"]] += row["requests"]


def _raw_parts(the_plan: Plan, watermark: int, recent: RecentRows | None) -> list[LLMRequestLogQuerySet]:
    """the_plan.raw_rows(watermark), without the rows above the watermark when `recent` (read at
    that watermark) tells none lies within the plan's rolled-up spans."""
    parts = the_plan.raw_rows(watermark)
    if recent is None or recent.watermark != watermark or the_plan.breakdown:
        return parts
    chosen = the_plan.selection
    if recent.touch(the_plan.rolled_up_within(), chosen.model, chosen.status):
        return parts
    return parts[:-1]  # the last part is the rows above the watermark (Plan.raw_rows)


def _raw_sums() -> dict[str, Aggregate]:
    return {
        "requests": Count("id"),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "total_tokens": Sum("total_tokens"),
        "cost_units": rollups.cost_units_sum(),
        "latency_sum_ms": Sum("latency_ms"),
        **rollups.speed_aggregates(),
    }


def measure_at(the_plan: Plan, group: tuple[str, ...], watermark: int, *, percentiles: bool = True) -> KeyedFigures:
    """Figures per `group` (names among period, model_name, status, error_type, and key for a
    breakdown_plan) over the plan's window: roll-ups plus raw rows, the roll-ups being at `watermark`."""
    period_of = PeriodOf(the_plan.period, the_plan.zone)

    def key(row: dict[str, Any], moment: Any) -> tuple:
        return tuple(period_of(moment) if name == "period" else row[name] for name in group)

    found: KeyedFigures = {}
    daily, hourly = the_plan.tables()
    if the_plan.split.days:
        _add_rollups(found, daily.objects.filter(the_plan.daily()), "day", key, group, percentiles)
    if the_plan.split.hours:
        _add_rollups(found, hourly.objects.filter(the_plan.hourly()), "hour", key, group, percentiles)
    _add_raw(found, the_plan, watermark, group, percentiles)
    return found


def measure(the_plan: Plan, group: tuple[str, ...], *, percentiles: bool = True) -> KeyedFigures | None:
    """measure_at a watermark that holds still; None if it would not (read the logs instead).
    Without percentiles, from the selection's shared reading when it has one for this period."""
    shared = the_plan.selection.shared
    if not percentiles and shared is not None and not the_plan.breakdown and shared.answers(the_plan.period, group):
        return shared.sums(group, the_plan.period)
    return consistent(lambda watermark: measure_at(the_plan, group, watermark, percentiles=percentiles), the_plan)


def measure_totals(the_plan: Plan, group: tuple[str, ...]) -> dict[tuple, Totals] | None:
    """Totals (failures counted apart, latency histograms merged) per `group` (names among period
    and model_name); from the selection's shared reading when it has one for this period."""
    if the_plan.breakdown:  # the breakdown roll-ups: their own histograms, no shared reading
        found = measure(the_plan, (*group, "status"))
        return None if found is None else fold_status(found)
    shared = the_plan.selection.shared
    if shared is not None and shared.answers(the_plan.period):
        return shared.totals(group, the_plan.period)
    return consistent(lambda watermark: totals_at(the_plan, group, watermark), the_plan)


def totals_at(
    the_plan: Plan, group: tuple[str, ...], watermark: int, recent: RecentRows | None = None
) -> dict[tuple, Totals]:
    """Totals per `group` (names among period and model_name) at `watermark`: without a status
    filter, the plan's figures per period and model (read_shared: one query per roll-up table for
    sums, failures and histograms) added up per group; under one, the sums by group and status
    and the latency histograms merged per group. `recent`: the calls above the watermark, summed
    (see RecentRows)."""
    if not the_plan.selection.status:
        return read_shared(the_plan, watermark, recent=recent, failures=False).totals(group, the_plan.period)
    keyed = (*group, "status")
    period_of = PeriodOf(the_plan.period, the_plan.zone)

    def key(row: dict[str, Any], moment: Any) -> tuple:
        return tuple(period_of(moment) if name == "period" else row[name] for name in keyed)

    found: KeyedFigures = {}
    if the_plan.split.days:
        _add_rollups(found, DailyRollup.objects.filter(the_plan.daily()), "day", key, keyed, False)
    if the_plan.split.hours:
        _add_rollups(found, HourlyRollup.objects.filter(the_plan.hourly()), "hour", key, keyed, False)
    _add_raw(found, the_plan, watermark, keyed, True, recent)
    folded = fold_status(found)
    cells: dict[tuple, int] = {}
    owners, stored = [], []
    for moment, model_name, histogram in rollup_histograms(the_plan):
        row = {"model_name": model_name}
        owners.append(
            cells.setdefault(tuple(period_of(moment) if name == "period" else row[name] for name in group), len(cells))
        )
        stored.append(histogram)
    merged = rollup_math.merge_grouped(owners, stored, len(cells))
    for cell, index in cells.items():
        if cell in folded:  # always: the histograms are written with the sums
            folded[cell].figures.latency += merged[index]
    return folded


def period_model_tables(the_plan: Plan) -> tuple[type, type]:
    """(daily, hourly) roll-up tables whose rows hold the plan's figures by period and model:
    DailyLatency and HourlyLatency (statuses merged: a fifth of the rows), or DailyRollup and
    HourlyRollup when a status filter needs their per-status rows."""
    if the_plan.selection.status:
        return DailyRollup, HourlyRollup
    return DailyLatency, HourlyLatency


def rollup_histograms(the_plan: Plan) -> Iterator[tuple[Any, str, Any]]:
    """(day or hour, model_name, stored latency histogram) of the plan's whole days and hours: from
    DailyLatency and HourlyLatency (one row per period and model, statuses merged: 90 days at 10
    million calls fetch and merge 637 daily histograms rather than DailyRollup's 4,437), or from
    DailyRollup and HourlyRollup under a status filter (period_model_tables)."""
    daily, hourly = period_model_tables(the_plan)
    if the_plan.split.days:
        days = daily.objects.filter(the_plan.daily()).order_by()
        yield from days.values_list("day", "model_name", "latency_histogram")
    if not the_plan.split.hours:
        return
    hours = hourly.objects.filter(the_plan.hourly()).order_by().annotate(hour_epoch=EpochSeconds("hour"))
    for epoch, model_name, histogram in hours.values_list("hour_epoch", "model_name", "latency_histogram"):
        yield hour_at(epoch), model_name, histogram


@functools.lru_cache(maxsize=4096)
def hour_at(epoch: int) -> datetime:
    """The UTC hour that starts `epoch` seconds after 1970. Roll-up hours are read as epoch seconds:
    psycopg parses a timestamptz in Python (~15 µs each: 60 ms for the 4,000 rows of 7 days of
    hourly roll-ups), an integer in C; a few hundred distinct hours are made once each."""
    return datetime.fromtimestamp(epoch, UTC)


# A page's figures of one window, read once.
#
# The overview page shows five figures of one window (totals, a series, errors, cost by model) and
# the analytics page four; each read alone reads the window's roll-ups and raw edges again (the
# overview page at 10M calls: 115-413 ms). `share` reads them once, keyed (period, model): the
# figures per period and model of HourlyLatency and DailyLatency (their sums, failures and latency
# histograms: one row per period and model, not one per status and error type: 7 days of hours at
# 10M calls are ~1,160 rows rather than ~5,900 plus ~1,160 histograms), the failures per error type
# apart (one small query per table), and the raw rows of the edges grouped in SQL, at one
# watermark; the figures then add those groups up in NumPy. Under a status filter the rows per
# status are read instead. No figure asks for a percentile per status or error type.

SHARED_KEY = ("period", "model_name")


@dataclass
class SharedReading:
    """The figures of a Selection's window per SHARED_KEY, read at one watermark (`read_shared`)."""

    period: str
    watermark: int
    # The rows as read, in order: their (period, model_name) and their ROLLUP_SUMS then their
    # failures (None for 0), added up per key once the reading is complete (_columns). The first
    # keys may be those of `rolled`: the roll-up rows' integer sums (INTEGER_SUMS, then failures)
    # and float sums (FLOAT_SUMS) as two arrays, made from the rows at once (no list per row).
    keys: list[tuple] = field(default_factory=list)
    values: list[list] = field(default_factory=list)
    rolled: tuple[Any, Any] | None = field(default=None, repr=False)
    # error_type -> [failures, the latest start and the latest end of an hour, day or period with one].
    failures: dict[str, list] = field(default_factory=dict)
    # (error_type, period) -> failures of whole hours reaching beyond the window, less those
    # beyond it (add_failures): whether the period still holds one of the window's.
    edge_failures: dict[tuple[str, str], tuple[int, datetime, datetime]] = field(default_factory=dict)
    # (period, model_name) -> cell of `latency`: the latency histograms' counts per cell, summed
    # per group only when a figure asks (rollup_math.Words).
    cells: dict[tuple, int] = field(default_factory=dict)
    latency: rollup_math.Words | None = None
    # The roll-ups' state the reading was planned at (see state_of).
    state: MetricWatermark | None = None
    # The groups as arrays (_columns), once the reading is complete, and their keys coded (_coded).
    columns: tuple[list[tuple], Any, Any] | None = field(default=None, repr=False)
    codes: tuple[Any, list[list]] | None = field(default=None, repr=False)
    # period (a PeriodOf text) -> its (start, end), as add_failures finds them.
    spans: dict[str, tuple[datetime, datetime]] = field(default_factory=dict, repr=False)

    def answers(self, period: str | None, group: tuple[str, ...] = ()) -> bool:
        """Whether figures by `period` (None: over the whole window) per `group` follow from this reading."""
        return (period is None or period == self.period) and set(group) <= set(SHARED_KEY)

    def sums(self, group: tuple[str, ...], period: str | None) -> KeyedFigures:
        """As measure_at(..., percentiles=False) answers: the sums per `group` (names of
        SHARED_KEY), added in NumPy. The figures carry no histograms (a read-only empty one)."""
        groups, integers, floats = self._added(group)
        return {keyed: _figures(integers[index], floats[index]) for index, keyed in enumerate(groups)}

    def totals(self, group: tuple[str, ...], period: str | None) -> dict[tuple, Totals]:
        """As fold_status(measure_at(..., (*group, "status"))) answers. The cells' histogram counts
        are summed per group in one NumPy pass (rollup_math.Words), and every group's percentiles
        computed at once (Totals.known), not one histogram at a time."""
        groups, integers, floats = self._added(group)
        first, summed = self._summed_latency(group, groups)
        width = summed.shape[1]
        fractions = list(FRACTIONS.values())
        known = rollup_math.percentiles_per_row(first, summed, fractions)
        found: dict[tuple, Totals] = {}
        for index, keyed in enumerate(groups):
            figures = _figures(integers[index], floats[index], latency=rollup_math.empty())
            figures.latency[first : first + width] = summed[index]
            totals = found[keyed] = Totals(figures, int(integers[index, ERRORS_POSITION]))
            totals.known = (figures.latency.copy(), dict(zip(fractions, known[index], strict=True)))
        return found

    def rows(self, group: tuple[str, ...], percentile_names: tuple[str, ...], min_calls: int = 0) -> dict[tuple, dict]:
        """As {key: totals.row(*percentile_names, min_calls=min_calls) for key, totals in
        self.totals(group, period).items()} answers, the figures of all groups built from columns
        (no histogram array and Totals per group: 7 days by hour are ~160 of them)."""
        groups, integers, floats = self._added(group)
        first, summed = self._summed_latency(group, groups)
        values = rollup_math.percentiles_per_row(first, summed, [FRACTIONS[name] for name in percentile_names])
        columns = {name: integers[:, INTEGER_SUMS.index(name)].tolist() for name in ROW_INTEGERS}
        errors = integers[:, ERRORS_POSITION].tolist()
        latency_sums = floats[:, FLOAT_SUMS.index("latency_sum_ms")].tolist()
        found = {}
        for index, keyed in enumerate(groups):
            requests = columns["requests"][index]
            percentiles = values[index] if requests >= min_calls else [None] * len(percentile_names)
            found[keyed] = {
                "requests": requests,
                "errors": errors[index],
                "prompt_tokens": columns["prompt_tokens"][index],
                "completion_tokens": columns["completion_tokens"][index],
                "total_tokens": columns["total_tokens"][index],
                "cost": float(rollups.usd(columns["cost_units"][index])),
                "avg_latency_ms": latency_sums[index] / requests if requests else None,
                **{f"{name}_latency_ms": value for name, value in zip(percentile_names, percentiles, strict=True)},
                "error_rate": rate(errors[index], requests),
            }
        return found

    def _summed_latency(self, group: tuple[str, ...], groups: list[tuple]) -> tuple[int, Any]:
        """The latency counts summed per group of `groups` (the keys _added answers, in order)."""
        index_of = {keyed: index for index, keyed in enumerate(groups)}
        key_of = _key_getter([SHARED_KEY.index(name) for name in group])
        # -1: cells of no call left (see _added)
        cells = np.fromiter((index_of.get(key_of(cell), -1) for cell in self.cells), np.int64, len(self.cells))
        return self.latency.summed_per_group(cells, len(groups))

    def _added(self, group: tuple[str, ...]) -> tuple[list[tuple], Any, Any]:
        """The groups by `group` (names of SHARED_KEY) in the order first read, and their integer
        sums (INTEGER_SUMS, then the failures) and float sums, added in NumPy in row order (the
        same float sums as adding them in turn). Groups are told apart by integer codes."""
        keys, integers, floats = self._columns()
        codes, values = self.codes
        positions = [SHARED_KEY.index(name) for name in group]
        combined = np.zeros(len(keys), dtype=np.int64)
        for position in positions:
            combined = combined * len(values[position]) + codes[:, position]
        _unique, firsts, inverse = np.unique(combined, return_index=True, return_inverse=True)
        order = np.argsort(firsts)  # the groups in the order first read
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        rows = rank[inverse.reshape(-1)]
        groups = [tuple(values[position][codes[firsts[index], position]] for position in positions) for index in order]
        integer_totals = np.zeros((len(groups), integers.shape[1]), dtype=np.int64)
        float_totals = np.zeros((len(groups), floats.shape[1]))
        np.add.at(integer_totals, rows, integers)
        np.add.at(float_totals, rows, floats)
        # A group of no call: only rows beyond the window, read with a whole hour and subtracted.
        called = integer_totals[:, REQUESTS_POSITION] != 0
        if not called.all():
            groups = [keyed for keyed, kept in zip(groups, called.tolist(), strict=True) if kept]
            integer_totals, float_totals = integer_totals[called], float_totals[called]
        return groups, integer_totals, float_totals

    def _columns(self) -> tuple[list[tuple], Any, Any]:
        """The groups' keys (in the order first read) and their integer sums (then failures) and
        float sums as two arrays, made once (the reading is complete before any figure asks), the
        keys coded as integers (`codes`). The rows are added per key in NumPy, in row order: the
        same sums as adding them in turn in Python."""
        if self.columns is None:
            owners: dict[tuple, int] = {}
            rows = [owners.setdefault(key, len(owners)) for key in self.keys]
            table = np.array(self.values, dtype=object).reshape(len(self.values), len(ROLLUP_SUMS) + 1)
            table[np.equal(table, None)] = 0
            integer_rows = table[:, [*INTEGER_POSITIONS, len(ROLLUP_SUMS)]].astype(np.int64)
            float_rows = table[:, FLOAT_POSITIONS].astype(np.float64)
            if self.rolled is not None:  # read first: their rows come first
                integer_rows = np.concatenate([self.rolled[0], integer_rows])
                float_rows = np.concatenate([self.rolled[1], float_rows])
            integers = np.zeros((len(owners), len(INTEGER_POSITIONS) + 1), dtype=np.int64)
            floats = np.zeros((len(owners), len(FLOAT_SUMS)))
            np.add.at(integers, rows, integer_rows)
            np.add.at(floats, rows, float_rows)
            self.columns = (list(owners), integers, floats)
            self.codes = _coded(self.columns[0])
        return self.columns

    def add_failures(
        self,
        error_type: str,
        count: int,
        period: str,
        *,
        edge: bool = False,
        span: tuple[datetime, datetime] | None = None,
    ) -> None:
        """Count `count` failures of `error_type` in `period` (a PeriodOf text), within `span`
        (start, end) when narrower than the period (an hour of a reading by day). `edge`: of a
        whole hour with rows outside the window (subtract_edges), or (negative) of those rows: the
        hour holds a latest failure only if some are left once the outside rows are subtracted."""
        found = self.failures.setdefault(error_type, [0, None, None])
        found[0] += int(count)
        if span is None:  # the period's own span, made once per period (a local day's end is slow)
            span = self.spans.get(period)
            if span is None:
                start = datetime.fromisoformat(period)
                span = self.spans[period] = (start, period_end(start, self.period))
        if edge or count < 0:
            known = self.edge_failures.get((error_type, period))
            # The span of the edge hours' roll-ups; rows subtracted only lower the count.
            if known is None:
                low, high = span
            elif count < 0:
                low, high = known[1:]
            else:
                low, high = min(known[1], span[0]), max(known[2], span[1])
            self.edge_failures[(error_type, period)] = ((known[0] if known else 0) + int(count), low, high)
        else:
            found[1] = span[0] if found[1] is None else max(found[1], span[0])
            found[2] = span[1] if found[2] is None else max(found[2], span[1])

    def _settle_edges(self) -> None:
        """The edge hours whose failures are not all beyond the window count as spans with one."""
        for (error_type, period), (count, low, high) in self.edge_failures.items():
            if count > 0:
                self.add_failures(error_type, 0, period, span=(low, high))
        self.edge_failures.clear()

    def failures_by_type(self) -> dict[str, tuple[int, datetime]]:
        """Per error type: its failures in the window, and a time its latest one is not before
        (the latest start of an hour, day or period it failed in)."""
        self._settle_edges()
        return {error_type: (count, since) for error_type, (count, since, _until) in self.failures.items() if count}

    def failures_until(self) -> dict[str, datetime]:
        """Per error type with failures: a time its latest one is before (the latest end of an
        hour, day or period it failed in)."""
        self._settle_edges()
        return {error_type: until for error_type, (count, _since, until) in self.failures.items() if count}


REQUESTS_POSITION = INTEGER_SUMS.index("requests")
# The integer sums a figure's row shows (Totals.row).
ROW_INTEGERS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_units")
ERRORS_POSITION = len(INTEGER_SUMS)  # of SharedReading's integer sums: the failures, after INTEGER_SUMS
# The histograms of figures that carry none (SharedReading.sums): one array, read-only, rather than
# two 1,397-bucket arrays made per group (~10 ms per figure over a 7-day reading by hour).
NO_HISTOGRAM = rollup_math.empty()
NO_HISTOGRAM.setflags(write=False)


def _figures(integers: Any, floats: Any, latency: Any = NO_HISTOGRAM) -> rollups.Figures:
    """Figures of one group's integer and float sums (INTEGER_SUMS, FLOAT_SUMS order)."""
    figures = rollups.Figures(latency=latency, ttft=NO_HISTOGRAM)
    for name, value in zip(INTEGER_SUMS, integers[:ERRORS_POSITION].tolist(), strict=True):
        setattr(figures, name, value)
    for name, value in zip(FLOAT_SUMS, floats.tolist(), strict=True):
        setattr(figures, name, value)
    return figures


def _coded(keys: list[tuple]) -> tuple[Any, list[list]]:
    """SHARED_KEY tuples as integer codes: (an array of a row of codes per key, each position's
    values by code)."""
    codes = np.zeros((len(keys), len(SHARED_KEY)), dtype=np.int64)
    values: list[list] = []
    for position in range(len(SHARED_KEY)):
        known: dict[Any, int] = {}
        codes[:, position] = [known.setdefault(key[position], len(known)) for key in keys]
        values.append(list(known))
    return codes, values


def _key_getter(positions: list[int]) -> Any:
    """A function from a SHARED_KEY to its values at `positions`, as a tuple. operator.itemgetter
    does it in C: building the tuple in a generator took ~7 ms per figure over a 7-day reading's
    ~6,000 groups at 10,000,000 calls."""
    if not positions:
        return lambda _key: ()
    if len(positions) == 1:
        (position,) = positions
        return lambda key: (key[position],)
    return operator.itemgetter(*positions)


def share(chosen: Selection, period: str, recent: RecentRows | None = None) -> Selection:
    """`chosen` with its window read once by `period` (`shared`), when the roll-ups answer it.
    `recent`: the calls above the watermark, summed (see RecentRows), when the caller has them
    (planned at their state: the reading then takes those calls from them, not the logs)."""
    state = recent.state if recent is not None and recent.state is not None else rollup_state()
    the_plan = plan(chosen, period, state=state, subtract=True)
    if the_plan is None:
        return chosen
    reading = consistent(lambda watermark: read_shared(the_plan, watermark, recent=recent), the_plan)
    if reading is None:
        return chosen
    reading.state = state if reading.watermark == state.last_id else None
    return replace(chosen, shared=reading)


def read_shared(
    the_plan: Plan, watermark: int, *, recent: RecentRows | None = None, failures: bool = True
) -> SharedReading:
    """The plan's figures per (period, model) at `watermark` (see above). `recent`: the calls above
    the watermark, summed (see RecentRows); `failures`: whether to count them per error type."""
    period_of = PeriodOf(the_plan.period, the_plan.zone)
    reading = SharedReading(the_plan.period, watermark)
    blobs: list[Any] = []
    owners: list[int] = []
    if not the_plan.selection.status:
        # One query over DailyLatency and HourlyLatency, its SQL written out (llm/rollup_sql.py).
        split = the_plan.split
        rows = rollup_sql.latency_rows(split.days, split.hours, the_plan.selection.model)
        _add_latency_rows(reading, rows, period_of)
        blobs.extend(map(LATENCY_HISTOGRAM, rows))
        owners.extend(reading.cells.setdefault(key, len(reading.cells)) for key in reading.keys)
    for hourly, rows in _shared_rollup_rows(the_plan) if the_plan.selection.status else ():
        for moment, model, *values, failed, histogram in _driver_rows(rows) if hourly else rows:
            key = (period_of(hour_at(moment) if hourly else moment), model)
            reading.keys.append(key)
            reading.values.append([*values, failed])
            blobs.append(histogram)
            owners.append(reading.cells.setdefault(key, len(reading.cells)))
    if the_plan.selection.status:  # the rows per status: their histograms apart
        for moment, model, histogram in rollup_histograms(the_plan):
            blobs.append(histogram)
            owners.append(reading.cells.setdefault((period_of(moment), model), len(reading.cells)))
    if failures:
        _read_shared_failures(reading, the_plan, period_of)
    raw_buckets = _read_shared_raw(reading, the_plan, watermark, recent)
    reading.latency = rollup_math.unpack(owners, blobs, raw_buckets)
    return reading


# Where a latency_rows row (day, hour epoch, model_name, *ROLLUP_SUMS, failures, histogram) keeps
# what SharedReading.rolled holds: its integer sums (INTEGER_SUMS then the failures), its float sums.
LATENCY_INTEGERS = operator.itemgetter(*(3 + ROLLUP_SUMS.index(name) for name in INTEGER_SUMS), 3 + len(ROLLUP_SUMS))
LATENCY_FLOATS = operator.itemgetter(*(3 + ROLLUP_SUMS.index(name) for name in FLOAT_SUMS))
LATENCY_HISTOGRAM = operator.itemgetter(4 + len(ROLLUP_SUMS))


def _add_latency_rows(reading: SharedReading, rows: list[tuple], period_of: PeriodOf) -> None:
    """The rows of rollup_sql.latency_rows as `reading`'s first keys and `rolled` (their columns
    made by C getters, not a list per row: 7 days by hour at 10,000,000 calls are 1,134 rows)."""
    moments = {(day, epoch) for day, epoch, *_rest in rows}
    periods = {(day, epoch): period_of(hour_at(epoch) if day is None else day) for day, epoch in moments}
    reading.keys.extend([(periods[(row[0], row[1])], row[2]) for row in rows])
    integers = np.array(list(map(LATENCY_INTEGERS, rows)), dtype=np.int64).reshape(len(rows), len(INTEGER_SUMS) + 1)
    floats = np.array(list(map(LATENCY_FLOATS, rows)), dtype=np.float64).reshape(len(rows), len(FLOAT_SUMS))
    reading.rolled = (integers, floats)


def _shared_rollup_rows(the_plan: Plan) -> Iterator[tuple[bool, QuerySet]]:
    """(hourly, rows) of the plan's whole days and hours: each row (day, or hour as epoch seconds,
    model_name, *ROLLUP_SUMS, failures, latency histogram or None). From DailyLatency and
    HourlyLatency, or, under a status filter, from DailyRollup and HourlyRollup (their failures
    are their requests when the status is error; their histograms read apart). read_shared reads
    the former by rollup_sql.latency_rows: this serves a status filter."""
    status = the_plan.selection.status
    daily, hourly = period_model_tables(the_plan)
    failed = Case(When(status=LLMRequestLog.Status.ERROR, then=F("requests")), default=Value(0))
    extra = (
        {"failures": failed, "histogram": Value(None, BinaryField())}
        if status
        else {"failures": F("errors"), "histogram": F("latency_histogram")}
    )
    if the_plan.split.days:
        rows = daily.objects.filter(the_plan.daily()).order_by().annotate(**extra)
        yield False, rows.values_list("day", "model_name", *ROLLUP_SUMS, "failures", "histogram")
    if the_plan.split.hours:
        rows = hourly.objects.filter(the_plan.hourly()).order_by()
        rows = rows.annotate(hour_epoch=EpochSeconds("hour"), **extra)
        yield True, rows.values_list("hour_epoch", "model_name", *ROLLUP_SUMS, "failures", "histogram")


def _read_shared_failures(reading: SharedReading, the_plan: Plan, period_of: PeriodOf) -> None:
    """Add the failures per error type of the plan's whole days and hours (their count and latest
    period: a few rows per table, one query: llm/rollup_sql.py) to `reading`. The hours reaching
    beyond the window (subtract_edges) come apart, each under its own epoch."""
    if the_plan.selection.status not in ("", LLMRequestLog.Status.ERROR):
        return  # no failure among the rows of another status
    split = the_plan.split
    edges = sorted({rollup_math.floor_hour(low) for low, _high in split.outside}) if split.hours else []
    for error_type, count, latest_day, edge, latest_hour in rollup_sql.failure_rows(
        split.days, split.hours, the_plan.selection.model, edges
    ):
        if latest_day is not None:
            day = (
                rollup_math.day_start(latest_day, the_plan.zone),
                rollup_math.day_start(latest_day + ONE_DAY, the_plan.zone),
            )
            reading.add_failures(error_type, count, period_of(latest_day), span=day)
            continue
        hour = hour_at(edge or latest_hour)
        reading.add_failures(error_type, count, period_of(hour), edge=bool(edge), span=(hour, hour + ONE_HOUR))


def _driver_rows(rows: QuerySet) -> list[tuple]:
    """The rows of a values_list of integer, float and text columns as the database driver answers
    them, without Django's converters (none changes such a value): 7 days of hourly roll-ups are
    ~6,000 rows of 16 columns at 10,000,000 calls, converted in ~7 ms."""
    sql, params = rows.query.sql_with_params()
    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _read_shared_raw(
    reading: SharedReading, the_plan: Plan, watermark: int, recent: RecentRows | None = None
) -> list[tuple[int, int, int]]:
    """Add the raw rows of the plan (edges, rows above the watermark unless `recent` tells none
    lies within its roll-ups' spans) to `reading`, and subtract its `outside` rows (the parts of
    whole hours beyond the window: their sums, failures and buckets negated); answers their
    latency buckets as (cell, bucket, count), the cells made room for before the merge. Without a
    period (window totals) the rows' period is None."""
    sums = _raw_sums()
    buckets: list[tuple[int, int, int]] = []
    raw_period = RawPeriod(the_plan) if the_plan.period else None
    known = _recent_within(the_plan, watermark, recent)
    columns = _RawColumns(list(sums))
    for sign, rows in _raw_reading_parts(the_plan, watermark, recent, known is None):
        grouped = _raw_grouped(rows, raw_period, sums, signed=not sign)
        found = _driver_rows(grouped)
        signs = [sign] if sign else [1, -1]
        for part_sign in signs:
            part = found if sign else [row[1:] for row in found if row[0] == part_sign]
            buckets.extend(_add_raw_groups(reading, columns, raw_period, grouped, part, part_sign))
    if known:
        buckets.extend(_add_recent(reading, columns, the_plan, known))
    return buckets


def _raw_reading_parts(
    the_plan: Plan, watermark: int, recent: RecentRows | None, above: bool
) -> list[tuple[int, QuerySet]]:
    """The raw parts of a shared reading as (sign, rows): 1 for rows added, -1 for rows subtracted,
    0 for rows of both, told apart by their `sign` column (_signed_edges). `above`: with the
    rows above the watermark (unless `recent` tells none lies within the plan's roll-ups)."""
    split = the_plan.split
    if split.raw and split.outside:
        # The edges and the rows beyond the window in one query (one SQL built, one round trip).
        parts: list[tuple[int, QuerySet]] = [(0, _signed_edges(the_plan, watermark))]
        if above:  # Plan.raw_rows' parts after the edges
            parts += [(1, rows) for rows in _raw_parts(the_plan, watermark, recent)[1:]]
        return parts
    kept = _raw_parts(the_plan, watermark, recent) if above else the_plan.raw_rows(watermark)[:-1]
    parts = [(1, rows) for rows in kept]
    outside = the_plan.outside_rows(watermark)
    if outside is not None:
        parts.append((-1, outside))
    return parts


def _signed_edges(the_plan: Plan, watermark: int) -> QuerySet:
    """The rows of the plan's raw edges and of its `outside` spans up to the watermark (what
    Plan.raw_rows' first part and Plan.outside_rows read), `sign` 1 for the former, -1 for the latter."""
    within, beyond = Q(pk__in=[]), Q(pk__in=[])
    for start, end in the_plan.split.raw:
        within |= Q(timestamp__gte=start, timestamp__lt=end)
    for start, end in the_plan.split.outside:
        beyond |= Q(timestamp__gte=start, timestamp__lt=end)
    beyond &= Q(id__lte=watermark)
    rows = LLMRequestLog.objects.filter(the_plan.selection.matching()).filter(within | beyond).order_by()
    return rows.annotate(sign=Case(When(beyond, then=Value(-1)), default=Value(1), output_field=IntegerField()))


def _add_raw_groups(
    reading: SharedReading,
    columns: _RawColumns,
    raw_period: RawPeriod | None,
    grouped: QuerySet,
    found: list[tuple],
    sign: int,
) -> list[tuple[int, int, int]]:
    """Add raw groups as the driver answered them ((period,) model, status, error type, bucket,
    sums) to `reading`, times `sign`; answers their (cell, bucket, count)."""
    if raw_period is None:
        return columns.add(reading, [None] * len(found), found, sign)
    # A UTC hour number is an integer as the driver answers it: no converter, no SQL compiled to find one.
    period_of = (lambda moment: moment) if raw_period.by_hour_number else _period_column_converter(grouped)
    moments = [row[0] for row in found]
    texts = {moment: raw_period.text(period_of(moment)) for moment in set(moments)}
    periods = [texts[moment] for moment in moments]
    return columns.add(reading, periods, [row[1:] for row in found], sign)


def _add_recent(reading: SharedReading, columns: _RawColumns, the_plan: Plan, known: list[tuple]) -> list[tuple]:
    """Add RecentRows groups (_recent_within) to `reading` under their hour's period."""
    period_of = PeriodOf(the_plan.period, the_plan.zone)
    texts = {hour: period_of(hour_at(hour * SECONDS_PER_HOUR)) for hour in {group[0] for group in known}}
    return columns.add(reading, [texts[group[0]] for group in known], [group[1:] for group in known], 1)


def _recent_within(the_plan: Plan, watermark: int, recent: RecentRows | None) -> list[tuple] | None:
    """The groups of `recent` (RecentRows.groups) the plan's reading counts above the watermark:
    those of its model and status in hours wholly within its rolled-up spans. None when they do
    not tell: read at another watermark, a breakdown's reading, or an hour partly within the spans
    or not one local hour (a zone a half hour off UTC): then the calls are read."""
    if recent is None or recent.watermark != watermark or the_plan.breakdown:
        return None
    chosen = the_plan.selection
    bounds = [(start.timestamp(), end.timestamp()) for start, end in the_plan.rolled_up_within()]
    groups = [group for group in recent.groups if chosen.model in ("", group[1]) and chosen.status in ("", group[2])]
    # Placed once per hour: the groups are many per hour (one per model, status, type and bucket).
    places = {hour: _hour_within(hour * SECONDS_PER_HOUR, bounds, the_plan.zone) for hour in {g[0] for g in groups}}
    if None in places.values():
        return None
    return [group for group in groups if places[group[0]]]


def _hour_within(low: int, bounds: list[tuple[float, float]], zone: Any) -> bool | None:
    """Whether the UTC hour starting `low` (epoch seconds) lies wholly within one of `bounds` (and
    is one local hour), or wholly outside them all; None: partly within, or not one local hour."""
    high = low + SECONDS_PER_HOUR
    if any(low >= start and high <= end for start, end in bounds):
        return True if rollup_math.whole_hour_offsets(zone, hour_at(low)) else None
    return None if any(low < end and high > start for start, end in bounds) else False


class _RawColumns:
    """Where raw groups' sums (_raw_sums, after model, status, error type and bucket) go among a
    SharedReading's columns. The groups are added column by column (zip in C), not group by
    group: a page reads ~2,000 raw groups at 10,000,000 calls (~4 µs each, one at a time)."""

    def __init__(self, names: list[str]) -> None:
        self.cost, self.requests = names.index("cost_units"), names.index("requests")
        self.positions = [names.index(name) if name in names else None for name in ROLLUP_SUMS]

    def add(self, reading: SharedReading, periods: list, rows: list[tuple], sign: int) -> list[tuple[int, int, int]]:
        """Add groups (model, status, error type, bucket, sums) under (period, model), their sums
        times `sign` (-1: subtracted); answers their (cell, bucket, count)."""
        if not rows:
            return []
        models, statuses, error_types, buckets, *sums = (list(column) for column in zip(*rows, strict=True))
        # Sums come as the driver answers them (a PostgreSQL SUM of integers is a numeric): the
        # reading's integer and float columns are made whole or float in NumPy (_columns).
        sums[self.cost] = [rollups.as_units(value) for value in sums[self.cost]]
        if sign < 0:
            sums = _negated_columns(sums)
        requests = sums[self.requests]
        error = LLMRequestLog.Status.ERROR
        failed = [count if status == error else 0 for count, status in zip(requests, statuses, strict=True)]
        missing = [None] * len(rows)
        keys = list(zip(periods, models, strict=True))
        reading.keys.extend(keys)
        reading.values.extend(
            zip(*(missing if position is None else sums[position] for position in self.positions), failed, strict=True)
        )
        _add_failures(reading, periods, error_types, failed)
        cells = [reading.cells.setdefault(key, len(reading.cells)) for key in keys]
        return list(zip(cells, map(int, buckets), map(int, requests), strict=True))


def _negated_columns(columns: list[list]) -> list[list]:
    return [[None if value is None else -value for value in column] for column in columns]


def _add_failures(reading: SharedReading, periods: list, error_types: list[str], failed: list[int]) -> None:
    """Count raw groups' failures (0: not failed) per error type and period (None: not kept)."""
    for period, error_type, count in zip(periods, error_types, failed, strict=True):
        if count and period is not None:
            reading.add_failures(error_type, count, period)


def _raw_grouped(
    rows: QuerySet, raw_period: RawPeriod | None, sums: dict[str, Aggregate], *, signed: bool = False
) -> QuerySet:
    """Raw rows' sums by (`sign`, when `signed`; period, when `raw_period`) model, status, error
    type and latency bucket."""
    grouped = rows.annotate(bucket=rollups.bucket_of("latency_ms"))
    if raw_period is not None:
        grouped = grouped.annotate(period=raw_period.expression())
    by = (("sign",) if signed else ()) + (("period",) if raw_period is not None else ())
    return grouped.values(*by, "model_name", "status", "error_type", "bucket").annotate(**sums)


def _period_column_converter(rows: QuerySet) -> Callable[[Any], Any]:
    """The value of the `period` column of `rows` as Django answers it, from the driver's: applied
    once per distinct value (a few periods) rather than with every column's converters on every
    row (~17 ms over the ~1,800 raw groups of a 90-day reading at 10,000,000 calls)."""
    connection = connections[rows.db]
    compiler = rows.query.get_compiler(rows.db)
    compiler.setup_query()
    first = next(expression for expression, _sql, alias in compiler.select if alias == "period")
    converters = compiler.get_converters([first]).get(0, ([], first))[0]

    def convert(value: Any) -> Any:
        for converter in converters:
            value = converter(value, first, connection)
        return value

    return convert


@dataclass
class Totals:
    """Figures of one group, failures counted apart: what _traffic answers from raw rows."""

    figures: rollups.Figures
    errors: int = 0
    # (a copy of the latency histogram, {fraction: percentile}) when computed with other groups'
    # at once (SharedReading.totals); used only while `figures.latency` still equals that copy.
    known: tuple[Any, dict[float, float | None]] | None = field(default=None, compare=False, repr=False)

    def percentiles(self, fractions: list[float]) -> list[float | None]:
        """rollup_math.percentiles of the latency histogram; computed with other groups' when known."""
        known = self.known
        if (
            known is not None
            and all(f in known[1] for f in fractions)
            and np.array_equal(known[0], self.figures.latency)
        ):
            return [known[1][fraction] for fraction in fractions]
        return rollup_math.percentiles(self.figures.latency, fractions)

    def row(self, *percentile_names: str, min_calls: int = 0) -> dict[str, Any]:
        figures = self.figures
        requests = figures.requests
        values = self.percentiles([FRACTIONS[name] for name in percentile_names])
        if requests < min_calls:
            values = [None] * len(percentile_names)
        return {
            "requests": requests,
            "errors": self.errors,
            "prompt_tokens": figures.prompt_tokens,
            "completion_tokens": figures.completion_tokens,
            "total_tokens": figures.total_tokens,
            "cost": float(rollups.usd(figures.cost_units)),
            "avg_latency_ms": figures.latency_sum_ms / requests if requests else None,
            **{f"{name}_latency_ms": value for name, value in zip(percentile_names, values, strict=True)},
            "error_rate": rate(self.errors, requests),
        }


def fold_status(found: KeyedFigures) -> dict[tuple, Totals]:
    """Figures keyed (..., status) -> Totals keyed (...): the status folded into an error count."""
    folded: dict[tuple, Totals] = {}
    for key, figures in found.items():
        totals = folded.setdefault(key[:-1], Totals(rollups.Figures()))
        totals.figures.add_sums(_sums(figures))
        totals.figures.latency += figures.latency
        if key[-1] == LLMRequestLog.Status.ERROR:
            totals.errors += figures.requests
    return folded


def _sums(figures: rollups.Figures) -> dict[str, Any]:
    return {name: getattr(figures, name) for name in ROLLUP_SUMS}


def _user_sources(the_plan: Plan, *, weeks: bool = False) -> tuple[list[QuerySet], list[tuple], list[tuple]]:
    """Where the users of the plan's window are: the user roll-ups of its whole days and (without
    a model or status filter) whole hours, the spans read raw, and the spans the roll-ups answer.
    `weeks` (sums only, no status filter): the whole weeks among the days from WeeklyUserRollup."""
    chosen = the_plan.selection
    breakdown = bool(chosen.model or chosen.status)
    split = the_plan.split
    tables, raw_spans, rolled_spans = [], list(split.raw), []
    if split.days:
        table = DailyUserRollup if breakdown else DailyUserTotals
        runs = [(split.days[0], split.days[-1])]
        if weeks and not chosen.status:
            runs, whole_weeks = _around_whole_weeks(split.days[0], split.days[-1])
            if whole_weeks is not None:
                model = chosen.model or WeeklyUserRollup.ALL_MODELS
                within = {"week__gte": whole_weeks[0], "week__lte": whole_weeks[1]}
                tables.append(WeeklyUserRollup.objects.filter(model_name=model, **within))
        tables.extend(table.objects.filter(chosen.matching(day__gte=first, day__lte=last)) for first, last in runs)
        rolled_spans.append(split.rolled_up_spans(the_plan.zone)[-1])
    if split.hours and not breakdown:
        within = Q(pk__in=[])
        for start, end in split.hours:
            within |= Q(hour__gte=start, hour__lt=end)
        tables.append(HourlyUserTotals.objects.filter(within))
        rolled_spans.extend(split.hours)
    else:
        raw_spans.extend(split.hours)
    return tables, raw_spans, rolled_spans


def _around_whole_weeks(first: date_type, last: date_type) -> tuple[list[tuple[date_type, date_type]], tuple | None]:
    """The days [first, last] as the whole weeks (Monday to Sunday) among them, (first Monday,
    last Monday) or None, and the runs of days before and after those weeks."""
    monday = rollups.week_of(first + timedelta(days=6))  # the first Monday on or after `first`
    final = rollups.week_of(last + timedelta(days=1)) - timedelta(days=7)  # the last whole week's Monday
    if final < monday:
        return [(first, last)], None
    runs = [(first, monday - timedelta(days=1)), (final + timedelta(days=7), last)]
    return [(start, end) for start, end in runs if start <= end], (monday, final)


def _per_user_sql(rows: QuerySet, fields: dict[str, Aggregate] | None) -> tuple[str, tuple]:
    rows = rows.values("user_id").order_by()
    return (rows.annotate(**fields) if fields else rows).query.sql_with_params()


def _user_parts(
    the_plan: Plan,
    watermark: int,
    rollup_fields: dict | None,
    raw_fields: dict | None,
    *,
    walk_days: bool = False,
    weeks: bool = False,
) -> tuple:
    """SQL parts that together hold the users of the plan's window, each grouped by user (with
    `rollup_fields` / `raw_fields` when given): the user roll-ups (_user_sources), the raw rows
    of the other spans, and the rows above the watermark. `walk_days` (distinct users only): the
    users of many whole days by _walked_users. `weeks`: whole weeks from their roll-up."""
    tables, raw_spans, rolled_spans = _user_sources(the_plan, weeks=weeks)
    days = the_plan.split.days
    walked = []
    if walk_days and len(days) >= WALK_USERS_FROM_DAYS and tables and tables[0].model is not HourlyUserTotals:
        chosen = the_plan.selection
        walked.append(_walked_users(tables.pop(0).model, days, chosen.model, chosen.status))
    matching = LLMRequestLog.objects.filter(the_plan.selection.matching()).exclude(user_id="").order_by()
    # Touching spans joined: one index range and one part of the SQL each (about 1 ms of Python a part).
    raw_parts = rollup_math.joined_spans(raw_spans)
    raw = [matching.filter(timestamp__gte=start, timestamp__lt=end) for start, end in raw_parts]
    if rolled_spans:
        raw.append(above_watermark(matching, watermark, rolled_spans))
    parts = []
    for rows in tables:
        fields = rollup_fields
        if fields is not None and rows.model is DailyUserRollup:
            fields = {**fields, "u_errors": Sum("requests", filter=LLMRequestLog.FAILED)}
        parts.append(_per_user_sql(rows, fields))
    parts.extend(_per_user_sql(rows, raw_fields) for rows in raw)
    parts.extend(walked)
    return [sql for sql, _params in parts], tuple(param for _sql, params in parts for param in params)


USER_ROLLUP_FIELDS = {
    "u_requests": Sum("requests"),
    "u_errors": Sum("errors"),
    "u_total_tokens": Sum("total_tokens"),
    "u_cost_units": Sum("cost_units"),
}


def _user_raw_fields() -> dict[str, Any]:
    """Per-user sums of raw rows, counted over columns the (model_name, timestamp, user_id) index
    holds (COUNT(*), status: never NULL), so that one model's rows are read from that index alone:
    COUNT(id) made PostgreSQL read the calls themselves (the 17 hours of today of one model at
    10,000,000 calls: ~29,000 calls, ~165 -> ~34 ms)."""
    return {
        "u_requests": Count("*"),
        "u_errors": Count("status", filter=LLMRequestLog.FAILED),
        "u_total_tokens": Sum("total_tokens"),
        "u_cost_units": summed_cost_units(),
    }


def summed_cost_units() -> Any:
    """The cost of each group's calls in roll-up units, exact. PostgreSQL: SUM(cost) x 10^10, one
    multiplication per group rather than one per call (numeric arithmetic is exact: the same
    number), half the time of a user's raw calls (one model's 19 hours of today at 10,000,000
    calls: 67-119 -> 34-47 ms). SQLite keeps decimals as floats: each cost is rounded to its units
    first (rollups.cost_units_sum)."""
    if connections["default"].vendor != "postgresql":
        return rollups.cost_units_sum()
    return ExpressionWrapper(Sum("cost_estimate") * Value(rollups.COST_SCALE), output_field=BigIntegerField())


def _user_totals_sql(the_plan: Plan, watermark: int) -> tuple[str, tuple]:
    """Per-user sums of the plan's window. The local day the window ends in is read whole from the
    user roll-ups, less the calls after the window's end, when those are fewer hours
    (_ending_day_split): sums and counts subtract exactly. A user whose calls all fell after the
    end sums to no requests and is left out."""
    ending = _ending_day_split(the_plan)
    trimmed = the_plan if ending is None else replace(the_plan, split=ending[0])
    parts, params = _user_parts(trimmed, watermark, USER_ROLLUP_FIELDS, _user_raw_fields(), weeks=True)
    if ending is not None:
        later = LLMRequestLog.objects.filter(the_plan.selection.matching()).exclude(user_id="").order_by()
        later_sql, later_params = _per_user_sql(
            later.filter(timestamp__gte=ending[1][0], timestamp__lt=ending[1][1]), _user_raw_fields()
        )
        negated = ", ".join(f"-{name}" for name in USER_ROLLUP_FIELDS)
        parts = [*parts, f"SELECT user_id, {negated} FROM ({later_sql}) AS later"]  # noqa: S608 - ORM-made SQL
        params = (*params, *later_params)
    union = " UNION ALL ".join(parts)
    sums = "SUM(u_requests) AS requests, SUM(u_errors) AS errors, SUM(u_total_tokens) AS total_tokens"
    sql = (
        f"SELECT user_id, {sums}, SUM(u_cost_units) AS cost_units FROM ({union}) AS parts"  # noqa: S608
        " GROUP BY user_id HAVING SUM(u_requests) > 0"
    )
    return sql, params


def _ending_day_split(the_plan: Plan) -> tuple[rollup_math.Split, tuple[datetime, datetime]] | None:
    """The plan's split with the local day its window ends in as a whole day, and the span of that
    day after the window's end (to subtract), when the window holds the day's start and more of the
    day than it leaves out (a window ending now: the rest of today, no calls). Else None. At
    10,000,000 calls one model's 21 hours of today were ~36,500 calls read raw (~17 ms) where the
    day's user roll-up holds ~600 rows. (Calls after the end are newer than those before it, so
    purge_logs never leaves the subtracted part without the part it is taken from.)"""
    chosen, zone = the_plan.selection, the_plan.zone
    start, end = chosen.start, chosen.end
    day = rollup_math.local_date(end, zone)
    day_start = rollup_math.day_start(day, zone)
    next_day = rollup_math.day_start(day + timedelta(days=1), zone)
    if not start <= day_start < end or next_day - end >= end - day_start or not _daily_rows_from(chosen, start):
        return None
    split = rollup_math.split_window(start, day_start, zone)
    split.days.append(day)
    return split, (end, next_day)


def _daily_rows_from(chosen: Selection, start: datetime) -> bool:
    """Whether the daily roll-ups answer from `start` on (as `plan` decides for its whole days)."""
    state = state_of(chosen)
    since = state.days_since
    zone = timezone.get_current_timezone()
    return rollups.daily_rows_valid(state) and (since is None or start >= rollup_math.day_start(since, zone))


# From this many whole days on, the users of the days are found by probing each user (_walked_users)
# rather than by reading a row per user and day: a probe costs about what reading ~2 rows does, and
# a window of D days reads about D rows per active user (more with a status per model). Below it,
# a window's rows are few anyway, while a deployment with many users who have gone quiet would
# pay a probe for each of them.
WALK_USERS_FROM_DAYS = 14
NOT_BLANK = "user_id <> ''"


def _walked_users(table: type, days: list[date_type], model: str, status: str) -> tuple[str, tuple]:
    """SQL answering the distinct users of a user roll-up by day (`table`; of one model and status
    when given) on `days`, one index probe per user of the table rather than a row per user and
    day: a recursive walk of its distinct user_ids (each step the next smaller one: one probe of
    the index led by (model_name,) user_id, as PostgreSQL has no skip scan), keeping each user who
    has a row on one of the days (a second probe of that index; a scalar subquery with LIMIT, which
    the planner cannot turn into a join that reads every row of the days). Portable: SQLite runs it
    too."""
    name = table._meta.db_table
    of_model, model_params = (["model_name = %s"], (model,)) if model else ([], ())
    within, within_params = [*of_model, "day >= %s", "day <= %s"], (*model_params, days[0], days[-1])
    if status:
        within, within_params = [*within, "status = %s"], (*within_params, status)

    def where(*conditions: str) -> str:
        return " AND ".join(conditions)

    # Only our table's name and constant conditions are put in the text; the values are parameters.
    newest = f"SELECT user_id FROM {name} WHERE {where(*of_model, NOT_BLANK)} ORDER BY user_id DESC LIMIT 1"  # noqa: S608
    smaller = f"SELECT user_id FROM {name} WHERE {where(*of_model, 'user_id < walked.user_id')}"  # noqa: S608
    on_a_day = f"SELECT 1 FROM {name} WHERE {where(*within, 'user_id = walked.user_id')} LIMIT 1"  # noqa: S608
    sql = (
        f"SELECT user_id FROM (WITH RECURSIVE walked(user_id) AS (SELECT user_id FROM ({newest}) AS newest"  # noqa: S608
        f" UNION ALL SELECT ({smaller} ORDER BY user_id DESC LIMIT 1) FROM walked WHERE walked.user_id IS NOT NULL)"
        f" SELECT user_id FROM walked WHERE walked.user_id IS NOT NULL AND walked.{NOT_BLANK} AND ({on_a_day}) = 1)"
        " AS walked_users"
    )
    return sql, (*model_params, *model_params, *within_params)


def unique_users_from_rollups(the_plan: Plan, watermark: int) -> int:
    """Distinct users of the user roll-ups of the whole days and hours and of the raw rows elsewhere."""
    parts, params = _user_parts(the_plan, watermark, None, None, walk_days=True)
    if not parts:
        return 0
    with connections["default"].cursor() as cursor:
        # DISTINCT: a single part (one joined raw span) is a row per call, not deduplicated by a UNION.
        cursor.execute(f"SELECT COUNT(DISTINCT user_id) FROM ({' UNION '.join(parts)}) AS users", params)  # noqa: S608
        return cursor.fetchone()[0]


USER_ORDER_COLUMNS = {"cost": "cost_units", "requests": "requests"}


def top_users_from_rollups(the_plan: Plan, watermark: int, order_by: str, limit: int) -> list[dict[str, Any]]:
    return ranked_users_from_rollups(the_plan, watermark, limit)[order_by]


def ranked_users_from_rollups(the_plan: Plan, watermark: int, limit: int) -> dict[str, list[dict[str, Any]]]:
    """The top `limit` users by cost and by requests from one summing of the window's users (the
    analytics page shows both: summing twice cost it 60-300 ms at 1,000,000 calls): each user
    ranked both ways in SQL, the users in either top kept."""
    sql, params = _user_totals_sql(the_plan, watermark)
    ranks = ", ".join(
        f"ROW_NUMBER() OVER (ORDER BY {column} DESC, user_id) AS by_{order}"
        for order, column in USER_ORDER_COLUMNS.items()
    )
    within = " OR ".join(f"by_{order} <= %s" for order in USER_ORDER_COLUMNS)
    ranked = f"SELECT * FROM (SELECT totals.*, {ranks} FROM ({sql}) AS totals) AS ranked WHERE {within}"  # noqa: S608
    with connections["default"].cursor() as cursor:
        cursor.execute(ranked, (*params, *[int(limit)] * len(USER_ORDER_COLUMNS)))
        rows = cursor.fetchall()
    answer: dict[str, list[dict[str, Any]]] = {}
    for position, order in enumerate(USER_ORDER_COLUMNS, start=5):
        chosen = sorted((row for row in rows if row[position] <= limit), key=lambda row: row[position])
        answer[order] = [
            {
                "user_id": user_id,
                "requests": int(requests),
                "errors": int(errors or 0),
                "total_tokens": int(tokens or 0),
                "cost": float(rollups.usd(rollups.as_units(units))),
            }
            for user_id, requests, errors, tokens, units, *_ranks in chosen
        ]
    return answer


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


def overview(logs: Selection | LLMRequestLogQuerySet) -> dict[str, Any]:
    chosen = selection(logs)
    the_plan = plan(chosen)
    if the_plan is not None and chosen.shared is not None:
        totals = chosen.shared.totals((), None).get((), Totals(rollups.Figures()))
        # At the reading's watermark, even if it moved since: rows rolled up meanwhile are read
        # twice (roll-ups and logs), which a distinct count does not mind.
        return _overview_answer(
            totals.row("p50", "p95", "p99"), unique_users_from_rollups(the_plan, chosen.shared.watermark)
        )
    if the_plan is not None:

        def read(watermark: int) -> tuple[dict[str, Any], int]:
            totals = totals_at(the_plan, (), watermark).get((), Totals(rollups.Figures()))
            return totals.row("p50", "p95", "p99"), unique_users_from_rollups(the_plan, watermark)

        answer = consistent(read, the_plan)
        if answer is not None:
            return _overview_answer(*answer)
    if the_plan is None and (answer := _overview_of_group(chosen)) is not None:
        return answer
    figures = _traffic(
        chosen.logs.aggregate(**_traffic_aggregates(), **_latency_aggregates("p50", "p95", "p99")), "p50", "p95", "p99"
    )
    return _overview_answer(figures, _unique_users(chosen.logs))


def _overview_of_group(chosen: Selection) -> dict[str, Any] | None:
    """The overview under one source or tag value (Selection.narrowed_to) from the breakdown
    roll-ups, its unique users counted from the calls (no roll-up holds users per group); None
    when they do not answer."""
    the_plan = breakdown_plan(chosen)
    if the_plan is None:
        return None

    def read(watermark: int) -> tuple[dict[str, Any], int]:
        totals = fold_status(measure_at(the_plan, ("status",), watermark)).get((), Totals(rollups.Figures()))
        return totals.row("p50", "p95", "p99"), _unique_users(chosen.logs)

    answer = consistent(read, the_plan)
    return None if answer is None else _overview_answer(*answer)


def _unique_users(logs: LLMRequestLogQuerySet) -> int:
    return logs.exclude(user_id="").aggregate(users=Count("user_id", distinct=True))["users"]


def _overview_answer(figures: dict[str, Any], unique_users: int) -> dict[str, Any]:
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
        "unique_users": unique_users,
    }


def overview_figures(logs: Selection | LLMRequestLogQuerySet) -> dict[str, Any]:
    """overview() without `unique_users`, for a page that does not show it: a distinct count of
    the window's users is the costliest part of overview() (the user roll-ups of every day, 40-60
    ms over 90 days at 1,000,000 calls). Every other figure as overview() answers it: from the
    selection's shared reading when it has one, else overview() itself."""
    chosen = selection(logs)
    if chosen.shared is not None and plan(chosen) is not None:
        totals = chosen.shared.totals((), None).get((), Totals(rollups.Figures()))
        answer = _overview_answer(totals.row("p50", "p95", "p99"), 0)
    else:
        answer = overview(chosen)
    answer.pop("unique_users")
    return answer


@dataclass(frozen=True)
class Window:
    """The calls of [start, end), of one model or of all (blank); `latency` asks for its p95 too
    (a sort of the window's rows, so only when a rule needs it)."""

    start: datetime
    end: datetime
    model: str = ""
    latency: bool = False
    # The alert rules of later types: failures of one type only, another percentile (a key of
    # ALERT_PERCENTILES), or the ratings given in the window. Measured from the raw rows.
    error_type: str = ""
    percentile: str = ""
    feedback: bool = False

    @property
    def raw_only(self) -> bool:
        return bool(self.error_type or self.percentile or self.feedback)

    @property
    def span(self) -> tuple[datetime, datetime, str]:
        """What a roll-up plan depends on: windows differing only in what they ask share one."""
        return (self.start, self.end, self.model)

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
    p99_latency_ms: float | None = None
    p95_ttft_ms: float | None = None
    # Ratings given in the window (feedback rules).
    thumbs_up: int = 0
    thumbs_down: int = 0

    @property
    def error_rate(self) -> float | None:
        """overview()'s error_rate, or None without requests: 0 % of nothing is no rate."""
        return rate(self.errors, self.requests) if self.requests else None

    @property
    def ratings(self) -> int:
        return self.thumbs_up + self.thumbs_down

    @property
    def satisfaction(self) -> float | None:
        return satisfaction_rate(self.thumbs_up, self.thumbs_down)


def growth(current: float, previous: float) -> float | None:
    """`current` as a multiple of `previous`; None without a baseline (nothing before)."""
    return current / previous if previous else None


WINDOW_FIGURES = ("requests", "errors", "total_tokens", "cost")


def window_totals(windows: Iterable[Window], recent: RecentRows | None = None) -> dict[Window, WindowTotals]:
    """The totals of several windows. Those the roll-ups answer (longer than EXACT_WINDOW) are read
    from them, all at one watermark (the roll-ups' state read once, not twice per window), a window
    asked for with and without its p95 once; the others from one reading of the rows they cover
    (_call_totals). A longer window's whole days and UTC hours come from the roll-ups and its
    part-hours at either end (its `edges`) from that same one reading, so rules that end now read
    the newest calls once rather than once per window, and every edge is summed in SQL per group.
    A part-hour that is most of its hour is read as the hour's roll-up less the rest of the hour
    (rollup_math.subtract_edges, as the shared reading does): the smaller side of each hour is read
    from the rows (the alerts page at 10,000,000 calls: a freshly ingested hour costs a page read
    per call, so the 6-hour rules' previous window no longer reads 43 minutes of it for 17). The
    rest is read up to the watermark the roll-ups were read at, and the rows above it are counted
    within the window only, so a call written meanwhile is neither added nor taken twice.
    `recent`: the calls above the watermark, summed (see RecentRows)."""
    windows = list(dict.fromkeys(windows))
    plans = _plan_windows(windows, recent.state if recent is not None else None)
    found, watermark = {}, 0
    if plans:
        reading = consistent(lambda at: (at, _read_cores(plans)), next(iter(plans.values())))
        if reading is None:  # the roll-ups kept moving: every window from the logs
            plans = {}
        else:
            watermark, found = reading
    planned = [window for window in windows if not window.raw_only and window.span in plans]
    edges = {window: _edges_of(window, plans[window.span].split) for window in planned}
    parts = RolledUpParts.of(
        edges, watermark, [window for window in planned if _may_hold_above(window, recent, watermark)]
    )
    raw_totals, read = _raw_window_totals([window for window in windows if window not in planned], parts)
    measured: dict[Window, WindowTotals] = {}
    empty = Totals(rollups.Figures())
    for window, (inside, outside) in edges.items():
        added = [found[window.span], read.above.get(window, empty), *(read.edges[edge] for edge in inside)]
        totals = _summed(added, [read.rest[edge] for edge in outside])
        measured[window] = _window_figures(totals, window.latency)
    return {**measured, **raw_totals}


@dataclass(frozen=True)
class RolledUpParts:
    """What one reading of the rows adds to windows whose days and hours the roll-ups answered at
    `watermark`: their part-hours (`edges`: their rows up to the watermark), the rest of their
    subtracted hours (`rest`: rows up to the watermark, subtracted), and each window's rows above
    the watermark (`windows`), read here for all windows at once rather than by each roll-up
    reading (the alerts page: six readings of the calls not rolled up yet -> none)."""

    edges: list[Window] = field(default_factory=list)
    rest: list[Window] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    watermark: int = 0

    @classmethod
    def of(
        cls, edges: dict[Window, tuple[list[Window], list[Window]]], watermark: int, above: list[Window]
    ) -> RolledUpParts:
        """From {window: (its edges, its rests)} (_edges_of), each part once, and the windows whose
        rows above the watermark are read (`above`)."""
        inside = [edge for added, _taken in edges.values() for edge in added]
        outside = [edge for _added, taken in edges.values() for edge in taken]
        return cls(list(dict.fromkeys(inside)), list(dict.fromkeys(outside)), above, watermark)

    def __bool__(self) -> bool:
        return bool(self.edges or self.rest or self.windows)

    def above(self) -> Q:
        """The rows above the watermark within the windows: an index range on the id; their time
        tested on COALESCE(timestamp, timestamp), which no index answers (above_watermark)."""
        if not self.windows:
            return Q(pk__in=[])
        return Q(id__gt=self.watermark, id__lte=LARGEST_ID) & _covering(self.windows, "stamp")


@dataclass
class PartTotals:
    """RolledUpParts' Totals: per edge, per rest, and per window above the watermark."""

    edges: dict[Window, Totals] = field(default_factory=dict)
    rest: dict[Window, Totals] = field(default_factory=dict)
    above: dict[Window, Totals] = field(default_factory=dict)


def _may_hold_above(window: Window, recent: RecentRows | None, watermark: int) -> bool:
    """Whether the window may hold calls above the watermark: unless `recent` (read at that
    watermark) tells none lies within it (the overview's previous window, seldom touched by them);
    the window is then what the calls up to the watermark make it."""
    if recent is None or recent.watermark != watermark:
        return True
    return recent.touch([(window.start, window.end)], window.model)


def _edges_of(window: Window, split: rollup_math.Split) -> tuple[list[Window], list[Window]]:
    """The window's part-hours read from the rows (added), and the rest of its subtracted hours
    (taken away), as Windows of its model (with the latency histogram it asks for)."""

    def parts(spans: list[tuple[datetime, datetime]]) -> list[Window]:
        return [Window(start, end, window.model, latency=window.latency) for start, end in spans]

    return parts(split.raw), parts(split.outside)


def _window_figures(totals: Totals, latency: bool) -> WindowTotals:
    row = totals.row("p95") if latency else totals.row()
    return WindowTotals(
        requests=row["requests"],
        errors=row["errors"],
        total_tokens=row["total_tokens"],
        cost=row["cost"],
        p95_latency_ms=row.get("p95_latency_ms"),
    )


def _plan_windows(windows: list[Window], state: MetricWatermark | None = None) -> dict[tuple, Plan]:
    """Per (start, end, model): the plan of the windows the roll-ups answer (edges that are most of
    a recent hour subtracted: plan(subtract=True)); the others are read from the logs. `state`: the
    roll-ups' state, when already read."""
    long_windows = [window for window in windows if not window.raw_only and window.end - window.start > EXACT_WINDOW]
    state = (state or rollup_state()) if long_windows else None
    plans: dict[tuple, Plan] = {}
    planned: dict[tuple, Plan | None] = {}
    for window in windows:
        if window.raw_only:
            continue
        span = window.span
        if span not in planned:  # once per span: a page's rules share a few (25 rules at 10M: 12)
            # No queryset of the window's rows: _read_cores and _GroupedRows read them, never the
            # Selection's `logs` (filtering one per span cost ~5 ms on the alerts page).
            chosen = Selection(LLMRequestLog.objects.none(), window.start, window.end, window.model, rollups_apply=True)
            planned[span] = plan(chosen, state=state, subtract=True)
        if planned[span] is None:
            continue
        plans[span] = planned[span]
    return plans


def _read_cores(plans: dict[tuple, Plan]) -> dict[tuple, Totals]:
    """Per (start, end, model): the Totals of the plan's whole days and hours, from DailyLatency and
    HourlyLatency (sums, failures and latency histograms per period and model; the calls above the
    watermark are read with the edges: RolledUpParts). One query per table for all the windows:
    every row of the days and hours any of them reads, each window's rows then added up (the
    alerts page at 10,000,000 calls: six readings of two or three queries each -> two queries, and
    each stored histogram decoded once, not once per window that reads it)."""
    rows = _core_rows(plans)
    first, histograms = rollup_math.merge_span(range(len(rows)), [row[-1] for row in rows], len(rows))
    hourly = np.array([row[0] for row in rows], dtype=bool)
    # A day as its ordinal, an hour as its epoch seconds: one number per row to compare.
    periods = np.array([row[1] if row[0] else row[1].toordinal() for row in rows], dtype=np.int64)
    models = np.array([row[2] for row in rows], dtype=object)
    found = {}
    for span, the_plan in plans.items():
        days = np.isin(periods, [day.toordinal() for day in the_plan.split.days]) & ~hourly
        hours = np.zeros(len(rows), dtype=bool)
        for start, end in the_plan.split.hours:
            hours |= (periods >= start.timestamp()) & (periods < end.timestamp())
        chosen = np.flatnonzero((days | (hours & hourly)) & ((models == span[2]) if span[2] else True))
        found[span] = _core_totals([rows[index] for index in chosen], first, histograms[chosen])
    return found


CORE_COLUMNS = ("model_name", "requests", "errors", "total_tokens", "cost_units", "latency_histogram")


def _core_rows(plans: dict[tuple, Plan]) -> list[tuple]:
    """(hourly, day or hour as epoch seconds, *CORE_COLUMNS) of every day and hour the plans read,
    of every model unless all the plans are of some models. One query written out
    (rollup_sql.latency_union), not two built by the ORM (~2 ms of Python a reading)."""
    days = sorted({day for the_plan in plans.values() for day in the_plan.split.days})
    hours = rollup_math.joined_spans([span for the_plan in plans.values() for span in the_plan.split.hours])
    models = {span[2] for span in plans}
    rows = rollup_sql.latency_union(CORE_COLUMNS, days, hours, [] if "" in models else sorted(models))
    return [(day is None, epoch if day is None else day, *rest) for day, epoch, *rest in rows]


def _core_totals(rows: list[tuple], first: int, histograms: np.ndarray) -> Totals:
    """The Totals of some _core_rows (integers summed exactly), their histograms (merge_span's
    columns from bucket `first`) added up."""
    _hourly, _period, _model, requests, errors, tokens, cost_units, _histogram = (
        zip(*rows, strict=True) if rows else ([],) * 8
    )
    figures = rollups.Figures(
        requests=sum(requests), total_tokens=sum(tokens), cost_units=sum(int(units) for units in cost_units)
    )
    figures.latency[first : first + histograms.shape[1]] += histograms.sum(axis=0)
    return Totals(figures, errors=sum(errors))


def _summed(parts: Iterable[Totals], less: Iterable[Totals] = ()) -> Totals:
    """The sum of `parts` less the sum of `less` (integers and histograms: exact)."""
    total = Totals(rollups.Figures())
    for part in parts:
        total.figures.add_sums(_sums(part.figures))
        total.figures.latency += part.figures.latency
        total.errors += part.errors
    for part in less:
        total.figures.add_sums({name: -value for name, value in _sums(part.figures).items()})
        total.figures.latency -= part.figures.latency
        total.errors -= part.errors
    return total


def _raw_window_totals(
    windows: list[Window], parts: RolledUpParts | None = None
) -> tuple[dict[Window, WindowTotals], PartTotals]:
    """The windows read from the logs, and the parts of the windows the roll-ups answer (`parts`).
    Short windows and parts are read in one reading (_call_totals); a longer window read raw (a rule
    of a later type over hours or days: its rows may be millions) is summed in SQL
    (_aggregated_totals)."""
    calls = [window for window in windows if not window.feedback]
    short = [window for window in calls if window.end - window.start <= EXACT_WINDOW]
    long = [window for window in calls if window not in short]
    rated = [window for window in windows if window.feedback]
    parts = parts or RolledUpParts()
    if short or parts:
        measured, part_totals = _call_totals(short, parts)
    else:
        measured, part_totals = {}, PartTotals()
    if long:
        measured |= _aggregated_totals(long)
    return {**measured, **(_rating_totals(rated) if rated else {})}, part_totals


def _aggregated_totals(windows: list[Window]) -> dict[Window, WindowTotals]:
    """The windows' figures from one query: conditional aggregates (one set per window) over the
    rows they cover together."""
    aggregates: dict[str, Aggregate] = {}
    for index, window in enumerate(windows):
        aggregates |= {f"w{index}_{name}": aggregate for name, aggregate in _window_aggregates(window).items()}
    row = LLMRequestLog.objects.filter(_covering(windows)).aggregate(**aggregates)
    answer = {}
    for index, window in enumerate(windows):
        percentile = window.percentile or ("p95_latency_ms" if window.latency else "")
        extra = {percentile: (row.get(f"w{index}_percentiles") or [None])[0]} if percentile else {}
        answer[window] = WindowTotals(
            requests=row[f"w{index}_requests"],
            errors=row[f"w{index}_errors"],
            total_tokens=_sum(row[f"w{index}_total_tokens"]),
            cost=_sum(row[f"w{index}_cost"]),
            **extra,
        )
    return answer


def _window_aggregates(window: Window) -> dict[str, Aggregate]:
    within = window.condition()
    wanted = {name: aggregate for name, aggregate in _traffic_aggregates(within).items() if name in WINDOW_FIGURES}
    if window.error_type:
        wanted["errors"] = Count("id", filter=within & LLMRequestLog.FAILED & Q(error_type=window.error_type))
    percentile = window.percentile or ("p95_latency_ms" if window.latency else "")
    if percentile:
        column, fraction = ALERT_PERCENTILES[percentile]
        wanted["percentiles"] = Percentiles(column, fraction, filter=within)
    return wanted


def _call_totals(windows: list[Window], parts: RolledUpParts) -> tuple[dict[Window, WindowTotals], PartTotals]:
    """The short windows' figures, and the parts' (with their latency histograms), from one reading
    of the rows they cover together, summed in SQL per group (_GroupedRows) and added up per window
    in NumPy. Percentiles are exact: linear interpolation between closest ranks, as percentile_cont
    (NULLs left out, as SQL does), over the values of the rows they sort."""
    groups = _GroupedRows(windows, parts)
    measured = {}
    for window in windows:
        within = groups.within(window)
        errors = within & groups.failed
        if window.error_type:
            errors &= groups.has_error_type(window.error_type)
        percentile = _percentile_of(window)
        extra = {percentile: groups.percentile(within, percentile)} if percentile else {}
        measured[window] = WindowTotals(
            requests=groups.count(within),
            errors=groups.count(errors),
            total_tokens=groups.sum("total_tokens", within),
            cost=float(rollups.usd(groups.sum("cost_units", within))),
            **extra,
        )
    rolled_up = groups.rolled_up
    return measured, PartTotals(
        edges={edge: groups.totals(edge, groups.within(edge) & rolled_up) for edge in parts.edges},
        rest={edge: groups.totals(edge, groups.within(edge) & rolled_up) for edge in parts.rest},
        above={window: groups.totals(window, groups.within(window) & ~rolled_up) for window in parts.windows},
    )


def _percentile_of(window: Window) -> str:
    """The key of ALERT_PERCENTILES a window's rule sorts, or "" (none)."""
    return window.percentile or ("p95_latency_ms" if window.latency else "")


class _GroupedRows:
    """The rows of some windows, read once and summed in SQL per group: time segment (segment i holds
    the rows of [bounds[i], bounds[i + 1])), model and error type as codes, failed or not, the
    latency bucket where an edge needs its histogram, and the value a short window's percentile
    sorts, for the rows of such windows only (NULL elsewhere). So the alerts page at 10,000,000
    calls (25 rules, ~12,000 calls an hour) fetches and converts 10,573 groups where it fetched
    every row of every part-hour (59,085); the database still reads each row once. Every sum is of
    integers: exact."""

    def __init__(self, short: list[Window], parts: RolledUpParts) -> None:
        windows = [*short, *parts.edges, *parts.rest]
        spanned = [*windows, *parts.windows]
        self.bounds = sorted({moment for window in spanned for moment in (window.start, window.end)})
        self.place = {moment: index for index, moment in enumerate(self.bounds)}
        # The models and error types the windows name, by their index in these lists (-1: another).
        self.models = sorted({window.model for window in spanned if window.model})
        self.error_types = sorted({window.error_type for window in windows if window.error_type})
        keys, sql, params = _grouped_query(short, parts, self.bounds, self.models, self.error_types)
        sums = ("count", "total_tokens", "cost_units")
        fetched = plain_sql.fetch(sql, params)
        # Every value as a float, NULL as NaN (left out, as SQL does); exact for integers below 2^53.
        table = np.array(fetched, dtype=float).reshape(-1, len(keys) + len(sums))
        self.columns = dict(zip([*keys, *sums], table.T, strict=True))
        self.failed = self.columns["failed"] == 0
        if len(table) and np.abs(self.columns["cost_units"]).max() >= 2**53:  # over $900,000 in a group
            place = len(keys) + list(sums).index("cost_units")
            self.columns["cost_units"] = np.array([int(row[place]) for row in fetched], dtype=object)
        self._models: dict[str, np.ndarray] = {}
        # Rows in the roll-ups as read (all of them when no roll-up was read).
        self.rolled_up = self.columns["above"] == 0 if "above" in keys else np.ones(len(table), dtype=bool)

    def within(self, window: Window) -> np.ndarray:
        segments = self.columns["segment"]
        inside = (segments >= self.place[window.start]) & (segments < self.place[window.end])
        if window.model:
            if window.model not in self._models:
                self._models[window.model] = self.columns["model"] == self.models.index(window.model)
            inside &= self._models[window.model]
        return inside

    def totals(self, edge: Window, within: np.ndarray) -> Totals:
        """An edge's figures (its latency histogram when it asks for one) and failures."""
        figures = rollups.Figures(
            requests=self.count(within),
            total_tokens=self.sum("total_tokens", within),
            cost_units=self.sum("cost_units", within),
        )
        if edge.latency:
            figures.latency += self.histogram(within, len(figures.latency))
        return Totals(figures, errors=self.count(within & self.failed))

    def count(self, within: np.ndarray) -> int:
        return int(self.columns["count"][within].astype(np.int64).sum())

    def sum(self, name: str, within: np.ndarray) -> int:
        values = self.columns[name][within]
        return int(values.sum() if values.dtype == object else values.astype(np.int64).sum())

    def has_error_type(self, error_type: str) -> np.ndarray:
        return self.columns["error_type"] == self.error_types.index(error_type)

    def histogram(self, within: np.ndarray, buckets: int) -> np.ndarray:
        counts = self.columns["count"][within]
        found = np.bincount(self.columns["bucket"][within].astype(np.int64), weights=counts, minlength=buckets)
        return found.astype(np.int64)

    def percentile(self, within: np.ndarray, percentile: str) -> float | None:
        """A percentile of the window's rows: each group's value as many times as it has rows."""
        column, fraction = ALERT_PERCENTILES[percentile]
        values = self.columns[f"sorted_{column}"][within]
        present = ~np.isnan(values)
        values = np.repeat(values[present], self.columns["count"][within][present].astype(np.int64))
        return float(np.quantile(values, fraction)) if values.size else None


# _GroupedRows' query in plain SQL (llm/plain_sql.py): built by the ORM it cost ~2.5 ms of Python
# for the overview's previous window (a dozen CASE expressions), more than PostgreSQL took to run it.
# Each key is a code (CASE ... END: the index of the first value matched, else a default) or, when
# there is nothing to tell apart, a constant; the rows are grouped by the codes.

SqlPart = tuple[str, list[Any]]


def _log_column(name: str) -> str:
    return f"{plain_sql.table(LLMRequestLog)}.{plain_sql.quoted(name)}"


def _grouped_query(
    short: list[Window], parts: RolledUpParts, bounds: list[datetime], models: list[str], error_types: list[str]
) -> tuple[list[str], str, list[Any]]:
    """_GroupedRows' keys (names), SQL and parameters: its key columns, then count, total_tokens
    and cost_units, over the rows of the windows and parts."""
    keys: dict[str, SqlPart] = {
        "segment": _code_sql("timestamp", "<", [plain_sql.moment(bound) for bound in bounds[1:]], len(bounds) - 1),
        "model": _code_sql("model_name", "=", models),
        "failed": _code_sql("status", "=", [LLMRequestLog.Status.ERROR.value]),
        "error_type": _code_sql("error_type", "=", error_types),
        **_sorted_values(short),
        **_part_keys(parts),
    }
    covered, params = _covering_sql([*short, *parts.edges, *parts.rest], _log_column("timestamp"))
    above, above_params = _above_sql(parts)
    cost, cost_params = _compiled_fragment(connections[LLMRequestLog.objects.db].vendor, "cost_units")
    selected = [f"{sql} AS key_{name}" for name, (sql, _params) in keys.items()]
    grouped = [str(place) for place, (sql, _params) in enumerate(keys.values(), start=1) if sql.startswith("CASE")]
    # Only the conditions that can hold are joined: SQLite reads an OR through its indexes (one
    # range each) only when every term has one, so a constant false term (`OR 1 = 0`, no rows
    # above the watermark) made it read the whole table: the overview's previous window of 90
    # days at 1,000,000 calls, 2 edge part-hours of 77 calls, ~185 ms -> <1 ms.
    terms = [(sql, values) for sql, values in ((covered, params), (above, above_params)) if sql != FALSE_SQL]
    where = " OR ".join(sql for sql, _values in terms) or FALSE_SQL
    sql = (
        f"SELECT {', '.join(selected)}, COUNT(*), SUM({_log_column('total_tokens')}), SUM({cost})"  # noqa: S608
        f" FROM {plain_sql.table(LLMRequestLog)} WHERE ({where}) GROUP BY {', '.join(grouped)}"
    )
    key_params = [value for _sql, values in keys.values() for value in values]
    return list(keys), sql, [*key_params, *cost_params, *(value for _sql, values in terms for value in values)]


FALSE_SQL = "1 = 0"  # no row: what _covering_sql and _above_sql answer without a span


def _code_sql(column: str, operator_sql: str, values: list[Any], default: int = -1) -> SqlPart:
    """Which of `values` a row's column matches (`=`, or `<`: the first it is below), as its index,
    else `default`; a constant without values."""
    if not values:
        return str(default), []
    cases = " ".join(f"WHEN {_log_column(column)} {operator_sql} %s THEN {index}" for index in range(len(values)))
    return f"CASE {cases} ELSE {default} END", list(values)


def _sorted_values(windows: list[Window]) -> dict[str, SqlPart]:
    """Per column a short window's percentile sorts: its value for the rows of those windows, NULL
    for the others (so those still group together)."""
    by_column = defaultdict(list)
    for window in windows:
        if percentile := _percentile_of(window):
            by_column[ALERT_PERCENTILES[percentile][0]].append(window)
    keys = {}
    for column, sorting in sorted(by_column.items()):
        condition, params = _covering_sql(sorting, _log_column("timestamp"))
        keys[f"sorted_{column}"] = (f"CASE WHEN {condition} THEN {_log_column(column)} ELSE NULL END", params)
    return keys


def _part_keys(parts: RolledUpParts) -> dict[str, SqlPart]:
    """Whether a row is above the watermark the roll-ups were read at, and its latency bucket (as
    the roll-ups count it) where a part asks for a histogram."""
    keys: dict[str, SqlPart] = {}
    if parts:
        keys["above"] = (f"CASE WHEN {_log_column('id')} <= %s THEN 0 ELSE 1 END", [parts.watermark])
    histogram = [part for part in [*parts.edges, *parts.rest] if part.latency]
    histogram_windows = [window for window in parts.windows if window.latency]
    if histogram or histogram_windows:
        condition, params = _covering_sql(histogram, _log_column("timestamp"))
        above, above_params = _above_sql(replace(parts, windows=histogram_windows))
        bucket, bucket_params = _compiled_fragment(connections[LLMRequestLog.objects.db].vendor, "bucket")
        keys["bucket"] = (
            f"CASE WHEN ({condition} OR {above}) THEN {bucket} ELSE -1 END",
            [*params, *above_params, *bucket_params],
        )
    return keys


def _above_sql(parts: RolledUpParts) -> SqlPart:
    """RolledUpParts.above in SQL: the time tested on COALESCE(timestamp, timestamp), no index's."""
    if not parts.windows:
        return FALSE_SQL, []
    stamp = f"COALESCE({_log_column('timestamp')}, {_log_column('timestamp')})"
    covered, params = _covering_sql(parts.windows, stamp)
    condition = f"({_log_column('id')} > %s AND {_log_column('id')} <= %s AND {covered})"
    return condition, [parts.watermark, LARGEST_ID, *params]


@functools.cache
def _compiled_fragment(vendor: str, name: str) -> tuple[str, tuple]:
    """A row's latency bucket (rollups.bucket_of, as the roll-ups count it) or cost in units
    (_row_cost_units), compiled by the ORM once per database vendor: the same SQL text, so the same
    arithmetic, as every other reading. Only text of constants is kept, no data."""
    expression = rollups.bucket_of("latency_ms") if name == "bucket" else _row_cost_units()
    query = LLMRequestLog.objects.order_by().query
    resolved = expression.resolve_expression(query, allow_joins=False)
    return query.get_compiler(LLMRequestLog.objects.db).compile(resolved)


def _covering(windows: list[Window], field_name: str = "timestamp") -> Q:
    """The rows of any of the windows: those of all models as joined spans, a model's window only
    where no span of all models covers it (the planner reads each through its own index). Their
    time is `field_name` (an alias of it no index answers, where an index must not be used)."""
    condition = Q(pk__in=[])
    for start, end, model in _covering_spans(windows):
        within = Q(**{f"{field_name}__gte": start, f"{field_name}__lt": end})
        condition |= within & Q(model_name=model) if model else within
    return condition


def _covering_sql(windows: list[Window], column: str) -> SqlPart:
    """_covering in SQL over `column` (an expression of the row's time)."""
    spans = _covering_spans(windows)
    if not spans:
        return FALSE_SQL, []
    model_column = _log_column("model_name")
    conditions, params = [], []
    for start, end, model in spans:
        of_model = f" AND {model_column} = %s" if model else ""
        conditions.append(f"({column} >= %s AND {column} < %s{of_model})")
        params += [plain_sql.moment(start), plain_sql.moment(end), *([model] if model else [])]
    return f"({' OR '.join(conditions)})", params


def _covering_spans(windows: list[Window]) -> list[tuple[datetime, datetime, str]]:
    """(start, end, model or "") of _covering: the joined spans of all models, then each model's
    window that none of them covers."""
    spans: list[list[datetime]] = []
    for window in sorted((window for window in windows if not window.model), key=lambda window: window.start):
        if spans and window.start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], window.end)
        else:
            spans.append([window.start, window.end])
    found = [(start, end, "") for start, end in spans]
    for window in windows:
        if window.model and not any(start <= window.start and window.end <= end for start, end in spans):
            found.append((window.start, window.end, window.model))
    return found


def _row_cost_units() -> Cast:
    """A call's cost in COST_PLACES units, exact (rollups.cost_units_sum, row by row)."""
    scaled = F("cost_estimate") * Value(rollups.COST_SCALE)
    if connections[LLMRequestLog.objects.db].vendor == "sqlite":
        return Cast(Round(scaled), BigIntegerField())
    return Cast(scaled, BigIntegerField())


def _rating_totals(windows: list[Window]) -> dict[Window, WindowTotals]:
    """Thumbs up and down given in each window (to calls of its model), in one query."""
    aggregates: dict[str, Aggregate] = {}
    for index, window in enumerate(windows):
        within = Q(created_at__gte=window.start, created_at__lt=window.end)
        if window.model:
            within &= Q(model_name=window.model)
        aggregates[f"w{index}_up"] = Count("id", filter=within & THUMBS_UP)
        aggregates[f"w{index}_down"] = Count("id", filter=within & THUMBS_DOWN)
    span = UserFeedback.objects.filter(
        created_at__gte=min(w.start for w in windows), created_at__lt=max(w.end for w in windows)
    )
    row = span.aggregate(**aggregates)
    return {
        window: WindowTotals(0, 0, 0, 0, thumbs_up=row[f"w{index}_up"], thumbs_down=row[f"w{index}_down"])
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


def token_usage(logs: Selection | LLMRequestLogQuerySet, group_by: str = "day") -> list[dict[str, Any]]:
    chosen = selection(logs)
    the_plan = plan(chosen, group_by)
    found = None if the_plan is None else measure(the_plan, ("period",), percentiles=False)
    if found is not None:
        return [
            {
                "period": period,
                "prompt_tokens": figures.prompt_tokens,
                "completion_tokens": figures.completion_tokens,
                "total_tokens": figures.total_tokens,
                "requests": figures.requests,
            }
            for (period,), figures in sorted(found.items())
        ]
    rows = _by_period(
        chosen.logs,
        group_by,
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        total_tokens=Sum("total_tokens"),
        requests=Count("id"),
    )
    return [{key: _sum(value) if key != "period" else value for key, value in row.items()} for row in rows]


def _periods_from_rollups(
    chosen: Selection, group_by: str, percentile_names: tuple[str, ...]
) -> list[dict[str, Any]] | None:
    """Per period, as _traffic answers, from the roll-ups; None: read the logs."""
    the_plan = plan(chosen, group_by)
    shared = chosen.shared
    if the_plan is not None and not the_plan.breakdown and shared is not None and shared.answers(group_by):
        rows = shared.rows(("period",), percentile_names, MIN_CALLS_FOR_PERCENTILE)
        return [{"period": period, **row} for (period,), row in sorted(rows.items())]
    found = None if the_plan is None else measure_totals(the_plan, ("period",))
    if found is None:
        return None
    return [
        {"period": period, **totals.row(*percentile_names, min_calls=MIN_CALLS_FOR_PERCENTILE)}
        for (period,), totals in sorted(found.items())
    ]


# More than the longest a local day or month can last (a day is 23 to 25 hours where clocks
# change; a zone moving across the date line once had a 48-hour day): a period starting that long
# before a cutoff has ended by it, without its end computed (_with_partial).
LONGEST_PERIOD = {"day": timedelta(days=3), "month": timedelta(days=34)}


def _with_partial(
    rows: list[dict[str, Any]], group_by: str, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """The rows with `partial` (is_partial). A period of a fixed length ends that long after it
    starts, compared as instants, and a day or month that began LONGEST_PERIOD before the cutoff
    has ended: no local time made per row (~10 µs each, 168 rows by hour)."""
    now = timezone.now()
    cutoff = min(end, now) if end else now
    step = FIXED_STEPS.get(group_by)
    longest = step or LONGEST_PERIOD.get(group_by)
    answer = []
    for row in rows:
        moment = datetime.fromisoformat(row["period"])
        if start is not None and moment < start:
            partial = True
        elif longest is not None and moment + longest <= cutoff:
            partial = False  # it ended by the cutoff, however long it was
        else:
            partial = (moment + step if step else period_end(moment, group_by)) > cutoff
        answer.append({**row, "partial": partial})
    return answer


def timeseries(
    logs: Selection | LLMRequestLogQuerySet,
    group_by: str = "hour",
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[dict[str, Any]]:
    """Requests, errors, tokens, cost and latency per period: what the dashboard's charts draw.

    `start` and `end` are the window `logs` was filtered to; they decide which periods are
    `partial`. Percentiles of a period with fewer than MIN_CALLS_FOR_PERCENTILE calls are None.
    """
    chosen = selection(logs)
    rows = _periods_from_rollups(chosen, group_by, ("p50", "p95", "p99"))
    if rows is None:
        rows = _by_period(chosen.logs, group_by, **_traffic_aggregates(), **_latency_aggregates("p50", "p95", "p99"))
        rows = [_traffic(row, "p50", "p95", "p99", min_calls=MIN_CALLS_FOR_PERCENTILE) for row in rows]
    return _with_partial(rows, group_by, start or chosen.start, end or chosen.end)


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
    logs: Selection | LLMRequestLogQuerySet, *, start: datetime | None = None, end: datetime | None = None
) -> list[dict[str, Any]]:
    """Per day (TIME_ZONE); `partial` and the percentile minimum as in `timeseries`."""
    chosen = selection(logs)
    rows = _periods_from_rollups(chosen, "day", ("p95", "p99"))
    if rows is None:
        rows = _by_period(chosen.logs, "day", **_traffic_aggregates(), **_latency_aggregates("p95", "p99"))
        rows = [_traffic(row, "p95", "p99", min_calls=MIN_CALLS_FOR_PERCENTILE) for row in rows]
    rows = _with_partial(rows, "day", start or chosen.start, end or chosen.end)
    return [{"date": row["period"][:10], **{key: row[key] for key in DAILY_FIELDS}} for row in rows]


def _per_model_from_rollups(chosen: Selection) -> list[tuple[str, Totals]] | None:
    """Per model, busiest first, from the roll-ups; None: read the logs."""
    the_plan = plan(chosen)
    found = None if the_plan is None else measure_totals(the_plan, ("model_name",))
    if found is None:
        return None
    per_model = [(model, totals) for (model,), totals in found.items()]
    return sorted(per_model, key=lambda item: (-item[1].figures.requests, item[0]))


def latency_by_model(logs: Selection | LLMRequestLogQuerySet) -> list[dict[str, Any]]:
    chosen = selection(logs)
    per_model = _per_model_from_rollups(chosen)
    if per_model is not None:
        names = ("requests", "avg_latency_ms", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms")
        return [
            {"model": model, **{name: row[name] for name in names}}
            for model, row in ((model, totals.row("p50", "p95", "p99")) for model, totals in per_model)
        ]
    rows = (
        chosen.logs.values("model_name")
        .annotate(requests=Count("id"), **_latency_aggregates("p50", "p95", "p99"))
        .order_by("-requests", "model_name")
    )
    return [_spread({"model": row.pop("model_name"), **row}, "p50", "p95", "p99") for row in rows]


def model_speeds(logs: Selection | LLMRequestLogQuerySet) -> dict[str, dict[str, Any]]:
    """Per model over the window: the mean output speed of its streamed calls (tokens per second
    after the first token) and the mean time its calls queued at the provider (Groq, Cerebras
    report it), each with how many calls it is over. Models with neither figure are left out.

    From the roll-ups' counts and sums of both figures where they answer (the page's shared
    reading when it has one), else one GROUP BY over the calls that have either figure."""
    chosen = selection(logs)
    the_plan = plan(chosen)
    found = None if the_plan is None else measure(the_plan, ("model_name",), percentiles=False)
    if found is not None:
        return {
            model: _speeds(figures.speed_sum, figures.speed_count, figures.queue_sum_ms, figures.queue_count)
            for (model,), figures in sorted(found.items())
            if figures.speed_count or figures.queue_count
        }
    rows = (
        chosen.logs.filter(Q(output_tokens_per_second__isnull=False) | Q(queue_time_ms__isnull=False))
        .values("model_name")
        .annotate(**rollups.speed_aggregates())
        .order_by("model_name")
    )
    return {
        row["model_name"]: _speeds(row["speed_sum"], row["speed_count"], row["queue_sum_ms"], row["queue_count"])
        for row in rows
    }


def _speeds(speed_sum: float | None, speed_count: int, queue_sum: float | None, queue_count: int) -> dict[str, Any]:
    return {
        "output_tokens_per_second": speed_sum / speed_count if speed_count else None,
        "streamed_calls": speed_count,
        "queue_time_ms": queue_sum / queue_count if queue_count else None,
        "queued_calls": queue_count,
    }


def model_usage(logs: Selection | LLMRequestLogQuerySet) -> list[dict[str, Any]]:
    """Per model; `priced` is false for a model missing from the price table (its cost counts as 0)."""
    chosen = selection(logs)
    priced = set(ModelPrice.objects.values_list("model_name", flat=True))
    per_model = _per_model_from_rollups(chosen)
    if per_model is not None:
        return [
            {"model": model, **totals.row("p50", "p95", "p99"), "priced": model in priced}
            for model, totals in per_model
        ]
    rows = (
        chosen.logs.values("model_name")
        .annotate(**_traffic_aggregates(), **_latency_aggregates("p50", "p95", "p99"))
        .order_by("-requests", "model_name")
    )
    usage = []
    for row in rows:
        model = row.pop("model_name")
        usage.append({"model": model, **_traffic(row, "p50", "p95", "p99"), "priced": model in priced})
    return usage


def cost_by_model(logs: Selection | LLMRequestLogQuerySet) -> list[dict[str, Any]]:
    """USD per model, costliest first. Cheaper than model_usage: no latency percentiles."""
    chosen = selection(logs)
    the_plan = plan(chosen)
    found = None if the_plan is None else measure(the_plan, ("model_name",), percentiles=False)
    if found is not None:
        costs = [(model, float(rollups.usd(figures.cost_units))) for (model,), figures in found.items()]
        return [{"model": model, "cost": cost} for model, cost in sorted(costs, key=lambda item: (-item[1], item[0]))]
    rows = chosen.logs.values("model_name").annotate(cost=Sum("cost_estimate")).order_by("-cost", "model_name")
    return [{"model": row["model_name"], "cost": _sum(row["cost"])} for row in rows]


def errors(logs: Selection | LLMRequestLogQuerySet, recent: RecentRows | None = None) -> dict[str, Any]:
    """Errors per error_type: count, share of all errors (percent), latest message and time.
    `recent`: the calls above the roll-ups' watermark, summed (see RecentRows), when the caller
    has them: then a type's latest failure is looked for within its latest hour (_failure_hours)."""
    chosen = selection(logs)
    counted = _error_counts(chosen)
    # From the shared reading, each type's latest failure lies in a known period: looked for
    # there, not back from the window's end through every later failure of the other types and
    # models (a model's rarer types at 10,000,000 calls: ~2,000 rows each, a page read apiece).
    shared = chosen.shared is not None and plan(chosen) is not None
    since = {error_type: since for error_type, (_count, since) in counted[1].items()}
    until = chosen.shared.failures_until() if shared else None
    if until and recent is not None and recent.watermark == chosen.shared.watermark:
        until = _failure_hours(chosen, since, until, recent)
    latest = latest_errors(chosen.logs.failed(), since, until)
    total_requests, by_type = counted
    rows = sorted(by_type.items(), key=lambda item: (-item[1][0], item[0]))
    total_errors = sum(count for count, _since in by_type.values())  # a handful of types, not log rows
    return {
        "total_errors": total_errors,
        "total_requests": total_requests,
        "error_rate": rate(total_errors, total_requests),
        "errors": [
            {
                "error_type": error_type,
                "count": count,
                "share": rate(count, total_errors),
                "latest_message": (latest[error_type] or {}).get("error_message"),
                "last_seen": latest[error_type]["timestamp"].isoformat() if latest[error_type] else None,
            }
            for error_type, (count, _since) in rows
        ],
    }


def _failure_hours(
    chosen: Selection, since: dict[str, datetime], until: dict[str, datetime], recent: RecentRows
) -> dict[str, datetime]:
    """`until` narrowed, per error type, to the end of the latest UTC hour within [since, until)
    with a failure of that type: from HourlyRollup for the rolled-up calls (one query) and from
    `recent` for the calls above its watermark (the reading's). A reading by day knows only the
    day of a type's latest failure: at 10,000,000 calls a rarer type's search walked back through
    the ~2,800 later failures of that day (one heap page each, 10-40 ms a type); within the hour,
    through a few. Still a bound the latest failure is before: the hours hold every failure."""
    wide = {
        error_type: (rollup_math.floor_hour(since[error_type]), end)
        for error_type, end in until.items()
        if error_type in since and end - since[error_type] > ONE_HOUR
    }
    if not wide:
        return until
    latest = _latest_failed_hours(wide, chosen.model)
    narrowed = dict(until)
    for error_type, (start, end) in wide.items():
        hours = [latest[error_type]] if error_type in latest else []
        hours += recent.failed_within(error_type, chosen.model, start, end)
        if hours:
            narrowed[error_type] = min(end, max(hours) + ONE_HOUR)
    return narrowed


def _latest_failed_hours(spans: dict[str, tuple[datetime, datetime]], model: str) -> dict[str, datetime]:
    """Per error type, the latest hour of HourlyRollup within its span [start, end) with a failure
    of that type (of `model`, when given), in one query."""
    return {error_type: hour_at(epoch) for error_type, epoch in rollup_sql.latest_failed_hours(spans, model)}


def latest_errors(
    failed: QuerySet, since: dict[str, datetime], until: dict[str, datetime] | None = None
) -> dict[str, dict[str, Any] | None]:
    """Per error type, its latest failure's message and time among `failed`, looked for from
    where the counts say it is (`since`, and before `until` where known: no failure of the type
    is later), in one query (one per type cost a round trip each). Each type's newest row is an
    index scan backwards that stops at the first one (see LATEST_WANTED), not a read of every
    failure since `since`: SQLite's window function over them all (no ordered parts in a union)
    cost 13-15 ms of the overview at 90 days over 200,000 calls, and 127 ms for one model."""
    if not since:
        return {}
    if connections[failed.db].vendor == "postgresql":
        rows = _latest_by_lateral(failed, since, until or {})
    else:
        rows = _latest_by_scalar(failed, since, until or {})
    found = {row["error_type"]: row for row in rows}
    return {
        error_type: (
            {"error_message": found[error_type]["error_message"], "timestamp": found[error_type]["timestamp"]}
            if error_type in found
            else None
        )
        for error_type in since
    }


# The newest failure of each error type: one query whose types and bounds are rows of a list
# (`wanted`), each type's newest row found by one subquery compiled once, correlated to its row:
# an index scan backwards that stops at the first row. Django built the same plan from one part
# per type, compiling each (~1 ms a type on PostgreSQL: 6 types, 6 ms of the overview's 60 at 10M;
# ~0.5 ms a type on SQLite).
LATEST_WANTED = (
    '"llm_llmrequestlog"."error_type" = wanted.error_type',
    '"llm_llmrequestlog"."timestamp" >= wanted.since',
    '"llm_llmrequestlog"."timestamp" < wanted.until',
)


def _newest_wanted(failed: QuerySet, *fields: str) -> tuple[str, tuple]:
    """The SQL and parameters of `failed`'s newest row (its `fields`) of the type and bounds of a
    row `wanted` (LATEST_WANTED), for the query around it to give `wanted`."""
    wanted = [RawSQL(condition, (), output_field=BooleanField()) for condition in LATEST_WANTED]  # noqa: S611 - constants
    return failed.filter(*wanted).order_by("-timestamp", "-id").values(*fields)[:1].query.sql_with_params()


def _wanted_rows(failed: QuerySet, since: dict[str, datetime], until: dict[str, datetime]) -> list:
    """Per error type of `since`: its type, since and until (the end of time when not given)."""
    adapt = connections[failed.db].ops.adapt_datetimefield_value
    never = datetime.max.replace(tzinfo=UTC)
    return [
        value
        for error_type, moment in since.items()
        for value in (error_type, adapt(moment), adapt(until.get(error_type, never)))
    ]


def _latest_by_lateral(failed: QuerySet, since: dict[str, datetime], until: dict[str, datetime]) -> list[dict]:
    """Per error type of `since`, its newest row among `failed` at or after since[type] and before
    until[type] (when given), as latest_errors reads them; PostgreSQL only (a LATERAL subquery per
    row of a VALUES list)."""
    sql, params = _newest_wanted(failed, "error_message", "timestamp")
    values = ", ".join(["(%s, %s::timestamptz, %s::timestamptz)"] * len(since))
    query = (
        "SELECT wanted.error_type, latest.error_message, latest.timestamp"  # noqa: S608 - Django's SQL
        f" FROM (VALUES {values}) AS wanted(error_type, since, until) CROSS JOIN LATERAL ({sql}) AS latest"
    )
    with connections[failed.db].cursor() as cursor:
        cursor.execute(query, (*_wanted_rows(failed, since, until), *params))
        return [dict(zip(("error_type", "error_message", "timestamp"), row, strict=True)) for row in cursor.fetchall()]


def _latest_by_scalar(failed: QuerySet, since: dict[str, datetime], until: dict[str, datetime]) -> QuerySet:
    """_latest_by_lateral for databases without LATERAL (SQLite): each row of `wanted` gives its
    type's newest id by a correlated scalar subquery, and those rows are read by primary key."""
    sql, params = _newest_wanted(failed, "pk")
    listed = " UNION ALL ".join(["SELECT %s AS error_type, %s AS since, %s AS until"] * len(since))
    query = f"SELECT ({sql}) FROM ({listed}) AS wanted"  # noqa: S608 - Django's SQL
    newest = RawSQL(query, (*params, *_wanted_rows(failed, since, until)))  # noqa: S611 - Django's SQL
    # Not `failed.filter(...)`: with its conditions SQLite reads the failures by their index, not by id.
    return (
        failed.model._base_manager.using(failed.db)
        .filter(pk__in=newest)
        .values("error_type", "error_message", "timestamp")
    )


def _error_counts(chosen: Selection) -> tuple[int, dict[str, tuple[int, datetime]]]:
    """All requests, and per error type: its failures and a time its latest failure is not before."""
    the_plan = plan(chosen)
    if the_plan is not None and chosen.shared is not None:
        return _error_counts_shared(chosen.shared)
    answer = None if the_plan is None else consistent(lambda watermark: _error_counts_at(the_plan, watermark), the_plan)
    if answer is not None:
        return answer
    by_type = (
        chosen.logs.failed().values("error_type").annotate(count=Count("id"), last_seen=Max("timestamp")).order_by()
    )
    return chosen.logs.count(), {row["error_type"]: (row["count"], row["last_seen"]) for row in by_type}


def _error_counts_shared(shared: SharedReading) -> tuple[int, dict[str, tuple[int, datetime]]]:
    total = sum(figures.requests for figures in shared.sums((), None).values())
    return total, shared.failures_by_type()


def _error_counts_at(the_plan: Plan, watermark: int) -> tuple[int, dict[str, tuple[int, datetime]]]:
    found = measure_at(the_plan, ("status", "error_type"), watermark, percentiles=False)
    total = sum(figures.requests for figures in found.values())
    failed = {key[1]: figures.requests for key, figures in found.items() if key[0] == LLMRequestLog.Status.ERROR}
    # Where each type's latest failure can be: the start of its latest day or hour, or its latest raw row.
    since: dict[str, datetime] = {}

    def later(error_type: str, moment: datetime) -> None:
        if error_type in failed and (error_type not in since or moment > since[error_type]):
            since[error_type] = moment

    failures = Q(status=LLMRequestLog.Status.ERROR)
    if the_plan.split.days:
        latest_days = (
            DailyRollup.objects.filter(the_plan.daily(), failures).values("error_type").annotate(at=Max("day"))
        )
        for row in latest_days.order_by():
            later(row["error_type"], rollup_math.day_start(row["at"], the_plan.zone))
    if the_plan.split.hours:
        latest_hours = HourlyRollup.objects.filter(the_plan.hourly(), failures).values("error_type")
        for row in latest_hours.annotate(at=Max("hour")).order_by():
            later(row["error_type"], row["at"])
    for rows in the_plan.raw_rows(watermark):
        for row in rows.filter(failures).values("error_type").annotate(at=Max("timestamp")):
            later(row["error_type"], row["at"])
    return total, {error_type: (count, since[error_type]) for error_type, count in failed.items()}


def user_usage(
    logs: Selection | LLMRequestLogQuerySet, order_by: str = "cost", limit: int = 10
) -> list[dict[str, Any]]:
    """The top users by `cost` or by `requests`; calls without a user_id are left out."""
    if order_by not in ("cost", "requests"):
        raise ValueError("order_by is cost or requests")
    chosen = selection(logs)
    the_plan = plan(chosen)
    if the_plan is not None:
        answer = consistent(lambda watermark: top_users_from_rollups(the_plan, watermark, order_by, limit), the_plan)
        if answer is not None:
            return answer
    rows = (
        chosen.logs.exclude(user_id="")
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


def top_users(logs: Selection | LLMRequestLogQuerySet, limit: int = 10) -> dict[str, list[dict[str, Any]]]:
    """user_usage by "cost" and by "requests" (the keys), from one reading of the roll-ups when
    they answer."""
    chosen = selection(logs)
    the_plan = plan(chosen)
    if the_plan is not None:
        answer = consistent(lambda watermark: ranked_users_from_rollups(the_plan, watermark, limit), the_plan)
        if answer is not None:
            return answer
    return {order: user_usage(chosen, order, limit) for order in USER_ORDER_COLUMNS}


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
    # model_name: the rated call's, copied onto the rating (no join to the calls).
    per_model = feedback.values("model_name").annotate(**counts).order_by("model_name")
    return {
        **_with_rate(feedback.aggregate(**counts)),
        "by_model": [_with_rate({"model": row.pop("model_name"), **row}) for row in per_model],
    }


def feedback_figures(feedback: QuerySet[UserFeedback]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """feedback_summary and feedback_by_day from one GROUP BY (model x day x rating: a bounded
    number of rows), not three passes over the rated calls."""
    rows = (
        feedback.annotate(day=TruncDay("created_at"))
        .values("model_name", "day", "rating")
        .annotate(count=Count("id"))
        .order_by()
    )
    overall = {"thumbs_up": 0, "thumbs_down": 0}
    per_model: dict[str, dict[str, int]] = defaultdict(lambda: {"thumbs_up": 0, "thumbs_down": 0})
    per_day: dict[str, dict[str, int]] = defaultdict(lambda: {"thumbs_up": 0, "thumbs_down": 0})
    for row in rows:
        rating = "thumbs_up" if row["rating"] == UserFeedback.Rating.THUMBS_UP else "thumbs_down"
        for counts in (overall, per_model[row["model_name"]], per_day[row["day"].date().isoformat()]):
            counts[rating] += row["count"]
    summary = {
        **_with_rate(overall),
        "by_model": [_with_rate({"model": model, **counts}) for model, counts in sorted(per_model.items())],
    }
    return summary, [_with_rate({"day": day, **counts}) for day, counts in sorted(per_day.items())]


def feedback_by_day(feedback: QuerySet[UserFeedback]) -> list[dict[str, Any]]:
    """Satisfaction per day (TIME_ZONE) of the rating."""
    rows = (
        feedback.annotate(day=TruncDay("created_at"))
        .values("day")
        .annotate(thumbs_up=Count("id", filter=THUMBS_UP), thumbs_down=Count("id", filter=THUMBS_DOWN))
        .order_by("day")
    )
    return [_with_rate({**row, "day": row["day"].date().isoformat()}) for row in rows]


# Alert figures per group, and per time bucket (the rule preview).
#
# check_alerts measures a grouped rule, or one of the newer metric types, with `group_totals`: one
# GROUP BY over the window's rows, exact. The preview replays a rule at thousands of instants from
# `bucketed_figures`: each call's columns read once and summed per time bucket and group by NumPy
# (exact counts: a window is a run of whole buckets, so its sums are differences of prefix sums),
# and the values of the rows for a percentile, sorted by group and bucket, so that each window's
# percentile is taken over exactly its rows (linear interpolation, as percentile_cont). A GROUP BY
# (bucket, group) in SQL answered almost a row per call when grouping by user (724,000 rows over
# a million calls), slower to aggregate and to fetch than the packed columns.

# The alert figure a percentile rule measures: (WindowTotals field, column, fraction).
ALERT_PERCENTILES: dict[str, tuple[str, float]] = {
    "p95_latency_ms": ("latency_ms", FRACTIONS["p95"]),
    "p99_latency_ms": ("latency_ms", FRACTIONS["p99"]),
    "p95_ttft_ms": ("ttft_ms", FRACTIONS["p95"]),
}


class EpochSeconds(Func):
    """Whole seconds since 1970 of a timestamp, on both databases."""

    output_field = BigIntegerField()
    # date_part answers a double; EXTRACT a numeric since PostgreSQL 14, several times slower
    # over a million rows.
    template = "CAST(FLOOR(date_part('epoch', %(expressions)s)) AS BIGINT)"

    def as_sqlite(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="CAST(strftime('%%%%s', %(expressions)s) AS INTEGER)")


def group_expression(group_by: str, prefix: str = "") -> Any:
    """The column (or tag value) a rule's `group_by` groups calls by; `prefix` reaches the call from
    another model ("request__" from a rating)."""
    if group_by == "model":
        # A rating carries its call's model_name itself: no join for the usual grouping.
        return F("model_name")
    if group_by == "user":
        return F(f"{prefix}user_id")
    # As text on both databases (a tag stored as a JSON number reads "5" on either).
    return Cast(KeyTextTransform(group_by.removeprefix("tag:"), f"{prefix}tags"), CharField())


def _grouped(rows: QuerySet, group_by: str, prefix: str = "") -> QuerySet:
    """Rows annotated with `group_key` (blank without group_by); rows without a key are left out:
    a call without a user is nobody's, a call without the tag is in no feature."""
    if not group_by:
        return rows.annotate(group_key=Value("", output_field=CharField()))
    rows = rows.annotate(group_key=group_expression(group_by, prefix))
    return rows.exclude(group_key__isnull=True).exclude(group_key="")


def _key(value: Any) -> str:
    # A tag stored as a JSON number arrives as a number on SQLite and as text on PostgreSQL.
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class AlertScope:
    """What an alert rule measures, apart from the window: the calls of one model (blank: all),
    failures of one type (blank: all), grouped or not, and which extra figure it needs."""

    model: str = ""
    group_by: str = ""
    error_type: str = ""
    # A key of ALERT_PERCENTILES, or blank.
    percentile: str = ""
    feedback: bool = False
    # The sums the preview needs besides the number of calls ("errors", "total_tokens", "cost").
    sums: frozenset[str] = frozenset({"errors", "total_tokens", "cost"})

    def calls(self, start: datetime, end: datetime) -> LLMRequestLogQuerySet:
        return LLMRequestLog.objects.in_window(start, end).for_model(self.model)

    def failed(self) -> Q:
        return LLMRequestLog.FAILED & Q(error_type=self.error_type) if self.error_type else LLMRequestLog.FAILED

    def ratings(self, start: datetime, end: datetime) -> QuerySet[UserFeedback]:
        rated = UserFeedback.objects.filter(created_at__gte=start, created_at__lt=end)
        return rated.filter(model_name=self.model) if self.model else rated


def group_totals(scope: AlertScope, start: datetime, end: datetime) -> dict[str, WindowTotals]:
    """The figures of [start, end) per group of `scope` (one entry "" when it does not group),
    exact, in one query (two for a feedback rule). Groups without calls (or ratings) are absent."""
    if scope.feedback:
        rows = (
            _grouped(scope.ratings(start, end), scope.group_by, "request__")
            .values("group_key")
            .annotate(up=Count("id", filter=THUMBS_UP), down=Count("id", filter=THUMBS_DOWN))
            .order_by()
        )
        return {
            _key(row["group_key"]): WindowTotals(0, 0, 0, 0, thumbs_up=row["up"], thumbs_down=row["down"])
            for row in rows
        }
    aggregates: dict[str, Aggregate] = {
        "requests": Count("id"),
        "errors": Count("id", filter=scope.failed()),
        "total_tokens": Sum("total_tokens"),
        "cost": Sum("cost_estimate"),
    }
    if scope.percentile:
        column, fraction = ALERT_PERCENTILES[scope.percentile]
        aggregates["percentiles"] = Percentiles(column, fraction)
    rows = _grouped(scope.calls(start, end), scope.group_by).values("group_key").annotate(**aggregates).order_by()
    answer = {}
    for row in rows:
        extra = {scope.percentile: (row["percentiles"] or [None])[0]} if scope.percentile else {}
        answer[_key(row["group_key"])] = WindowTotals(
            row["requests"], row["errors"], _sum(row["total_tokens"]), _sum(row["cost"]), **extra
        )
    return answer


@dataclass
class BucketedFigures:
    """Every group's figures per time bucket of a period: bucket i is [start + i·size, start + (i+1)·size).

    `sums[name]` (a name of BUCKET_FIGURES) holds prefix sums, one row per group of `keys`: column i
    is the total of the buckets before i, so a window of whole buckets [a, b) totals
    sums[name][g, b] - sums[name][g, a]. A figure the rule does not need is absent (zero). For a
    percentile rule, `values` are the rows' values (NULLs left out) by group, then by bucket, and
    group g's window [a, b) holds values[ends[g, a] : ends[g, b]].
    """

    keys: list[str]
    sums: dict[str, Any]  # name -> numpy array, groups x (buckets + 1)
    values: Any = None
    ends: Any = None

    def totals(self, group: int, lows: Any, highs: Any) -> Any:
        """The figures (columns of BUCKET_FIGURES) of the group's windows [lows[i], highs[i])."""
        answer = np.zeros((len(highs), len(BUCKET_FIGURES)))
        for column, name in enumerate(BUCKET_FIGURES):
            table = self.sums.get(name)
            if table is not None:
                answer[:, column] = table[group, highs] - table[group, lows]
        return answer


# The columns of BucketedFigures.totals.
BUCKET_FIGURES = ("requests", "errors", "total_tokens", "cost", "thumbs_up", "thumbs_down")


def _raw_rows(rows: QuerySet) -> list[tuple]:
    """A values_list queryset's rows straight from the cursor: Django's per-row converters cost
    more than the query over a million rows (the callers convert the few columns that need it)."""
    sql, params = rows.query.sql_with_params()
    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _prefix_table(groups: int, buckets: int, owners: Any, places: Any, weights: Any = None) -> Any:
    """Per group (row) the prefix sums over buckets of the rows' weights (or of the rows)."""
    flat = np.bincount(owners * buckets + places, weights=weights, minlength=groups * buckets)
    table = np.zeros((groups, buckets + 1))
    np.cumsum(flat.reshape(groups, buckets), axis=1, out=table[:, 1:])
    return table


@dataclass
class CallRows:
    """A scope's calls in a period, one entry per call in each array: its group (a code into
    `keys`), its bucket, and the columns the rule needs."""

    keys: list[str]
    owners: Any
    places: Any
    # (owners, places) of the failed calls, when the rule counts errors.
    failed: tuple[Any, Any] | None = None
    # "total_tokens", "cost" -> each call's value.
    weights: dict[str, Any] = field(default_factory=dict)
    # The percentile's column (NaN: NULL, a call without a first token).
    values: Any = None

    def figures(self, buckets: int) -> BucketedFigures:
        groups = len(self.keys)
        sums = {"requests": _prefix_table(groups, buckets, self.owners, self.places)}
        if self.failed is not None:
            sums["errors"] = _prefix_table(groups, buckets, *self.failed)
        for name, weights in self.weights.items():
            sums[name] = _prefix_table(groups, buckets, self.owners, self.places, weights)
        answer = BucketedFigures(self.keys, sums)
        if self.values is not None:
            valued = ~np.isnan(self.values)
            slots = self.owners[valued] * (buckets + 1) + self.places[valued]
            # Stable, and linear on the rows PostgreSQL sends in group and time order.
            order = np.argsort(slots, kind="stable")
            answer.values = self.values[valued][order]
            # Where each slot starts: the number of values in the slots before it.
            ends = np.zeros(groups * (buckets + 1), dtype=np.int64)
            np.cumsum(np.bincount(slots, minlength=groups * (buckets + 1))[:-1], out=ends[1:])
            answer.ends = ends.reshape(groups, buckets + 1)
        return answer


def bucketed_figures(scope: AlertScope, start: datetime, buckets: int, size: timedelta) -> BucketedFigures:
    """The figures of each group of `scope` per time bucket (groups without calls, or ratings,
    absent), exact counts, sums up to float rounding. `start` must be a whole number of seconds.

    The calls are read once, one entry per call, and summed per bucket by NumPy: a GROUP BY
    (bucket, user) answers almost a row per call, and its numeric sums cost more than the scan.
    On PostgreSQL each group's calls arrive packed in one bytea (`Packed`: a record per call)."""
    end = start + buckets * size
    seconds = int(size.total_seconds())
    if scope.feedback:
        return _rating_figures(scope, start, end, seconds, buckets)
    calls = _grouped(scope.calls(start, end), scope.group_by)
    if connections[calls.db].vendor == "postgresql":
        rows = _packed_rows(calls, scope, start, seconds)
    else:
        rows = _plain_rows(calls, scope, start, seconds)
    return rows.figures(buckets)


class Packed(Aggregate):
    """The group's values of an expression as one bytea: each in PostgreSQL's binary form (`send`:
    timestamptz_send, float8send), concatenated. A million values reach NumPy (np.frombuffer) as
    a few buffers instead of a million Python objects. PostgreSQL only."""

    function = "string_agg"
    name = "Packed"
    template = "%(function)s(%(send)s(%(expressions)s), ''::bytea)"
    output_field = BinaryField()

    def __init__(self, expression: Any, send: str, **extra: Any) -> None:
        super().__init__(expression, send=send, **extra)


# A timestamptz in PostgreSQL's binary form: microseconds since this instant, a big-endian int64.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _record_columns(scope: AlertScope) -> dict[str, Any]:
    """The float columns of each call the rule needs besides its time: "total_tokens", "cost"
    and "values" (the percentile's column, NULL as NaN)."""
    columns: dict[str, Any] = {}
    for name, column in (("total_tokens", "total_tokens"), ("cost", "cost_estimate")):
        if name in scope.sums:
            columns[name] = Cast(column, FloatField())
    if scope.percentile:
        columns["values"] = Coalesce(ALERT_PERCENTILES[scope.percentile][0], Value(math.nan), output_field=FloatField())
    return columns


def _packed_columns(scope: AlertScope) -> dict[str, Packed]:
    """What the read packs per group: "calls", one record per call (its time, then each column of
    `_record_columns`: one aggregate for all, fewer calls per row than one per column), and
    "failed_at", the failed calls' times, when the rule counts errors."""
    parts = [Func("timestamp", function="timestamptz_send", output_field=BinaryField())]
    parts += [
        Func(column, function="float8send", output_field=BinaryField()) for column in _record_columns(scope).values()
    ]
    record = Func(*parts, template="(%(expressions)s)", arg_joiner=" || ", output_field=BinaryField())
    packed = {"calls": Packed(record, send="")}
    if "errors" in scope.sums:
        packed["failed_at"] = Packed("timestamp", send="timestamptz_send", filter=scope.failed())
    return packed


# Groupings whose index (llm_log_model_time_user, llm_log_user_time) covers every column a rule reads.
COVERED_GROUPINGS = ("model", "user")


def _packed_rows(calls: QuerySet, scope: AlertScope, start: datetime, seconds: int) -> CallRows:
    packed = _packed_columns(scope)
    query = calls.values("group_key").annotate(**packed).values_list("group_key", *packed).order_by()
    rows = _rows_in_group_order(query) if scope.group_by in COVERED_GROUPINGS else _raw_rows(query)
    # An aggregate without GROUP BY (no group_by) answers one row of NULLs over no calls.
    rows = [row for row in rows if row[1]]
    keys = [_key(row[0]) for row in rows]
    # A call's record: its time (timestamptz_send: a big-endian int64) and big-endian float8s.
    record = np.dtype([("at", ">i8"), *((name, ">f8") for name in _record_columns(scope))])
    calls_of = [np.frombuffer(row[1], dtype=record) for row in rows]
    joined = np.concatenate(calls_of) if calls_of else np.zeros(0, dtype=record)
    origin = (start - PG_EPOCH) // timedelta(microseconds=1)

    def located(arrays: list[Any], times: Any) -> tuple[Any, Any]:
        owners = np.repeat(np.arange(len(arrays)), [len(array) for array in arrays])
        return owners, (times.astype(np.int64) - origin) // (seconds * 1_000_000)

    failed = None
    if "failed_at" in packed:
        failed_at = [np.frombuffer(row[2] or b"", dtype=">i8") for row in rows]
        failed = located(failed_at, _joined(failed_at, np.int64))
    owners, places = located(calls_of, joined["at"])
    return CallRows(
        keys,
        owners,
        places,
        failed=failed,
        weights={name: joined[name].astype(float) for name in ("total_tokens", "cost") if name in joined.dtype.names},
        values=joined["values"].astype(float) if "values" in joined.dtype.names else None,
    )


def _rows_in_group_order(rows: QuerySet) -> list[tuple]:
    """The packed read, grouped from the covering index's order (PostgreSQL).

    The planner prefers a hash aggregate over a sequential scan (it does not count what
    string_agg's growing buffers cost in a hash table of 500 groups); reading the covering index
    in group order and appending each group's values as they come took half the time (0.8 s
    instead of 2.0 s for 950,000 calls by user on the shared 2-core machine). So hashing is off
    for this one query, in its own transaction."""
    with transaction.atomic(using=rows.db), connections[rows.db].cursor() as cursor:
        cursor.execute("SET LOCAL enable_hashagg = off")
        answer = _raw_rows(rows)
        # Inside an outer transaction the setting would outlive this block (a failure rolls it back).
        cursor.execute("SET LOCAL enable_hashagg TO DEFAULT")
        return answer


def _joined(arrays: list[Any], dtype: Any) -> Any:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)


def _plain_rows(calls: QuerySet, scope: AlertScope, start: datetime, seconds: int) -> CallRows:
    """The rows one by one (SQLite): the bucket and the failed flag computed by the database."""
    column = ALERT_PERCENTILES[scope.percentile][0] if scope.percentile else "latency_ms"
    failed = Case(When(scope.failed(), then=Value(1)), default=Value(0), output_field=IntegerField())
    bucket = (EpochSeconds("timestamp") - int(start.timestamp())) / seconds
    rows = _raw_rows(
        calls.annotate(bucket=bucket, is_failed=failed)
        .values_list("group_key", "bucket", "is_failed", "total_tokens", "cost_estimate", column)
        .order_by()
    )
    codes: dict[str, int] = {}
    owners = np.array([codes.setdefault(_key(row[0]), len(codes)) for row in rows], dtype=np.int64)
    # A NULL becomes NaN.
    numbers = np.array([row[1:] for row in rows], dtype=float).reshape(len(rows), 5)
    places = numbers[:, 0].astype(np.int64)
    is_failed = numbers[:, 1] > 0
    return CallRows(
        list(codes),
        owners,
        places,
        failed=(owners[is_failed], places[is_failed]) if "errors" in scope.sums else None,
        weights={name: numbers[:, index] for index, name in ((2, "total_tokens"), (3, "cost")) if name in scope.sums},
        values=numbers[:, 4] if scope.percentile else None,
    )


def _rating_figures(scope: AlertScope, start: datetime, end: datetime, seconds: int, buckets: int) -> BucketedFigures:
    """Thumbs up and down per group and bucket of the rating's time (few rows: one GROUP BY)."""
    rows = _raw_rows(
        _grouped(scope.ratings(start, end), scope.group_by, "request__")
        .annotate(bucket=(EpochSeconds("created_at") - int(start.timestamp())) / seconds)
        .values("group_key", "bucket")
        .annotate(up=Count("id", filter=THUMBS_UP), down=Count("id", filter=THUMBS_DOWN))
        .values_list("group_key", "bucket", "up", "down")
        .order_by()
    )
    codes: dict[str, int] = {}
    owners = np.array([codes.setdefault(_key(row[0]), len(codes)) for row in rows], dtype=np.int64)
    numbers = np.array([row[1:] for row in rows], dtype=float).reshape(len(rows), 3)
    places = numbers[:, 0].astype(np.int64)
    sums = {
        name: _prefix_table(len(codes), buckets, owners, places, numbers[:, column])
        for column, name in ((1, "thumbs_up"), (2, "thumbs_down"))
    }
    return BucketedFigures(list(codes), sums)


# Breakdowns, sessions and users (issue 18): who and what the calls, the errors and the cost
# come from. Grouped in the database; Python only shapes the (at most `limit` + 1) groups.

BREAKDOWN_FIELDS = {
    "model": "model_name",
    "user": "user_id",
    "session": "session_id",
    "source": "source",
    "error_type": "error_type",
}
TAG_BREAKDOWN_PREFIX = "tag:"
# What a breakdown is ordered by (largest first) and the figure that orders it.
BREAKDOWN_ORDERS = {
    "cost": "cost",
    "requests": "requests",
    "tokens": "total_tokens",
    "errors": "errors",
    "p95": "p95_latency_ms",
}
BREAKDOWN_DEFAULT_LIMIT = 10
BREAKDOWN_MAX_LIMIT = 100
# The roll-ups hold these columns: a breakdown by them reads the roll-ups like the other figures.
ROLLUP_BREAKDOWNS = ("model", "error_type")
BREAKDOWN_PERCENTILES = ("p50", "p95")


class CountAll(Func):
    """COUNT(*) as a window function: over () after a GROUP BY, how many groups there are."""

    template = "COUNT(*)"
    output_field = IntegerField()
    window_compatible = True


COUNT_OVER_ALL = SQLWindow(CountAll())


def breakdown_key(by: str) -> Any:
    """The expression a breakdown groups by: a column, or one tag's value ("" where it is absent,
    like an empty user_id: every call is in exactly one group, so the groups add up to the total)."""
    if by.startswith(TAG_BREAKDOWN_PREFIX):
        return rollups.tag_value(by.removeprefix(TAG_BREAKDOWN_PREFIX))
    return F(BREAKDOWN_FIELDS[by])


def _per_1k_tokens(cost: float, tokens: int) -> float | None:
    return cost * 1000.0 / tokens if tokens else None


def _breakdown_row(key: str, row: dict[str, Any]) -> dict[str, Any]:
    """One group as the API answers it (`row` as _traffic or Totals.row shape it)."""
    return {
        "key": key,
        "requests": row["requests"],
        "errors": row["errors"],
        "error_rate": row["error_rate"],
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "total_tokens": row["total_tokens"],
        "cost": row["cost"],
        "cost_per_1k_tokens": _per_1k_tokens(row["cost"], row["total_tokens"]),
        "avg_latency_ms": row["avg_latency_ms"],
        "p50_latency_ms": row["p50_latency_ms"],
        "p95_latency_ms": row["p95_latency_ms"],
    }


def _order_value(row: dict[str, Any], order_by: str) -> float:
    value = row[BREAKDOWN_ORDERS[order_by]]
    return -math.inf if value is None else value


def breakdown(
    logs: Selection | LLMRequestLogQuerySet, by: str, order_by: str = "cost", limit: int = BREAKDOWN_DEFAULT_LIMIT
) -> dict[str, Any]:
    """The calls grouped `by` (BREAKDOWN_FIELDS or tag:<key>), the `limit` largest by `order_by`
    first (ties by key), and the rest summed as `other` (None when nothing is left): its
    percentiles are computed over its own calls, like a group's, never from the groups'.

    Counts, tokens and cost are exact. Percentiles are exact over a window of at most
    EXACT_WINDOW (one sort per group); over a longer one they come from latency histograms
    (rollup_math's buckets, within ERROR_BOUND), as the other figures' do: from the roll-ups by
    model or error type, else from the rows bucketed by the database (a hash aggregate instead of
    sorting a month of calls). `percentiles` says which.
    """
    if order_by not in BREAKDOWN_ORDERS:
        raise ValueError(f"order_by is one of {', '.join(BREAKDOWN_ORDERS)}")
    chosen = selection(logs)
    answer = _breakdown_from_rollups(chosen, by, order_by, limit)
    if by == "user":
        answer = _user_breakdown_from_rollups(chosen, order_by, limit)
    elif by == "session" and order_by != "p95":
        answer = _session_breakdown_from_summaries(chosen, order_by, limit)
    if answer is None:
        short = chosen.start is not None and chosen.end is not None and chosen.end - chosen.start <= EXACT_WINDOW
        keyed = chosen.logs.annotate(group_key=breakdown_key(by)).order_by()
        answer = _exact_breakdown(keyed, order_by, limit) if short else _bucketed_breakdown(keyed, order_by, limit)
    return {"by": by, "order_by": order_by, "limit": limit, **answer}


def _ranked(groups: list[tuple[dict[str, Any], Totals]], order_by: str, limit: int) -> dict[str, Any]:
    """Groups as (row, Totals): the `limit` largest shown, the rest merged into `other`."""
    groups.sort(key=lambda item: (-_order_value(item[0], order_by), item[0]["key"]))
    rest = Totals(rollups.Figures())
    for _row, totals in groups[limit:]:
        rest.figures.merge(totals.figures)
        rest.errors += totals.errors
    other = None
    if len(groups) > limit:
        other = {**_breakdown_row(None, rest.row(*BREAKDOWN_PERCENTILES)), "groups": len(groups) - limit}
    return {"groups": [row for row, _ in groups[:limit]], "other": other}


def _breakdown_from_rollups(chosen: Selection, by: str, order_by: str, limit: int) -> dict[str, Any] | None:
    """By model or error type from the roll-ups (the breakdown roll-ups under a filter of one
    source or tag value); by source or a ROLLUP_TAG_KEYS tag from the breakdown roll-ups."""
    if by in ROLLUP_BREAKDOWNS:
        the_plan, column = plan(chosen) or breakdown_plan(chosen), BREAKDOWN_FIELDS[by]
    else:
        the_plan, column = breakdown_plan(chosen, by), "key"
    if the_plan is None:
        return None
    if column == "model_name":
        folded = measure_totals(the_plan, ("model_name",))
    else:
        found = measure(the_plan, (column, "status"))
        folded = None if found is None else fold_status(found)
    if folded is None:
        return None
    groups = [(key, totals) for (key,), totals in folded.items()]
    rows = [(_breakdown_row(key, totals.row(*BREAKDOWN_PERCENTILES)), totals) for key, totals in groups]
    return {"percentiles": PERCENTILES_APPROXIMATE, **_ranked(rows, order_by, limit)}


def _user_breakdown_from_rollups(chosen: Selection, order_by: str, limit: int) -> dict[str, Any] | None:
    """By user from the user totals (DailyUserTotals, HourlyUserTotals: sums and latency
    histograms per user) of the window's whole days and hours, and raw rows elsewhere; the calls
    without a user ("" group) are the window's totals (the roll-ups by model) less the users'."""
    the_plan = summaries_plan(chosen)
    found = None if the_plan is None else consistent(lambda watermark: _per_user_at(the_plan, watermark), the_plan)
    if found is None:
        return None
    rows = [(_breakdown_row(key, totals.row(*BREAKDOWN_PERCENTILES)), totals) for key, totals in found.items()]
    return {"percentiles": PERCENTILES_APPROXIMATE, **_ranked(rows, order_by, limit)}


def _session_breakdown_from_summaries(chosen: Selection, order_by: str, limit: int) -> dict[str, Any] | None:
    """By session, largest by a sum: the sessions' sums from the summaries (sessions_at), the
    shown ones' figures and histograms from their calls, the calls without a session and `other`
    as the window's totals (the roll-ups by model) less the rest. Not by p95: that needs every
    session's percentile (the calls are read)."""
    the_plan = summaries_plan(chosen)
    if the_plan is None:
        return None
    read = lambda watermark: _session_breakdown_at(the_plan, watermark, order_by, limit)  # noqa: E731
    answer = consistent(read, the_plan)
    return None if answer is None else {"percentiles": PERCENTILES_APPROXIMATE, **answer}


SESSION_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost")


def _session_breakdown_at(the_plan: Plan, watermark: int, order_by: str, limit: int) -> dict[str, Any]:
    per_session = _sessions_at(the_plan, watermark)
    figure = BREAKDOWN_ORDERS[order_by]
    sql, params = per_session.query.sql_with_params()
    sums = ", ".join(f"SUM({name})" for name in SESSION_SUMS)
    with connections["default"].cursor() as cursor:  # ORM-made SQL, names from SESSION_SUMS
        cursor.execute(f"SELECT COUNT(*), {sums} FROM ({sql}) AS sessions", params)  # noqa: S608
        count, *summed = cursor.fetchone()
        ranked = f"SELECT session_id, {figure} FROM ({sql}) AS sessions ORDER BY 2 DESC, 1 LIMIT %s"  # noqa: S608
        cursor.execute(ranked, (*params, limit + 1))  # one more: the calls without a session may push one out
        top = cursor.fetchall()
    everyone = fold_status(measure_at(the_plan, ("status",), watermark)).get((), Totals(rollups.Figures()))
    sessions_total = dict(zip(SESSION_SUMS, (value or 0 for value in summed), strict=True))
    nobody = {
        "requests": everyone.figures.requests - sessions_total["requests"],
        "errors": everyone.errors - sessions_total["errors"],
        "total_tokens": everyone.figures.total_tokens - sessions_total["total_tokens"],
        "cost": float(rollups.usd(everyone.figures.cost_units)) - float(sessions_total["cost"]),
    }
    candidates = [(float(value or 0), key) for key, value in top]
    if nobody["requests"]:
        candidates.append((nobody[figure], ""))
    shown = [key for _value, key in sorted(candidates, key=lambda item: (-item[0], item[1]))[:limit]]
    found: dict[str, Totals] = {key: Totals(rollups.Figures()) for key in shown}
    calls = the_plan.selection.logs.filter(session_id__in=shown).annotate(bucket=rollups.bucket_of("latency_ms"))
    for row in calls.values("session_id", "bucket").annotate(
        **_raw_sums(), errors=Count("id", filter=LLMRequestLog.FAILED)
    ):
        totals = found[row["session_id"]]
        row["cost_units"] = rollups.as_units(row["cost_units"])
        totals.figures.add_sums(row)
        totals.figures.latency[row["bucket"]] += row["requests"]
        totals.errors += row["errors"]
    rows = [(_breakdown_row(key, totals.row(*BREAKDOWN_PERCENTILES)), totals) for key, totals in found.items()]
    answer = _ranked(rows, order_by, limit)
    groups = count + (1 if nobody["requests"] else 0)
    if groups > len(shown):
        rest = Totals(rollups.Figures(), everyone.errors)
        rest.figures.merge(everyone.figures)
        for totals in found.values():
            rest.figures.merge(_negated(totals.figures))
            rest.errors -= totals.errors
        answer["other"] = {**_breakdown_row(None, rest.row(*BREAKDOWN_PERCENTILES)), "groups": groups - len(shown)}
    return answer


USER_FIGURE_SUMS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_units", "latency_sum_ms")


def _per_user_at(the_plan: Plan, watermark: int) -> dict[str, Totals]:
    tables, raw_spans, rolled_spans = _user_sources(the_plan)
    found: dict[str, Totals] = {}

    def totals_of(user_id: str) -> Totals:
        return found.setdefault(user_id, Totals(rollups.Figures()))

    for table in tables:
        sums = {name: Sum(name) for name in (*USER_FIGURE_SUMS, "errors")}
        for row in table.values("user_id").annotate(**sums).order_by():
            totals = totals_of(row["user_id"])
            totals.figures.add_sums({name: _number(name, row[name]) for name in USER_FIGURE_SUMS})
            totals.errors += int(row["errors"] or 0)
        keys: dict[str, int] = {}
        groups, stored = [], []
        for user_id, histogram in table.values_list("user_id", "latency_histogram").order_by():
            groups.append(keys.setdefault(user_id, len(keys)))
            stored.append(histogram)
        merged = rollup_math.merge_grouped(groups, stored, len(keys))
        for user_id, index in keys.items():
            found[user_id].figures.latency += merged[index]
    matching = LLMRequestLog.objects.filter(NOT_BLANK_USER).order_by()
    raw = [matching.filter(timestamp__gte=start, timestamp__lt=end) for start, end in raw_spans]
    if rolled_spans:
        raw.append(above_watermark(matching, watermark, rolled_spans))
    for rows in raw:
        bucketed = rows.annotate(bucket=rollups.bucket_of("latency_ms")).values("user_id", "bucket")
        for row in bucketed.annotate(**_raw_sums(), errors=Count("id", filter=LLMRequestLog.FAILED)):
            totals = totals_of(row["user_id"])
            row["cost_units"] = rollups.as_units(row["cost_units"])
            totals.figures.add_sums(row)
            totals.figures.latency[row["bucket"]] += row["requests"]
            totals.errors += row["errors"]
    everyone = fold_status(measure_at(the_plan, ("status",), watermark))
    nobody = everyone.get((), Totals(rollups.Figures()))
    for totals in found.values():
        nobody.figures.merge(_negated(totals.figures))
        nobody.errors -= totals.errors
    if nobody.figures.requests:
        found[""] = nobody
    return found


def _number(name: str, value: Any) -> float | int:
    return float(value or 0) if name in FLOAT_SUMS else int(value or 0)


def _negated(figures: rollups.Figures) -> rollups.Figures:
    negated = rollups.Figures(latency=-figures.latency, ttft=-figures.ttft)
    for name in ROLLUP_SUMS:
        setattr(negated, name, -getattr(figures, name))
    return negated


def _group_sums(keyed: LLMRequestLogQuerySet) -> QuerySet:
    return keyed.values("group_key").annotate(**_traffic_aggregates(), avg_latency_ms=Avg("latency_ms"))


def _top_groups(keyed: LLMRequestLogQuerySet, order_by: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The `limit` largest groups by a sum (not p95), and how many groups there are in all (a
    window COUNT over the grouped rows: no second pass)."""
    order = "cost_units" if order_by == "cost" else BREAKDOWN_ORDERS[order_by]  # SQLite sums decimals as floats
    per_group = _group_sums(keyed).annotate(cost_units=rollups.cost_units_sum(), group_count=COUNT_OVER_ALL)
    found = list(per_group.order_by(F(order).desc(nulls_last=True), "group_key")[:limit])
    return found, (found[0]["group_count"] if found else 0)


def _exact_breakdown(keyed: LLMRequestLogQuerySet, order_by: str, limit: int) -> dict[str, Any]:
    """Percentiles sorted from the rows: the shown groups' in one query, `other`'s in another."""
    percentiles = _latency_aggregates(*BREAKDOWN_PERCENTILES, average=False)
    if order_by == "p95":
        # Ordering by a percentile needs every group's, which SQLite answers as JSON text (no
        # ORDER BY on it): the groups (not the rows) are sorted here.
        found = list(_group_sums(keyed).annotate(**percentiles))
        found.sort(key=lambda row: (-((row["latency_percentiles"] or [-math.inf])[1]), row["group_key"]))
        shown, group_count = found[:limit], len(found)
    else:
        shown, group_count = _top_groups(keyed, order_by, limit)
        keys = [row["group_key"] for row in shown]
        spread = keyed.filter(group_key__in=keys).values("group_key").annotate(**percentiles) if keys else []
        by_key = {row["group_key"]: row["latency_percentiles"] for row in spread}
        for row in shown:
            row["latency_percentiles"] = by_key.get(row["group_key"])
    groups = []
    for row in shown:
        for name in ("cost_units", "group_count"):
            row.pop(name, None)
        groups.append(_breakdown_row(row.pop("group_key"), _traffic(row, *BREAKDOWN_PERCENTILES)))
    other = None
    if group_count > limit:
        keys = [row["key"] for row in groups]
        rest = keyed.exclude(group_key__in=keys).aggregate(
            **_traffic_aggregates(), avg_latency_ms=Avg("latency_ms"), **percentiles
        )
        other = {**_breakdown_row(None, _traffic(rest, *BREAKDOWN_PERCENTILES)), "groups": group_count - limit}
    return {"percentiles": PERCENTILES_EXACT, "groups": groups, "other": other}


def _bucketed_breakdown(keyed: LLMRequestLogQuerySet, order_by: str, limit: int) -> dict[str, Any]:
    """Each shown group and `other` from one GROUP BY (group or "other", latency bucket), whose
    histograms give the percentiles; by p95, every group's histogram (one row per group and bucket)."""
    if order_by == "p95":
        slot = F("group_key")
        group_count = None
    else:
        shown, group_count = _top_groups(keyed, order_by, limit)
        keys = [row["group_key"] for row in shown]
        # The calls of the groups not shown fall into one slot, NULL (a group's key never is).
        slot = Case(When(group_key__in=keys, then=F("group_key")), default=Value(None), output_field=TextField())
    rows = (
        keyed.annotate(slot=slot, bucket=rollups.bucket_of("latency_ms"))
        .values("slot", "bucket")
        .annotate(**_raw_sums(), errors=Count("id", filter=LLMRequestLog.FAILED))
        .order_by()
    )
    found: dict[Any, Totals] = {}
    for row in rows:  # a few dozen buckets per slot, not the calls
        totals = found.setdefault(row["slot"], Totals(rollups.Figures()))
        row["cost_units"] = rollups.as_units(row["cost_units"])
        totals.figures.add_sums(row)
        totals.figures.latency[row["bucket"]] += row["requests"]
        totals.errors += row["errors"]
    rest = found.pop(None, None)
    ranked = [(_breakdown_row(key, totals.row(*BREAKDOWN_PERCENTILES)), totals) for key, totals in found.items()]
    if group_count is None:  # by p95: every group is here
        return {"percentiles": PERCENTILES_APPROXIMATE, **_ranked(ranked, order_by, limit)}
    answer = _ranked(ranked, order_by, limit)
    if rest is not None:
        answer["other"] = {**_breakdown_row(None, rest.row(*BREAKDOWN_PERCENTILES)), "groups": group_count - limit}
    return {"percentiles": PERCENTILES_APPROXIMATE, **answer}


class RowValue(Func):
    """A row value, `(a, b)`: compared as a whole (`(a, b) >= (x, y)`), which only an index led
    by those columns in that order answers (PostgreSQL and SQLite both have row values)."""

    template = "(%(expressions)s)"
    output_field = TextField()


def newest_of_model(logs: LLMRequestLogQuerySet, chosen: Selection) -> LLMRequestLogQuerySet:
    """`logs` (of one model, in `chosen`'s window) newest first, read backwards along the
    (model_name, timestamp, user_id) index. With only `timestamp` bounds PostgreSQL walks the
    timestamp index back and skips the other models' calls (a few in seven at 10,000,000 calls:
    60-230 ms for the newest 2,000 tagged calls of one model); the same bounds also stated as row
    values (model, timestamp) are an index condition of that index alone, the same rows."""
    if not (chosen.model and chosen.start and chosen.end):
        return logs.order_by("-timestamp")
    position = RowValue("model_name", "timestamp")
    return (
        logs.alias(position=position)
        .filter(
            position__gte=RowValue(Value(chosen.model), Value(chosen.start)),
            position__lt=RowValue(Value(chosen.model), Value(chosen.end)),
        )
        .order_by("-timestamp")
    )


def breakdown_tag_keys(logs: Selection | LLMRequestLogQuerySet, limit: int = 50) -> list[str]:
    """The tag keys of a sample of the window's tagged calls (the newest 2,000), for the
    analytics page's `by` choices: "cost by feature" without typing the key."""
    chosen = selection(logs)
    sample = newest_of_model(chosen.logs.exclude(tags={}), chosen).values("tags")[:TAG_KEYS_SAMPLE]
    sql, params = sample.query.sql_with_params()
    # The database lists the keys: decoding the 2,000 objects in Python cost 8-15 ms a page.
    if connections["default"].vendor == "postgresql":
        keys = "jsonb_object_keys(sample.tags) AS key"
        objects = "jsonb_typeof(sample.tags) = 'object'"
    else:
        keys, objects = "json_each(sample.tags)", "json_type(sample.tags) = 'object'"
    listed = f"SELECT DISTINCT key FROM ({sql}) AS sample, {keys} WHERE {objects} ORDER BY key LIMIT %s"  # noqa: S608
    with connections["default"].cursor() as cursor:
        cursor.execute(listed, (*params, int(limit)))
        return [key for (key,) in cursor.fetchall()]


TAG_KEYS_SAMPLE = 2000


SESSION_ORDERS = {
    "last_call": (F("last_call").desc(), "session_id"),
    "cost": (F("cost").desc(nulls_last=True), "session_id"),
}
USER_ORDERS = {
    "cost": (F("cost").desc(nulls_last=True), "user_id"),
    "requests": (F("requests").desc(), "user_id"),
    "last_seen": (F("last_seen").desc(), "user_id"),
}
NOT_BLANK_USER = ~Q(user_id="")
NOT_BLANK_SESSION = ~Q(session_id="")


def _usage_aggregates() -> dict[str, Aggregate]:
    return {
        "requests": Count("id"),
        "errors": Count("id", filter=LLMRequestLog.FAILED),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
        "total_tokens": Coalesce(Sum("total_tokens"), 0),
        "cost": Sum("cost_estimate"),
    }


def sessions(logs: Selection | LLMRequestLogQuerySet, order_by: str = "last_call") -> QuerySet:
    """One row per session of the calls (calls without a session_id left out): first and last
    call, calls, users and models (how many, and one of each to show), tokens, cost, errors;
    most recent last call first, or costliest first. A queryset, for the paginators."""
    if order_by not in SESSION_ORDERS:
        raise ValueError(f"order_by is one of {', '.join(SESSION_ORDERS)}")
    chosen = selection(logs)
    the_plan = summaries_plan(chosen) or group_summaries_plan(chosen)
    if the_plan is not None:
        summed = consistent(lambda watermark: _sessions_at(the_plan, watermark), the_plan)
        if summed is not None:
            return summed.order_by(*SESSION_ORDERS[order_by])
    return _sessions_raw(chosen.logs).order_by(*SESSION_ORDERS[order_by])


SESSION_COLUMNS = (
    "session_id",
    "first_call",
    "last_call",
    "users",
    "shown_user",
    "models",
    "shown_model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
)


def _sessions_at(the_plan: Plan, watermark: int) -> QuerySet:
    """The sessions of the window, exact: those it holds whole from SessionTotals (the window's
    figures are the session's), united with those its edges cut, or with calls above the
    watermark, grouped from their calls in the window. The paginator evaluates it later: a roll-up
    meanwhile only refreshes sessions with calls above `watermark`, which are read raw anyway."""
    start, end = the_plan.selection.start, the_plan.selection.end
    stale = _stale_sessions(watermark)
    summaries = SessionTotals.objects.all()
    if the_plan.group is not None:  # narrowed to one group: its calls' summaries (group_summaries_plan)
        summaries = SessionGroupTotals.objects.filter(by=the_plan.breakdown, key=the_plan.group)
    whole = (
        summaries.filter(_whole_in(start, end))
        .exclude(session_id__in=stale)
        .annotate(users=F("user_count"), models=F("model_count"))
        .values(*SESSION_COLUMNS)
        .order_by()
    )
    cut = summaries.filter(_cut_by(start, end)).values("session_id")
    raw = _sessions_raw(the_plan.selection.logs.filter(session_id__in=_read_raw(cut, stale))).order_by()
    return whole.union(raw, all=True)


def _sessions_raw(calls: LLMRequestLogQuerySet) -> QuerySet:
    return (
        calls.filter(NOT_BLANK_SESSION)
        .values("session_id")
        .annotate(
            first_call=Min("timestamp"),
            last_call=Max("timestamp"),
            users=Count("user_id", distinct=True, filter=NOT_BLANK_USER),
            # The user and model shown next to the session: one session has one user as a rule.
            shown_user=Max("user_id"),
            models=Count("model_name", distinct=True),
            shown_model=Max("model_name"),
            **_usage_aggregates(),
        )
    )


class Rows(list):
    """Rows computed in full (a few hundred users), for llm.paging's paginator as a queryset is."""

    def order_by(self, *fields: Any) -> Rows:
        return self

    def count(self) -> int:  # type: ignore[override]
        return len(self)


def summaries_plan(chosen: Selection) -> Plan | None:
    """The plan when the user totals and the session summaries answer: a window of more than
    EXACT_WINDOW with no other filter, model or status, the summaries complete for its days
    (rollups.SESSIONS_READY); None: read the logs."""
    if chosen.model or chosen.status:
        return None
    return _when_sessions_ready(chosen, plan(chosen))


def group_summaries_plan(chosen: Selection) -> Plan | None:
    """As summaries_plan, for a Selection narrowed to one breakdown group (one source or tag
    value): SessionGroupTotals answer, kept with the breakdown roll-ups (breakdown_plan)."""
    if chosen.model or chosen.status or chosen.narrowed_to is None:
        return None
    return _when_sessions_ready(chosen, breakdown_plan(chosen))


def _when_sessions_ready(chosen: Selection, the_plan: Plan | None) -> Plan | None:
    """`the_plan`, if the session summaries are complete for the window's days; else None."""
    ready = rollups.sessions_ready() if the_plan is not None else None
    if ready is None:
        return None
    if ready.days_since is not None and chosen.start < rollup_math.day_start(ready.days_since, the_plan.zone):
        return None
    return the_plan


def _stale_sessions(watermark: int) -> QuerySet:
    """Sessions with calls above the watermark: their summaries may be behind (read raw)."""
    return (
        LLMRequestLog.objects.filter(id__gt=watermark, id__lte=LARGEST_ID).exclude(session_id="").values("session_id")
    )


def _read_raw(cut: QuerySet, stale: QuerySet) -> QuerySet:
    """The ids of the sessions read from their calls, as one subquery: PostgreSQL then reads
    their calls on the session_id index (an OR of two subqueries made it scan the window)."""
    return cut.union(stale)


def _whole_in(start: datetime, end: datetime) -> Q:
    """Summaries (first_call, last_call) of sessions all of whose calls are in [start, end)."""
    return Q(first_call__gte=start, last_call__lt=end)


def _cut_by(start: datetime, end: datetime) -> Q:
    """Summaries of sessions with calls both in [start, end) and outside it, or maybe in it."""
    return Q(first_call__lt=end, last_call__gte=start) & ~_whole_in(start, end)


USER_LIST_ROLLUP_FIELDS = {
    **USER_ROLLUP_FIELDS,
    "u_prompt_tokens": Sum("prompt_tokens"),
    "u_completion_tokens": Sum("completion_tokens"),
    "u_first": Min("first_call"),
    "u_last": Max("last_call"),
}


def _user_list_raw_fields() -> dict[str, Aggregate]:
    return {
        **_user_raw_fields(),
        "u_prompt_tokens": Sum("prompt_tokens"),
        "u_completion_tokens": Sum("completion_tokens"),
        "u_first": Min("timestamp"),
        "u_last": Max("timestamp"),
    }


def _sessions_per_user(the_plan: Plan, watermark: int) -> dict[str, int]:
    """Distinct sessions per user over the window: the sessions it holds whole from SessionUser,
    those its edges cut (or with calls above the watermark) counted from their calls in it."""
    start, end = the_plan.selection.start, the_plan.selection.end
    stale = _stale_sessions(watermark)
    found: dict[str, int] = defaultdict(int)
    whole = SessionUser.objects.filter(_whole_in(start, end)).exclude(session_id__in=stale)
    for user_id, count in whole.values("user_id").annotate(n=Count("id")).values_list("user_id", "n").order_by():
        found[user_id] += count
    cut = SessionTotals.objects.filter(_cut_by(start, end)).values("session_id")
    raw = the_plan.selection.logs.filter(NOT_BLANK_USER, session_id__in=_read_raw(cut, stale))
    per_user = raw.exclude(session_id="").values("user_id").annotate(n=Count("session_id", distinct=True))
    for user_id, count in per_user.values_list("user_id", "n").order_by():
        found[user_id] += count
    return found


def _users_at(the_plan: Plan, watermark: int) -> list[dict[str, Any]]:
    parts, params = _user_parts(the_plan, watermark, USER_LIST_ROLLUP_FIELDS, _user_list_raw_fields())
    names = ["requests", "errors", "total_tokens", "cost_units", "prompt_tokens", "completion_tokens"]
    sums = ", ".join(f"SUM(u_{name})" for name in names)
    sql = f"SELECT user_id, {sums}, MIN(u_first), MAX(u_last) FROM ({' UNION ALL '.join(parts)}) AS parts GROUP BY user_id"  # noqa: S608,E501
    with connections["default"].cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    sessions_of = _sessions_per_user(the_plan, watermark)
    field = LLMRequestLog._meta.get_field("timestamp")
    rows = []
    for user_id, requests, errors, tokens, units, prompt, completion, first, last in found:
        # SQLite answers MIN/MAX of a union as text: the column's converter makes them datetimes.
        first_seen, last_seen = (_as_datetime(field, value) for value in (first, last))
        rows.append(
            {
                "user_id": user_id,
                "sessions": sessions_of.get(user_id, 0),
                "first_seen": first_seen,
                "last_seen": last_seen,
                "requests": int(requests),
                "errors": int(errors or 0),
                "prompt_tokens": int(prompt or 0),
                "completion_tokens": int(completion or 0),
                "total_tokens": int(tokens or 0),
                "cost": rollups.usd(rollups.as_units(units)),
                "cost_units": rollups.as_units(units),
            }
        )
    return rows


def _as_datetime(field: Any, value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    for converter in connections["default"].ops.get_db_converters(field.get_col(field.model._meta.db_table)):
        value = converter(value, field, connections["default"])
    return value


USER_ROW_ORDERS = {
    "cost": lambda row: (-row["cost_units"], row["user_id"]),
    "requests": lambda row: (-row["requests"], row["user_id"]),
    "last_seen": lambda row: (-row["last_seen"].timestamp(), row["user_id"]),
}


def _users_from_summaries(chosen: Selection, order_by: str) -> Rows | None:
    the_plan = summaries_plan(chosen)
    found = None if the_plan is None else consistent(lambda watermark: _users_at(the_plan, watermark), the_plan)
    if found is None:
        return None
    found.sort(key=USER_ROW_ORDERS[order_by])
    for row in found:
        del row["cost_units"]
    return Rows(found)


def users(logs: Selection | LLMRequestLogQuerySet, order_by: str = "cost") -> QuerySet | Rows:
    """One row per user of the calls (calls without a user_id left out): calls, sessions, tokens,
    cost, errors, first and last seen; costliest first, or busiest, or latest seen. A queryset,
    for the paginators, or over a long unfiltered window the same rows summed from the user
    totals and the session summaries (exact: _users_from_summaries)."""
    if order_by not in USER_ORDERS:
        raise ValueError(f"order_by is one of {', '.join(USER_ORDERS)}")
    chosen = selection(logs)
    answer = _users_from_summaries(chosen, order_by)
    if answer is not None:
        return answer
    return (
        chosen.logs.filter(NOT_BLANK_USER)
        .values("user_id")
        .annotate(
            sessions=Count("session_id", distinct=True, filter=NOT_BLANK_SESSION),
            first_seen=Min("timestamp"),
            last_seen=Max("timestamp"),
            **_usage_aggregates(),
        )
        .order_by(*USER_ORDERS[order_by])
    )


# A session page shows at most this many calls (the first ones): a runaway agent loop can log
# thousands under one id, and the page is read as a conversation.
SESSION_MAX_CALLS = 1000


def session_calls(
    session_id: str, limit: int = SESSION_MAX_CALLS, with_text: bool = True
) -> tuple[list[LLMRequestLog], bool]:
    """A session's calls in time order, each with `running_cost` (the session's cost up to and
    including it, summed by the database) and its feedback prefetched; and whether there were
    more than `limit`. Without `with_text` the prompt and response are not even read."""
    order = [F("timestamp").asc(), F("id").asc()]
    rows = LLMRequestLog.objects.filter(session_id=session_id)
    if not with_text:
        rows = rows.defer("prompt_text", "response_text")
    calls = list(
        rows.annotate(running_cost=SQLWindow(Sum("cost_estimate"), order_by=order))
        .prefetch_related("feedback")
        .order_by(*order)[: limit + 1]
    )
    return calls[:limit], len(calls) > limit


def user_activity(logs: Selection | LLMRequestLogQuerySet, group_by: str) -> dict[str, Any]:
    """One user's page: totals, usage over time, per model, latest sessions, feedback received.
    `logs` are that user's calls (the user_id filter: read from the rows, exact)."""
    chosen = selection(logs)
    rated = UserFeedback.objects.filter(request__in=chosen.logs.values("id"))
    return {
        "totals": overview(chosen),
        "series": timeseries(chosen, group_by),
        "models": model_usage(chosen),
        "sessions": list(sessions(chosen)[:20]),
        "feedback": feedback_summary(rated),
    }
