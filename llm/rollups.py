"""Keeping the roll-ups (HourlyRollup, HourlyLatency, DailyRollup, DailyLatency, DailyUserRollup,
DailyUserTotals, HourlyUserTotals, HourlyBreakdownRollup, DailyBreakdownRollup) equal to what the logs say.

The roll-ups add up the logs above the "rollups" watermark, exactly once, with the machinery of
llm/watermarks.py (a final id boundary, so a row committed late is never skipped; the watermark row
locked while rows are added). Because the watermark follows ids, not timestamps, a late event (an
old timestamp) lands in its own hour and day; a retried event with a known request_id is no new
row, so it adds nothing; a row inserted by any path (bulk loads and tests too) is counted.

When: right after calls are written (`calls_recorded`, at most once per AFTER_WRITE_INTERVAL per
process, without waiting for another process that is rolling up, at most AFTER_WRITE_LIMIT rows),
by check_alerts, and by purge_logs before it deletes (the roll-ups keep the history the logs lose).
Reads never wait for any of this: llm/metrics.py adds the rows above the watermark from the logs.

The work is set-based and reads the new rows a fixed number of times, whatever the number of
tables: one GROUP BY over (hour, day, model, status, error, every breakdown's group) with the sums,
and one per histogram (latency, TTFT if any row has one), from which each table's groups are added
up in Python (Grouped.project); the same for the user tables when a new row has a user; the session
summaries only when one has a session, added to without reading the sessions' older calls. Then
per table one read of the touched rows and one INSERT ... ON CONFLICT, not a query per log row.
`rebuild` recomputes them from the logs.

Days are in TIME_ZONE, which the watermark row records. If TIME_ZONE changes, the daily rows are
no longer trusted (reads fall back to hourly rows and the logs; llm.checks warns) until
`manage.py rebuild_rollups` builds them again in the new zone.
"""

from __future__ import annotations

import logging
import time as clock
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    F,
    IntegerField,
    Max,
    Min,
    OuterRef,
    Q,
    Subquery,
    Sum,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Floor, Least, Ln, Round, TruncDate, TruncHour
from django.utils import timezone

from llm import rollup_math, watermarks
from llm.models import (
    COST_PLACES,
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
    SessionGroupTotals,
    SessionTotals,
    SessionUser,
    WeeklyUserRollup,
)

logger = logging.getLogger(__name__)

ROLLUPS = "rollups"
# The roll-up after a write: at most this many rows (a first one after an upgrade must not add
# millions inside a request), at most once a second per process (each costs a few queries).
AFTER_WRITE_LIMIT = 20_000
AFTER_WRITE_INTERVAL = 1.0
# check_alerts (every minute) catches up by this many rows per run at most.
CATCH_UP_LIMIT = 500_000
COST_SCALE = 10 ** -COST_PLACES.as_tuple().exponent  # 10^10: cost_units per USD
KEY = ("model_name", "status", "error_type")


# Expressions shared with the reads of llm/metrics.py.


def bucket_of(field_name: str) -> Case:
    """rollup_math.bucket_index of a column, in SQL (LN and FLOOR are on both databases)."""
    bucket = Floor(Ln(F(field_name) / Value(rollup_math.MIN_MS)) / Value(rollup_math.LN_RATIO)) + Value(1)
    return Case(
        When(**{f"{field_name}__lt": rollup_math.MIN_MS}, then=Value(0)),
        default=Cast(Least(bucket, Value(float(rollup_math.TOP_BUCKET))), IntegerField()),
        output_field=IntegerField(),
    )


def cost_units_sum(field_name: str = "cost_estimate", *, filter: Q | None = None) -> Sum:
    """The sum of a decimal cost in COST_PLACES units, exact: SQLite keeps decimals as floats, so
    each one is rounded back to its 10 places as an integer before they are added."""
    if connection.vendor == "sqlite":
        return Sum(Cast(Round(F(field_name) * Value(COST_SCALE)), BigIntegerField()), filter=filter)
    return Sum(F(field_name) * Value(COST_SCALE), filter=filter, output_field=BigIntegerField())


def as_units(value: Any) -> int:
    """A cost_units_sum as an int (PostgreSQL answers a numeric with a zero fraction)."""
    return int(value or 0)


def usd(units: int) -> Decimal:
    return Decimal(int(units)).scaleb(COST_PLACES.as_tuple().exponent)


# Adding rows.


@dataclass
class Figures:
    """Sums of some rows, in the roll-ups' units; `latency` and `ttft` are dense histograms."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_units: int = 0
    latency_sum_ms: float = 0.0
    ttft_count: int = 0
    ttft_sum_ms: float = 0.0
    speed_count: int = 0
    speed_sum: float = 0.0
    queue_count: int = 0
    queue_sum_ms: float = 0.0
    latency: np.ndarray = field(default_factory=rollup_math.empty)
    ttft: np.ndarray = field(default_factory=rollup_math.empty)

    SUMS = (
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_units",
        "latency_sum_ms",
        "ttft_count",
        "ttft_sum_ms",
        "speed_count",
        "speed_sum",
        "queue_count",
        "queue_sum_ms",
    )

    def add_sums(self, row: Any) -> None:
        """Add a row (a roll-up or a dict of SUMS) without its histograms."""
        get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
        for name in self.SUMS:
            setattr(self, name, getattr(self, name) + (get(name) or 0))

    def merge(self, other: Figures) -> None:
        for name in self.SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency += other.latency
        self.ttft += other.ttft

    def add_stored(self, row: Any) -> None:
        """Add a roll-up row, histograms included."""
        self.add_sums(row)
        rollup_math.add_encoded(self.latency, row.latency_histogram)
        rollup_math.add_encoded(self.ttft, row.ttft_histogram)


def _sum_aggregates() -> dict[str, Any]:
    return {
        "requests": Count("id"),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "total_tokens": Sum("total_tokens"),
        "cost_units": cost_units_sum(),
        "latency_sum_ms": Sum("latency_ms"),
        "ttft_count": Count("ttft_ms"),
        "ttft_sum_ms": Sum("ttft_ms"),
        **speed_aggregates(),
    }


def speed_aggregates() -> dict[str, Any]:
    """The provider speed sums of some calls (RollupFigures.speed_count ... queue_sum_ms)."""
    return {
        "speed_count": Count("output_tokens_per_second"),
        "speed_sum": Sum("output_tokens_per_second"),
        "queue_count": Count("queue_time_ms"),
        "queue_sum_ms": Sum("queue_time_ms"),
    }


@dataclass
class Kinds:
    """What some new rows carry: the user and session roll-ups are skipped for rows without any."""

    users: bool = False
    sessions: bool = False


@dataclass
class Grouped:
    """Some rows' sums per fine key (the periods, KEY, then each breakdown's group) and their
    histograms' counts as arrays (fine key's index, bucket, count): what every roll-up table's
    groups are projected from, so the rows are read by three queries, not three per table."""

    keys: list[tuple]
    sums: list[tuple]
    histograms: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    kinds: Kinds

    def project(self, pick: Callable[[tuple], tuple]) -> dict[tuple, Figures]:
        """The Figures per pick(fine key): sums added in Python, histograms by one np.add.at."""
        target_of: dict[tuple, int] = {}
        index = np.empty(len(self.keys), dtype=np.int64)
        totals: list[list] = []
        for position, (key, sums) in enumerate(zip(self.keys, self.sums, strict=True)):
            target = pick(key)
            number = target_of.setdefault(target, len(totals))
            index[position] = number
            if number == len(totals):
                totals.append(list(sums))
            else:
                totals[number] = [total + value for total, value in zip(totals[number], sums, strict=True)]
        groups = [Figures(**dict(zip(Figures.SUMS, sums, strict=True))) for sums in totals]
        for name, (keys, buckets, counts) in self.histograms.items():
            matrix = np.zeros((len(groups), rollup_math.BUCKETS), dtype=np.int64)
            np.add.at(matrix, (index[keys], buckets), counts)
            for number, figures in enumerate(groups):
                setattr(figures, name, matrix[number])
        return dict(zip(target_of, groups, strict=True))


def _grouped(rows: LLMRequestLogQuerySet, periods: dict[str, Any], groups: dict[str, Any] | None = None) -> Grouped:
    """The rows grouped by (*periods, *KEY, *groups): three GROUP BY queries (sums, then the counts
    per latency and per TTFT bucket), whatever the number of tables they feed. The sums query also
    tells whether any row has a user or a session."""
    groups = groups or {}
    keyed = rows.annotate(**periods, **groups).order_by()
    names = [*periods, *KEY, *groups]
    width = len(names)
    keys: list[tuple] = []
    sums: list[tuple] = []
    kinds = Kinds()
    aggregates = {
        **_sum_aggregates(),
        "with_user": Count("id", filter=~Q(user_id="")),
        "with_session": Count("id", filter=~Q(session_id="")),
    }
    for row in keyed.values(*names).annotate(**aggregates).values_list(*names, *aggregates):
        keys.append(row[:width])
        values = [value or 0 for value in row[width : width + len(Figures.SUMS)]]
        values[Figures.SUMS.index("cost_units")] = as_units(values[Figures.SUMS.index("cost_units")])
        sums.append(tuple(values))
        kinds.users = kinds.users or bool(row[-2])
        kinds.sessions = kinds.sessions or bool(row[-1])
    index_of = {key: number for number, key in enumerate(keys)}
    histograms = {}
    ttft_count = Figures.SUMS.index("ttft_count")
    for measure, histogram in (("latency_ms", "latency"), ("ttft_ms", "ttft")):
        if histogram == "ttft" and not any(values[ttft_count] for values in sums):
            continue  # no row has a TTFT (none streamed): no query for an empty histogram
        counted = keyed.filter(**{f"{measure}__isnull": False}).annotate(bucket=bucket_of(measure))
        found = counted.values(*names, "bucket").annotate(count=Count("id")).values_list(*names, "bucket", "count")
        triples = [(index_of[row[:width]], row[width], row[width + 1]) for row in found]
        histograms[histogram] = tuple(np.array(triples, dtype=np.int64).reshape(-1, 3).T)
    return Grouped(keys, sums, histograms, kinds)


def _upsert(model: type, period_field: str, groups: dict[tuple, Figures]) -> None:
    """Add `groups` ((period, *KEY) -> Figures) to `model`'s rows, creating the missing ones: one
    read of the touched rows' histograms, one INSERT ... ON CONFLICT adding the sums in SQL."""
    if not groups:
        return
    periods = {key[0] for key in groups}
    stored = _stored(
        model,
        [period_field, *KEY],
        ["latency_histogram", "ttft_histogram"],
        **{f"{period_field}__in": periods},
        model_name__in={key[1] for key in groups},
    )
    rows = []
    for key, figures in groups.items():
        latency, ttft = stored.get(key, (None, None))
        rows.append(
            (
                *key,
                *_sums(figures),
                rollup_math.encode(rollup_math.add_encoded(figures.latency, latency)),
                rollup_math.encode(rollup_math.add_encoded(figures.ttft, ttft)),
            )
        )
    _write(model, [period_field, *KEY], Figures.SUMS, ["latency_histogram", "ttft_histogram"], rows)


def _sums(figures: Figures) -> tuple:
    return tuple(getattr(figures, name) for name in Figures.SUMS)


def _stored(model: type, keys: list[str], columns: list[str], **lookups: Any) -> dict[tuple, tuple]:
    """The `columns` of `model`'s rows matching `lookups`, by their `keys`: plain tuples, no model
    instance (these reads were 15 % of a roll-up's Python time as instances)."""
    width = len(keys)
    found = model.objects.filter(**lookups).order_by().values_list(*keys, *columns)
    return {row[:width]: row[width:] for row in found}


def _upsert_latency(model: type, period_field: str, groups: dict[tuple, Figures]) -> None:
    """Add the groups ((period, *KEY) -> Figures) to `model` (HourlyLatency or DailyLatency:
    LATENCY_TABLES), merged per period and model: their sums, failures and latency histograms."""
    merged: dict[tuple, Figures] = {}
    errors: dict[tuple, int] = defaultdict(int)
    for (period, model_name, status, _error_type), figures in groups.items():
        cell = merged.get((period, model_name))
        if cell is None:
            cell = merged[(period, model_name)] = Figures(ttft=_NO_TTFT)
        cell.add_sums(figures)
        cell.latency += figures.latency
        if status == LLMRequestLog.Status.ERROR:
            errors[(period, model_name)] += figures.requests
    if not merged:
        return
    stored = _stored(
        model,
        [period_field, "model_name"],
        ["latency_histogram"],
        **{f"{period_field}__in": {period for period, _model in merged}},
        model_name__in={model_name for _period, model_name in merged},
    )
    rows = [
        (
            *key,
            *_sums(figures),
            errors[key],
            rollup_math.encode(rollup_math.add_encoded(figures.latency, stored.get(key, (None,))[0])),
        )
        for key, figures in merged.items()
    ]
    _write(model, [period_field, "model_name"], [*Figures.SUMS, "errors"], ["latency_histogram"], rows)


# PeriodModelFigures keep no TTFT histogram: the merged figures of _upsert_latency share this one.
_NO_TTFT = rollup_math.empty()
_NO_TTFT.setflags(write=False)


def _add_users(rows: LLMRequestLogQuerySet, periods: dict[str, Any]) -> None:
    """Add the rows with a user to DailyUserRollup (day x model x status x user), WeeklyUserRollup
    (week x model x user), DailyUserTotals (day x user) and HourlyUserTotals (hour x user),
    whichever of hour and day `periods` has. The first two only add sums: INSERT ... SELECT in
    the database (_insert_daily_users). The totals merge histograms and first and last calls: one
    GROUP BY (periods, user) and one latency histogram per (periods, user), read and added up."""
    keyed = rows.exclude(user_id="").annotate(**periods).order_by()
    if "day" in periods:
        _insert_daily_users(keyed)
    fine = list(
        keyed.values(*periods, "user_id").annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status=LLMRequestLog.Status.ERROR)),
            total_tokens=Sum("total_tokens"),
            cost_units=cost_units_sum(),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            latency_sum_ms=Sum("latency_ms"),
            first_call=Min("timestamp"),
            last_call=Max("timestamp"),
        )
    )
    if not fine:
        return
    buckets = keyed.filter(latency_ms__isnull=False).annotate(bucket=bucket_of("latency_ms"))
    counts = list(buckets.values(*periods, "user_id", "bucket").annotate(count=Count("id")))
    if "day" in periods:
        _add_user_totals(DailyUserTotals, "day", _user_totals(fine, counts, "day"))
    if "hour" in periods:
        _add_user_totals(HourlyUserTotals, "hour", _user_totals(fine, counts, "hour"))


def _insert_daily_users(keyed: LLMRequestLogQuerySet) -> None:
    """Add the rows (with a user, annotated with their `day`) to DailyUserRollup and to
    WeeklyUserRollup, per week, model and user and per week and user (all models): each one
    INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE adding the sums, so the groups are
    made and added in the database and no row travels to Python and back. (Read, added up in
    Python and written back, they were a third of a roll-up's Python time on the 1M copy.)"""
    zero = Value(0)
    daily = keyed.values("day", "model_name", "status", "user_id").annotate(
        requests=Count("id"),
        total_tokens=Coalesce(Sum("total_tokens"), zero, output_field=BigIntegerField()),
        cost_units=Coalesce(cost_units_sum(), zero, output_field=BigIntegerField()),
    )
    sql, params = daily.query.sql_with_params()
    # ORM-made SQL and our column names in the text; the values are parameters.
    _insert_select(
        DailyUserRollup,
        ("day", "model_name", "status", "user_id"),
        ("requests", "total_tokens", "cost_units"),
        f"SELECT g.day, g.model_name, g.status, g.user_id, g.requests, g.total_tokens, g.cost_units FROM ({sql}) AS g",  # noqa: S608
        params,
    )
    week = _week_of_sql("g.day")
    sums = (
        "SUM(g.requests), SUM(CASE WHEN g.status = %s THEN g.requests ELSE 0 END), SUM(g.total_tokens), "
        "SUM(g.cost_units)"
    )
    # Both groupings read the day's groups once, as a common table expression (was a scan each).
    per_model = f"SELECT {week}, g.model_name, g.user_id, {sums} FROM g WHERE g.model_name <> %s GROUP BY 1, 2, 3"  # noqa: S608
    every_model = f"SELECT {week}, %s, g.user_id, {sums} FROM g GROUP BY 1, 3"  # noqa: S608
    error, every = LLMRequestLog.Status.ERROR, WeeklyUserRollup.ALL_MODELS
    _insert_select(
        WeeklyUserRollup,
        ("week", "model_name", "user_id"),
        USER_TOTALS,
        f"{per_model} UNION ALL {every_model}",
        (*params, error, every, every, error),
        common=f"g AS ({sql})",
    )


def _week_of_sql(day: str) -> str:
    """The Monday of a date column's week, in SQL: ISO weeks in PostgreSQL; SQLite's 'weekday 0'
    is the Sunday on or after."""
    if connection.vendor == "postgresql":
        return f"CAST(date_trunc('week', {day}) AS date)"
    return f"date({day}, 'weekday 0', '-6 days')"


def _insert_select(
    model: type, keys: Sequence[str], added: Sequence[str], select: str, params: Sequence, common: str = ""
) -> None:
    """INSERT INTO `model` (keys, added) the rows of `select` (one per key), adding the `added`
    columns to a stored row's (ON CONFLICT (keys) DO UPDATE); `common`: a WITH clause's tables
    (their parameters first in `params`)."""
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    column = {name: quote(model._meta.get_field(name).column) for name in (*keys, *added)}
    # WHERE true: SQLite reads an ON after SELECT ... FROM as a join's, unless a WHERE comes between.
    prefix = f"WITH {common} " if common else ""
    into = f"INSERT INTO {table} ({', '.join(column.values())})"
    conflict = _on_conflict(table, column, keys, _added_sets(table, column, added))
    statement = f"{prefix}{into} SELECT * FROM ({select}) AS added WHERE true {conflict}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


USER_TOTALS = ("requests", "errors", "total_tokens", "cost_units")


def week_of(day: date) -> date:
    """The Monday of `day`'s week (WeeklyUserRollup.week)."""
    return day - timedelta(days=day.weekday())


def fill_weekly_users(first: date | None = None, before: date | None = None, *, using: str = "default") -> None:
    """Add DailyUserRollup's rows of the days in [first, before) (None: no bound) to
    WeeklyUserRollup, summed per week, model and user (and all models): one INSERT ... SELECT.
    The weeks it adds to must hold none of these days yet (a migration's empty table; a rebuild's
    deleted weeks)."""
    vendor = connections[using].vendor
    # The Monday of the day's week: ISO weeks in PostgreSQL; SQLite's 'weekday 0' is the Sunday on or after.
    week = "CAST(date_trunc('week', day) AS date)" if vendor == "postgresql" else "date(day, 'weekday 0', '-6 days')"
    daily, weekly = DailyUserRollup._meta.db_table, WeeklyUserRollup._meta.db_table
    conditions, params = ["user_id <> ''"], []
    if first is not None:
        conditions.append("day >= %s")
        params.append(first)
    if before is not None:
        conditions.append("day < %s")
        params.append(before)
    errors = "SUM(CASE WHEN status = 'error' THEN requests ELSE 0 END)"
    sums = f"SUM(requests), {errors}, SUM(total_tokens), SUM(cost_units)"
    where = " AND ".join(conditions)
    # Only table names and constant SQL are put in the text; the days are parameters.
    per_model = f"SELECT {week}, model_name, user_id, {sums} FROM {daily} WHERE {where} GROUP BY 1, 2, 3"  # noqa: S608
    every_model = f"SELECT {week}, %s, user_id, {sums} FROM {daily} WHERE {where} GROUP BY 1, 3"  # noqa: S608
    columns = "week, model_name, user_id, requests, errors, total_tokens, cost_units"
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {weekly} ({columns}) {per_model} UNION ALL {every_model}",  # noqa: S608
            (*params, WeeklyUserRollup.ALL_MODELS, *params),
        )


# What DailyUserTotals and HourlyUserTotals add up per period and user (the users list and the
# breakdown by user read them), besides the first and last call and the latency histogram.
USER_SUMS = (*USER_TOTALS, "prompt_tokens", "completion_tokens", "latency_sum_ms")


def _user_totals(fine: list[dict[str, Any]], counts: list[dict[str, Any]], period: str) -> dict[tuple, dict[str, Any]]:
    """The sums per (period, user) of _add_users' groups, with first and last call and a dense
    latency histogram."""
    found: dict[tuple, dict[str, Any]] = {}
    for row in fine:
        key = (row[period], row["user_id"])
        group = found.get(key)
        if group is None:
            group = found[key] = {**dict.fromkeys(USER_SUMS, 0), "first_call": None, "last_call": None}
            group["latency"] = rollup_math.empty()
        for name in USER_SUMS:
            group[name] += row[name] or 0
        group["first_call"] = min(filter(None, (group["first_call"], row["first_call"])))
        group["last_call"] = max(filter(None, (group["last_call"], row["last_call"])))
    for row in counts:
        found[(row[period], row["user_id"])]["latency"][row["bucket"]] += row["count"]
    return found


def _add_user_totals(model: type, period: str, added: dict[tuple, dict[str, Any]]) -> None:
    """Add `added` ((period, user) -> _user_totals row) to `model`'s rows, creating the missing
    ones: the sums add in SQL; first and last call and the histogram merge with the stored ones."""
    if not added:
        return
    stored = _stored(
        model,
        [period, "user_id"],
        ["latency_histogram"],
        **{f"{period}__in": {key[0] for key in added}},
        user_id__in={key[1] for key in added},
    )
    rows = []
    for key, group in added.items():
        rows.append(
            (
                *key,
                *(group[name] or 0 if name == "latency_sum_ms" else as_units(group[name]) for name in USER_SUMS),
                rollup_math.encode(rollup_math.add_encoded(group["latency"], stored.get(key, (None,))[0])),
                group["first_call"],
                group["last_call"],
            )
        )
    # First and last call merge in SQL: reading them back cost two timestamps parsed per row.
    _write(
        model,
        [period, "user_id"],
        USER_SUMS,
        ["latency_histogram"],
        rows,
        earliest=["first_call"],
        latest=["last_call"],
    )


# Rows a statement of _write: unnest's arrays (PostgreSQL) or executemany's rows (SQLite).
WRITE_CHUNK = 5_000


def _write(
    model: type,
    keys: Sequence[str],
    added: Sequence[str],
    replaced: Sequence[str],
    rows: list[tuple],
    *,
    earliest: Sequence[str] = (),
    latest: Sequence[str] = (),
) -> None:
    """Write `rows` (tuples: the values of `keys`, `added`, `replaced`, `earliest`, then `latest`)
    to `model`'s table by INSERT ... ON CONFLICT (keys) DO UPDATE: a stored row's `added` columns
    add the new values in SQL, its `replaced` ones take them, `earliest` and `latest` keep the
    earlier or the later of the stored and the new value. Plain tuples, as one statement of arrays on
    PostgreSQL: bulk_create's model instance and prepared value per field, and psycopg parsing a
    statement of thousands of placeholders, were most of a roll-up's time (on the 1M copy, 500
    events of 500 users: ~390 of 640 ms). A new row's other columns take their defaults."""
    if not rows:
        return
    names = (*keys, *added, *replaced, *earliest, *latest)
    fields = [model._meta.get_field(name) for name in names]
    others = [field for field in model._meta.concrete_fields if not field.primary_key and field not in fields]
    defaults = tuple(field.get_default() for field in others)
    fields += others
    statement = _upsert_sql(model, fields, keys, added, replaced, earliest, latest)
    postgresql = connection.vendor == "postgresql"
    convert = [(_plain if postgresql else _prepared)(field) for field in fields]
    with connection.cursor() as cursor:
        for first in range(0, len(rows), WRITE_CHUNK):
            chunk = [row + defaults for row in rows[first : first + WRITE_CHUNK]]
            if postgresql:
                # One array per column (unnest zips them back into rows).
                columns = zip(*chunk, strict=True)
                cursor.execute(
                    statement, [list(map(how, values)) for how, values in zip(convert, columns, strict=True)]
                )
            else:
                cursor.executemany(
                    statement, [tuple(how(v) for how, v in zip(convert, row, strict=True)) for row in chunk]
                )


def _upsert_sql(model: type, fields: list, keys: Sequence[str], *kinds: Sequence[str]) -> str:
    """_write's statement: INSERT of `fields` (arrays of one row per element on PostgreSQL, one
    row of values on SQLite) ON CONFLICT (keys) DO UPDATE each of the kinds (added, replaced,
    earliest, latest) as _write says."""
    added, replaced, earliest, latest = kinds
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    column = {name: quote(model._meta.get_field(name).column) for names in (keys, *kinds) for name in names}
    updates = _added_sets(table, column, added)
    updates += [f"{column[name]} = excluded.{column[name]}" for name in replaced]
    updates += [_kept(table, column[name], "<") for name in earliest]
    updates += [_kept(table, column[name], ">") for name in latest]
    # Only our tables' and columns' names are in the text; the values are parameters.
    insert = f"INSERT INTO {table} ({', '.join(quote(field.column) for field in fields)}) "
    tail = f" {_on_conflict(table, column, keys, updates)}"
    if connection.vendor == "postgresql":
        arrays = ", ".join(f"%s::{field.db_type(connection)}[]" for field in fields)
        return f"{insert}SELECT * FROM unnest({arrays}){tail}"  # noqa: S608
    return f"{insert}VALUES ({', '.join(['%s'] * len(fields))}){tail}"


def _added_sets(table: str, column: dict[str, str], added: Sequence[str]) -> list[str]:
    """SET clauses adding the new value of each `added` column to the stored row's."""
    return [f"{column[name]} = {table}.{column[name]} + excluded.{column[name]}" for name in added]


def _on_conflict(table: str, column: dict[str, str], keys: Sequence[str], updates: list[str]) -> str:
    """The upsert's ON CONFLICT (keys) DO UPDATE SET clause (`column`: a name's quoted column)."""
    return f"ON CONFLICT ({', '.join(column[name] for name in keys)}) DO UPDATE SET {', '.join(updates)}"


def _kept(table: str, column: str, sign: str) -> str:
    """SET the earlier (sign "<") or the later (">") of the stored and the new value, either of
    them possibly NULL (SQLite keeps times as text of one format, which sorts as the times do)."""
    stored, new = f"{table}.{column}", f"excluded.{column}"
    return f"{column} = CASE WHEN {stored} IS NULL OR {new} {sign} {stored} THEN {new} ELSE {stored} END"


def _prepared(field: Any) -> Callable[[Any], Any]:
    """SQLite: a value as Django stores it (dates, times, decimals); numbers and text as they are."""
    if field.get_internal_type() in _AS_IS:
        return lambda value: value
    return lambda value: field.get_db_prep_save(value, connection)


_AS_IS = {"BigIntegerField", "IntegerField", "FloatField", "CharField", "TextField"}


def _plain(field: Any) -> Callable[[Any], Any]:
    """One Python type per column, as psycopg dumps a list only of one type (a sum can be an int,
    a Decimal or a float)."""
    kind = field.get_internal_type()
    if kind in ("BigIntegerField", "IntegerField", "PositiveIntegerField", "SmallIntegerField"):
        return lambda value: None if value is None else int(value)
    if kind == "FloatField":
        return lambda value: None if value is None else float(value)
    if kind == "BinaryField":
        return lambda value: None if value is None else bytes(value)
    return lambda value: value


def _save(model: type, rows: list, key_fields: list[str], fields: list[str]) -> None:
    """Write the rows (model instances, new and existing, with their final values) as INSERT ...
    ON CONFLICT (key) DO UPDATE: bulk_update's CASE per field and row costs seconds for 500 rows."""
    names = [*key_fields, *fields]
    _write(model, key_fields, [], fields, [tuple(getattr(row, name) for name in names) for row in rows])


# The session summaries (SessionTotals, SessionUser) hold every call at or below the roll-ups'
# watermark, no other. A roll-up adds its new calls to the sessions they touch without reading the
# sessions' older calls (a long session used to be summed again whole at each roll-up): sums add;
# first and last call, shown user and shown model (a max) merge; distinct users are the session's
# SessionUser rows (a pair inserted once); distinct models grow by the (session, model) pairs no
# older call has. Summing again from the calls (rebuild_rollups, purge_logs) stops at the watermark
# too, under its lock, so no call is ever counted twice. Chunks of 500 sessions: one GROUP BY over
# the new calls, a few statements per table.

SESSION_BATCH = 500
# (session, model) pairs asked about in one query: SQLite parses a chain of ORs as a tree of at
# most 1,000 levels.
PAIRS_PER_QUERY = 100


def _session_rows(calls: LLMRequestLogQuerySet, *groups: str) -> dict[str, Any]:
    """The calls' sessions (per session and `groups`), summed as SessionTotals holds them (the
    API's raw grouping)."""
    not_blank_user = ~Q(user_id="")
    return (
        calls.exclude(session_id="")
        .values("session_id", *groups)
        .annotate(
            first_call=Min("timestamp"),
            last_call=Max("timestamp"),
            requests=Count("id"),
            errors=Count("id", filter=LLMRequestLog.FAILED),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            total_tokens=Sum("total_tokens"),
            cost_units=cost_units_sum(),
            user_count=Count("user_id", distinct=True, filter=not_blank_user),
            shown_user=Max("user_id"),
            model_count=Count("model_name", distinct=True),
            shown_model=Max("model_name"),
        )
        .order_by()
    )


def refresh_sessions(session_ids: Iterable[str], *, upto: int | None = None, groups: bool = True) -> int:
    """Sum these sessions again from their calls (ids up to `upto`: the roll-ups' watermark, which
    the caller holds); a session without calls left loses its rows. Answers how many sessions
    have rows now. `groups`: their SessionGroupTotals too."""
    ids = sorted({session_id for session_id in session_ids if session_id})
    kept = 0
    for offset in range(0, len(ids), SESSION_BATCH):
        chunk = ids[offset : offset + SESSION_BATCH]
        SessionTotals.objects.filter(session_id__in=chunk).delete()
        SessionUser.objects.filter(session_id__in=chunk).delete()
        if groups:
            SessionGroupTotals.objects.filter(session_id__in=chunk).delete()
        calls = LLMRequestLog.objects.filter(session_id__in=chunk)
        if upto is not None:
            calls = calls.filter(id__lte=upto)
        totals = []
        for row in _session_rows(calls):
            units = row.pop("cost_units")
            totals.append(SessionTotals(**row, cost=None if units is None else usd(as_units(units))))
        SessionTotals.objects.bulk_create(totals, batch_size=500)
        if groups:
            _add_session_groups(calls)
        spans = {row.session_id: (row.first_call, row.last_call) for row in totals}
        pairs = calls.exclude(user_id="").values_list("session_id", "user_id").distinct().order_by()
        SessionUser.objects.bulk_create(
            [
                SessionUser(
                    session_id=session_id,
                    user_id=user_id,
                    first_call=spans[session_id][0],
                    last_call=spans[session_id][1],
                )
                for session_id, user_id in pairs
            ],
            batch_size=500,
        )
        kept += len(totals)
    return kept


def add_to_sessions(calls: LLMRequestLogQuerySet, *, above: int, upto: int) -> int:
    """Add new calls (ids above `above`, the watermark every summed call is at or below, up to
    `upto`) to their sessions' summaries; answers how many sessions they touched.

    Their SessionGroupTotals are added to the same way, per breakdown (_add_to_session_groups):
    summing them again from all the sessions' calls cost each roll-up as much as the sessions are
    long."""
    new = {row["session_id"]: row for row in _session_rows(calls)}
    ids = sorted(new)
    for offset in range(0, len(ids), SESSION_BATCH):
        chunk = ids[offset : offset + SESSION_BATCH]
        _add_session_chunk({session_id: new[session_id] for session_id in chunk}, calls, above)
        for by in rolled_up_breakdowns():
            _add_to_session_groups(calls.filter(session_id__in=chunk), by, above)
    return len(ids)


def _add_to_session_groups(calls: LLMRequestLogQuerySet, by: str, above: int) -> None:
    """Add new calls (ids above `above`) to their sessions' SessionGroupTotals of `by`: sums add,
    first and last call and the shown user and model (maxima) merge; a group's distinct users and
    models grow by those of its new calls none of its older calls has (a group without a row has
    no older call: the rows hold every call up to the watermark)."""
    keyed = calls.annotate(group_key=breakdown_group(by))
    new = {(row["session_id"], row["group_key"]): row for row in _session_rows(keyed, "group_key")}
    if not new:
        return
    existing = {
        (row.session_id, row.key): row
        for row in SessionGroupTotals.objects.filter(by=by, session_id__in={session for session, _key in new})
    }
    seen = keyed.exclude(session_id="").values_list("session_id", "group_key", "user_id", "model_name")
    values: dict[str, set[tuple[str, str, str]]] = {"user_id": set(), "model_name": set()}
    for session_id, key, user_id, model_name in seen.distinct().order_by():
        if (session_id, key) in existing:
            if user_id:
                values["user_id"].add((session_id, key, user_id))
            values["model_name"].add((session_id, key, model_name))
    added = {name: _new_to_groups(found, existing, by, name, above) for name, found in values.items() if found}
    rows = []
    for group, row in new.items():
        units = as_units(row["cost_units"])
        summary = existing.get(group)
        if summary is None:
            summary = SessionGroupTotals(session_id=group[0], by=by, key=group[1], cost=None)
            for name in ("first_call", "last_call", "user_count", "shown_user", "model_count", "shown_model"):
                setattr(summary, name, row[name])
        else:
            summary.first_call = min(summary.first_call, row["first_call"])
            summary.last_call = max(summary.last_call, row["last_call"])
            summary.user_count += added.get("user_id", {}).get(group, 0)
            summary.model_count += added.get("model_name", {}).get(group, 0)
            units += round((summary.cost or 0) * COST_SCALE)
        for name in SESSION_SUMS:
            setattr(summary, name, getattr(summary, name) + row[name])
        summary.cost = usd(units)
        rows.append(summary)
    _merge_shown(rows, new, key_of=lambda summary: (summary.session_id, summary.key))
    _save(SessionGroupTotals, rows, ["by", "key", "session_id"], ["first_call", "last_call", *SESSION_FIELDS])


def _new_to_groups(
    found: set[tuple[str, str, str]], existing: dict[tuple, SessionGroupTotals], by: str, name: str, above: int
) -> dict[tuple[str, str], int]:
    """For each summed group (session, key) of `by`, how many of its new calls' values of `name`
    (user_id or model_name) none of its older calls has. Its shown value is one the older calls
    have; only other values are asked of the calls (of those sessions, with those values)."""
    shown = "shown_user" if name == "user_id" else "shown_model"
    unsure = {(s, k, v) for s, k, v in found if v != getattr(existing[(s, k)], shown)}
    known: set[tuple[str, str, str]] = set()
    if unsure:
        older = (
            LLMRequestLog.objects.filter(
                id__lte=above,
                session_id__in={s for s, _k, _v in unsure},
                **{f"{name}__in": {v for _s, _k, v in unsure}},
            )
            .annotate(group_key=breakdown_group(by))
            .values_list("session_id", "group_key", name)
            .distinct()
            .order_by()
        )
        known.update(older)
    added: dict[tuple[str, str], int] = defaultdict(int)
    for session_id, key, _value in unsure - known:
        added[(session_id, key)] += 1
    return added


SESSION_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")


def _add_session_chunk(new: dict[str, dict[str, Any]], calls: LLMRequestLogQuerySet, above: int) -> None:
    calls = calls.filter(session_id__in=list(new))
    existing = {row.session_id: row for row in SessionTotals.objects.filter(session_id__in=list(new))}
    added_models = _models_new_to_sessions(
        set(calls.values_list("session_id", "model_name").distinct().order_by()), existing, above
    )
    totals = []
    for session_id, row in new.items():
        summary = existing.get(session_id)
        units = as_units(row["cost_units"])
        if summary is None:
            summary = SessionTotals(session_id=session_id, first_call=row["first_call"], last_call=row["last_call"])
            summary.shown_user, summary.shown_model = row["shown_user"], row["shown_model"]
            summary.model_count = row["model_count"]
        else:
            summary.first_call = min(summary.first_call, row["first_call"])
            summary.last_call = max(summary.last_call, row["last_call"])
            summary.model_count += added_models.get(session_id, 0)
            units += round((summary.cost or 0) * COST_SCALE)
        for name in SESSION_SUMS:
            setattr(summary, name, getattr(summary, name) + row[name])
        summary.cost = usd(units)
        totals.append(summary)
    _merge_shown(totals, new)
    spans = {summary.session_id: (summary.first_call, summary.last_call) for summary in totals}
    pairs = calls.exclude(user_id="").values_list("session_id", "user_id").distinct().order_by()
    SessionUser.objects.bulk_create(
        [SessionUser(session_id=s, user_id=u, first_call=spans[s][0], last_call=spans[s][1]) for s, u in pairs],
        batch_size=500,
        ignore_conflicts=True,
    )
    users = dict(
        SessionUser.objects.filter(session_id__in=list(new))
        .values("session_id")
        .annotate(count=Count("id"))
        .values_list("session_id", "count")
        .order_by()
    )
    for summary in totals:
        summary.user_count = users.get(summary.session_id, 0)
    _save(SessionTotals, totals, ["session_id"], ["first_call", "last_call", *SESSION_FIELDS])
    # Every user row of a session carries the session's span.
    span_of = SessionTotals.objects.filter(session_id=OuterRef("session_id"))
    SessionUser.objects.filter(session_id__in=list(new)).update(
        first_call=Subquery(span_of.values("first_call")[:1]), last_call=Subquery(span_of.values("last_call")[:1])
    )


def _merge_shown(
    totals: list[Any], new: dict[Any, dict[str, Any]], key_of: Callable[[Any], Any] = lambda row: row.session_id
) -> None:
    """Shown user and model: the larger of the summed and the new one, in the database's order of
    text (its collation, as Max() orders them: Python's order of code points may differ)."""
    pairs = [
        (summary, name)
        for summary in totals
        for name in ("shown_user", "shown_model")
        if getattr(summary, name) != new[key_of(summary)][name]
    ]
    values = [(getattr(summary, name), new[key_of(summary)][name]) for summary, name in pairs]
    for (summary, name), larger in zip(pairs, greatest(values), strict=True):
        setattr(summary, name, larger)


def greatest(pairs: list[tuple[str, str]]) -> list[str]:
    """The larger text of each pair, as the database orders text: one query per 500 pairs."""
    function = "MAX" if connection.vendor == "sqlite" else "GREATEST"
    larger: list[str] = []
    for offset in range(0, len(pairs), 500):
        chunk = pairs[offset : offset + 500]
        with connection.cursor() as cursor:
            cursor.execute("SELECT " + ", ".join([f"{function}(%s, %s)"] * len(chunk)), [v for p in chunk for v in p])
            larger.extend(cursor.fetchone())
    return larger


SESSION_FIELDS = (*SESSION_SUMS, "cost", "user_count", "shown_user", "model_count", "shown_model")


def _models_new_to_sessions(
    pairs: set[tuple[str, str]], existing: dict[str, SessionTotals], above: int
) -> dict[str, int]:
    """For each summed session, how many of its new calls' models none of its older calls has.
    Its shown model is one the older calls have; only other models are asked of the calls."""
    unsure = sorted((s, m) for s, m in pairs if s in existing and m != existing[s].shown_model)
    known: set[tuple[str, str]] = set()
    for offset in range(0, len(unsure), PAIRS_PER_QUERY):
        condition = Q()
        for session_id, model_name in unsure[offset : offset + PAIRS_PER_QUERY]:
            condition |= Q(session_id=session_id, model_name=model_name)
        older = LLMRequestLog.objects.filter(condition, id__lte=above)
        known.update(older.values_list("session_id", "model_name").distinct().order_by())
    added: dict[str, int] = defaultdict(int)
    for pair in unsure:
        if pair not in known:
            added[pair[0]] += 1
    return added


def _add_session_groups(calls: LLMRequestLogQuerySet) -> None:
    """SessionGroupTotals of these calls' sessions: one GROUP BY (session, group) per rolled-up `by`."""
    rows = []
    for by in rolled_up_breakdowns():
        for row in _session_rows(calls.annotate(group_key=breakdown_group(by)), "group_key"):
            units = row.pop("cost_units")
            key = row.pop("group_key")
            rows.append(SessionGroupTotals(**row, by=by, key=key, cost=None if units is None else usd(as_units(units))))
    SessionGroupTotals.objects.bulk_create(rows, batch_size=500)


SESSION_GROUP_SUMS = (
    "first_call",
    "last_call",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "user_count",
    "shown_user",
    "model_count",
    "shown_model",
)


def _insert_summed_sessions(calls: LLMRequestLogQuerySet, by: str | None = None) -> None:
    """Every session's sums (rebuild_rollups) by one INSERT ... SELECT in the database (rows made in
    Python cost minutes at a million calls, hours at ten million): into SessionTotals, or with `by`
    into SessionGroupTotals, one row per session and group of that breakdown."""
    quote = connection.ops.quote_name
    picked = ", ".join(f"grouped.{quote(name)}" for name in SESSION_GROUP_SUMS)
    if by is None:
        table, keys, key_values, params = SessionTotals, ("session_id",), "grouped.session_id", ()
        rows = _session_rows(calls)
    else:
        table, keys, key_values, params = (
            SessionGroupTotals,
            ("session_id", "by", "key"),
            "grouped.session_id, %s, grouped.group_key",
            (by,),
        )
        rows = _session_rows(calls.annotate(group_key=breakdown_group(by)), "group_key")
    columns = ", ".join(quote(name) for name in (*keys, "cost", *SESSION_GROUP_SUMS))
    sql, sql_params = rows.query.sql_with_params()
    with connection.cursor() as cursor:  # ORM-made SQL; the names are the models'
        cursor.execute(
            f"INSERT INTO {quote(table._meta.db_table)} ({columns}) SELECT {key_values}, "  # noqa: S608
            f"grouped.cost_units / {COST_SCALE}.0, {picked} FROM ({sql}) AS grouped",
            (*params, *sql_params),
        )


def _insert_all_sessions(calls: LLMRequestLogQuerySet) -> int:
    """Every session's SessionTotals, SessionUser and SessionGroupTotals rows (rebuild_rollups), as
    refresh_sessions makes them; answers how many sessions there are."""
    _insert_summed_sessions(calls)
    for by in rolled_up_breakdowns():
        _insert_summed_sessions(calls, by)
    quote = connection.ops.quote_name
    pairs = calls.exclude(session_id="").exclude(user_id="").values("session_id", "user_id").distinct().order_by()
    pairs_sql, pairs_params = pairs.query.sql_with_params()
    user_columns = ", ".join(quote(name) for name in ("session_id", "user_id", "first_call", "last_call"))
    with connection.cursor() as cursor:  # ORM-made SQL; the names are the models'
        cursor.execute(
            f"INSERT INTO {quote(SessionUser._meta.db_table)} ({user_columns}) SELECT pairs.session_id, "  # noqa: S608
            f"pairs.user_id, session.first_call, session.last_call FROM ({pairs_sql}) AS pairs "
            f"JOIN {quote(SessionTotals._meta.db_table)} AS session ON session.session_id = pairs.session_id",
            pairs_params,
        )
    return SessionTotals.objects.count()


def touched_sessions(calls: LLMRequestLogQuerySet) -> list[str]:
    return list(calls.exclude(session_id="").values_list("session_id", flat=True).distinct().order_by())


# Marks that SessionTotals / SessionUser and the user totals' newer columns (prompt and completion
# tokens, latency, first and last call) hold every log: set by rebuild_rollups, or by the migration
# on an empty database. Its days_since is the first local day whose user totals have those columns
# (days before it were rolled up earlier and their logs purged). Without it, reads stay raw.
SESSIONS_READY = "sessions"


def rebuild_sessions(since: date | None = None, *, upto: int | None = None) -> int:
    """Every session summed again from the logs (rebuild_rollups, ids up to `upto`, where the
    roll-ups' watermark moves), by INSERT ... SELECT in the database."""
    SessionTotals.objects.all().delete()
    SessionUser.objects.all().delete()
    SessionGroupTotals.objects.all().delete()
    calls = LLMRequestLog.objects.all() if upto is None else LLMRequestLog.objects.filter(id__lte=upto)
    kept = _insert_all_sessions(calls)
    ready, created = MetricWatermark.objects.get_or_create(name=SESSIONS_READY)
    if created or since is None:
        ready.days_since = since
    elif ready.days_since is not None:
        ready.days_since = min(ready.days_since, since)
    ready.save()
    return kept


def sessions_ready() -> MetricWatermark | None:
    return MetricWatermark.objects.filter(name=SESSIONS_READY).first()


def forget_purged_sessions(cutoff: datetime) -> int:
    """After purge_logs deleted the calls before `cutoff`: the sessions that had calls then are
    summed again from what is left (the list answers what the logs hold, like a session's page)."""
    with watermarks.claim(ROLLUPS, LLMRequestLog) as claim:
        # Under the watermark's lock, up to it: the calls above are added by the next roll-up.
        old = SessionTotals.objects.filter(first_call__lt=cutoff).values_list("session_id", flat=True)
        return refresh_sessions(list(old), upto=claim.watermark.last_id)


PERIOD_TABLES = (("hour", HourlyRollup), ("day", DailyRollup))
# Each period's latency histograms merged over statuses and error types, kept with its table.
LATENCY_TABLES = {"hour": HourlyLatency, "day": DailyLatency}
BREAKDOWN_TABLES = (("hour", HourlyBreakdownRollup), ("day", DailyBreakdownRollup))
SOURCE_BREAKDOWN = "source"
TAG_BREAKDOWN_PREFIX = "tag:"


def rolled_up_breakdowns() -> tuple[str, ...]:
    """The breakdowns (`by`) the breakdown roll-ups keep: by source, and by each ROLLUP_TAG_KEYS key."""
    return (SOURCE_BREAKDOWN, *(f"{TAG_BREAKDOWN_PREFIX}{key}" for key in settings.ROLLUP_TAG_KEYS))


def tag_value(key: str) -> Coalesce:
    """A call's value of tag `key`, "" where it has none (like an empty user_id: every call is in
    exactly one group of a breakdown by that tag). KeyTextTransform takes the key whole."""
    return Coalesce(KeyTextTransform(key, "tags"), Value(""), output_field=TextField())


def breakdown_group(by: str) -> Any:
    """The group of a call in a rolled-up breakdown: its source, or its value of the tag."""
    if by.startswith(TAG_BREAKDOWN_PREFIX):
        return tag_value(by.removeprefix(TAG_BREAKDOWN_PREFIX))
    return F(by)


def breakdown_groups() -> dict[str, Any]:
    """The group of a call in each rolled-up breakdown, by an annotation name of its own."""
    return {f"group_{number}": breakdown_group(by) for number, by in enumerate(rolled_up_breakdowns())}


def _add_breakdowns(grouped: Grouped, periods: dict[str, Any]) -> None:
    """Add the rows to the breakdown roll-ups: per table, the groups of every rolled-up `by`
    projected from the fine grouping, one read and one upsert."""
    width = len(periods) + len(KEY)
    tables = [(name, model) for name, model in BREAKDOWN_TABLES if name in periods]
    for index, (name, model) in enumerate(tables):
        per_by = {
            by: grouped.project(
                lambda key, index=index, number=number: (key[index], key[width + number], *key[len(periods) : width])
            )
            for number, by in enumerate(rolled_up_breakdowns())
        }
        _upsert_breakdown(model, name, per_by)


def _upsert_breakdown(model: type, period: str, per_by: dict[str, dict[tuple, Figures]]) -> None:
    """Add the groups ((period, group, *KEY) -> Figures, per `by`) to `model`'s rows."""
    if not any(per_by.values()):
        return
    keys = [key for groups in per_by.values() for key in groups]
    stored = _stored(
        model,
        ["by", period, "key", *KEY],
        ["latency_histogram", "ttft_histogram"],
        by__in=list(per_by),
        **{f"{period}__in": {key[0] for key in keys}},
        model_name__in={key[2] for key in keys},
    )
    rows = []
    for by, groups in per_by.items():
        for key, figures in groups.items():
            latency, ttft = stored.get((by, *key), (None, None))
            rows.append(
                (
                    by,
                    *key,
                    *_sums(figures),
                    rollup_math.encode(rollup_math.add_encoded(figures.latency, latency)),
                    rollup_math.encode(rollup_math.add_encoded(figures.ttft, ttft)),
                )
            )
    _write(model, ["by", period, "key", *KEY], Figures.SUMS, ["latency_histogram", "ttft_histogram"], rows)


def keep_breakdowns(watermark: MetricWatermark, breakdowns: dict[str, str | None]) -> None:
    """Record which breakdowns the roll-ups hold in full (`by` -> first local day, ISO, or None)."""
    if watermark.breakdowns != breakdowns:
        watermark.breakdowns = breakdowns
        watermark.save(update_fields=["breakdowns"])


def _configured_breakdowns(watermark: MetricWatermark) -> dict[str, str | None]:
    """The watermark's complete breakdowns still configured (one dropped from ROLLUP_TAG_KEYS is
    no longer kept up, so no longer complete)."""
    configured = rolled_up_breakdowns()
    return {by: since for by, since in (watermark.breakdowns or {}).items() if by in configured}


def add_rows(rows: LLMRequestLogQuerySet, *, hourly: bool = True, daily: bool = True) -> Kinds:
    """Add these log rows to the hourly roll-ups and (in TIME_ZONE) the daily ones; answers what
    kinds of rows they were (with users, with sessions)."""
    zone = timezone.get_current_timezone()
    periods = {}
    if hourly:
        periods["hour"] = TruncHour("timestamp", tzinfo=UTC)
    if daily:
        periods["day"] = TruncDate("timestamp", tzinfo=zone)
    if not periods:
        return Kinds()
    # One pass groups by hour, day and every breakdown's group together (a UTC hour can straddle
    # two local days), then each table gets its own sums: three queries over the new rows rather
    # than three per table.
    grouped = _grouped(rows, periods, breakdown_groups())
    if not grouped.keys:
        return grouped.kinds
    width = len(periods) + len(KEY)
    for index, (name, model) in enumerate((name, model) for name, model in PERIOD_TABLES if name in periods):
        per_period = grouped.project(lambda key, index=index: (key[index], *key[len(periods) : width]))
        # First: _upsert adds the stored histograms into the groups' own (in place).
        _upsert_latency(LATENCY_TABLES[name], name, per_period)
        _upsert(model, name, per_period)
    if grouped.kinds.users:
        _add_users(rows, periods)
    _add_breakdowns(grouped, periods)
    return grouped.kinds


def daily_rows_valid(watermark: MetricWatermark) -> bool:
    """Whether the daily roll-ups were built in the current TIME_ZONE."""
    return watermark.time_zone == settings.TIME_ZONE


def roll_up(*, limit: int | None = CATCH_UP_LIMIT, try_lock: bool = False) -> int | None:
    """Add the logs above the watermark (at most `limit` ids) to the roll-ups; answers how many
    rows, or None when another process was rolling up and `try_lock` said not to wait."""
    with watermarks.claim(ROLLUPS, LLMRequestLog, limit=limit, try_lock=try_lock) as claim:
        if claim is None:
            return None
        watermark = claim.watermark
        if not watermark.time_zone and not watermark.last_id:
            watermark.time_zone = settings.TIME_ZONE  # the first roll-up: days in this zone
            keep_breakdowns(watermark, dict.fromkeys(rolled_up_breakdowns()))  # and all breakdowns
        else:
            keep_breakdowns(watermark, _configured_breakdowns(watermark))
        if claim.upto is None:
            return 0
        rows = LLMRequestLog.objects.filter(id__gt=watermark.last_id, id__lte=claim.upto)
        daily = daily_rows_valid(watermark)
        if not daily and watermark.time_zone:
            logger.warning(
                "TIME_ZONE is %s but the daily roll-ups are in %s: run manage.py rebuild_rollups.",
                settings.TIME_ZONE,
                watermark.time_zone,
            )
            watermark.time_zone = ""  # from now on they miss rows: only a rebuild trusts them again
        added = claim.upto - watermark.last_id
        if add_rows(rows, daily=daily).sessions:
            add_to_sessions(rows, above=watermark.last_id, upto=claim.upto)
        claim.advance()
        return added


def catch_up(limit_per_call: int = CATCH_UP_LIMIT) -> int:
    """Roll up until the watermark reaches the logs (purge_logs, before deleting); answers the
    number of calls it took."""
    calls = 0
    while True:
        before = watermarks.counted_up_to(ROLLUPS)
        roll_up(limit=limit_per_call)
        calls += 1
        if watermarks.counted_up_to(ROLLUPS) == before:
            return calls


_last_after_write = 0.0
# Where the roll-up after a write runs: None, at once in the writing thread (after its commit);
# else a function given the roll-up to run elsewhere. The ASGI worker's row writer hands it to a
# thread of its own (core/asgi.py): there a roll-up (15-130 ms, PostgreSQL, 2 cores) held up
# every call whose row was waiting to be written, and each call answers only once its row is.
_after_write_runner: Callable[[Callable[[], None]], Any] | None = None


def run_after_writes_with(runner: Callable[[Callable[[], None]], Any] | None) -> None:
    """Run the roll-ups after writes through `runner(roll_up_after_write)` (None: in the writer)."""
    global _after_write_runner
    _after_write_runner = runner


def after_write(sender: Any = None, created: int = 0, **kwargs: Any) -> None:
    """calls_recorded receiver: a cheap roll-up that never waits for another one."""
    global _last_after_write
    if not settings.ROLLUPS_AFTER_WRITE:
        return
    now = clock.monotonic()
    if now - _last_after_write < AFTER_WRITE_INTERVAL:
        return
    _last_after_write = now
    runner = _after_write_runner
    if runner is None:
        roll_up_after_write()
    else:
        runner(roll_up_after_write)


def roll_up_after_write() -> None:
    """The roll-up after a write; a database error is logged, not raised to the writer."""
    try:
        roll_up(limit=AFTER_WRITE_LIMIT, try_lock=True)
    except DatabaseError:
        # The call is stored; the next roll-up adds it. Reads are exact meanwhile (llm/metrics.py).
        logger.exception("Roll-up after a write failed")


# Rebuilding.


@dataclass
class RebuildResult:
    since: date | None
    upto: int
    days: int


def rebuild(since: date | None = None, progress: Callable[[str], None] | None = None) -> RebuildResult:
    """Recompute the roll-ups from the logs: from local date `since` on (None: from the oldest
    log's day, so the history purge_logs has deleted stays), and add what was not rolled up yet
    before it. One transaction: readers see the old roll-ups until it commits. Idempotent."""
    progress = progress or (lambda message: None)
    zone = timezone.get_current_timezone()
    with watermarks.claim(ROLLUPS, LLMRequestLog) as claim:
        watermark = claim.watermark
        upto = claim.upto if claim.upto is not None else watermark.last_id
        if since is None:
            oldest = LLMRequestLog.objects.order_by("timestamp").values_list("timestamp", flat=True).first()
            since = rollup_math.local_date(oldest, zone) if oldest else timezone.localdate()
        daily_valid = daily_rows_valid(watermark)
        day_cut = rollup_math.day_start(since, zone)
        hour_cut = rollup_math.floor_hour(day_cut)
        breakdowns = _rebuilt_breakdowns(watermark, since, hour_cut)
        HourlyRollup.objects.filter(hour__gte=hour_cut).delete()
        HourlyLatency.objects.filter(hour__gte=hour_cut).delete()
        HourlyUserTotals.objects.filter(hour__gte=hour_cut).delete()
        HourlyBreakdownRollup.objects.filter(Q(hour__gte=hour_cut) | ~Q(by__in=breakdowns)).delete()
        DailyRollup.objects.filter(day__gte=since).delete()
        DailyLatency.objects.filter(day__gte=since).delete()
        DailyUserRollup.objects.filter(day__gte=since).delete()
        DailyUserTotals.objects.filter(day__gte=since).delete()
        DailyBreakdownRollup.objects.filter(Q(day__gte=since) | ~Q(by__in=breakdowns)).delete()
        WeeklyUserRollup.objects.filter(week__gte=week_of(since)).delete()
        if not daily_valid:
            # Built in another zone: no daily row is kept; before `since` reads use hourly rows.
            DailyRollup.objects.all().delete()
            DailyLatency.objects.all().delete()
            DailyUserRollup.objects.all().delete()
            DailyUserTotals.objects.all().delete()
            DailyBreakdownRollup.objects.all().delete()
            WeeklyUserRollup.objects.all().delete()
            watermark.days_since = since
        else:
            # The kept days of the week `since` falls in, back in its deleted weekly rows (before
            # the late calls below are added to both tables).
            fill_weekly_users(week_of(since), since)
            if watermark.days_since is not None:
                watermark.days_since = min(watermark.days_since, since)
        pending = Q(id__gt=watermark.last_id, id__lte=upto)
        # What was not rolled up yet, before the cut (late events), in one go.
        add_rows(LLMRequestLog.objects.filter(pending, timestamp__lt=hour_cut), daily=False)
        if daily_valid:
            add_rows(LLMRequestLog.objects.filter(pending, timestamp__lt=day_cut), hourly=False)
        # [hour_cut, day_cut): under an hour, hourly only (a half-hour zone's midnight is mid-hour).
        add_rows(
            LLMRequestLog.objects.filter(id__lte=upto, timestamp__gte=hour_cut, timestamp__lt=day_cut), daily=False
        )
        days = 0
        for day, start, end in _days_from(since, zone, upto):
            add_rows(LLMRequestLog.objects.filter(id__lte=upto, timestamp__gte=start, timestamp__lt=end))
            days += 1
            progress(f"{day}: rolled up")
        rebuild_sessions(None if watermark.days_since is None and _has_no_older_rollups(since) else since, upto=upto)
        progress("sessions: summed")
        watermark.time_zone = settings.TIME_ZONE
        keep_breakdowns(watermark, breakdowns)
        claim.upto = upto
        claim.advance()
    return RebuildResult(since=since, upto=upto, days=days)


def _rebuilt_breakdowns(watermark: MetricWatermark, since: date, hour_cut: datetime) -> dict[str, str | None]:
    """Which breakdowns are complete after a rebuild from `since`: those complete before keep
    their first day (or `since`, if earlier); a new one covers every day if nothing was rolled up
    before the cut, else from `since` (the calls before it may be purged)."""
    kept = _configured_breakdowns(watermark)
    history = HourlyRollup.objects.filter(hour__lt=hour_cut).exists()
    breakdowns = {}
    for by in rolled_up_breakdowns():
        if by in kept:
            first = kept[by]
            breakdowns[by] = None if first is None else min(first, since.isoformat())
        else:
            breakdowns[by] = since.isoformat() if history else None
    return breakdowns


def _has_no_older_rollups(since: date) -> bool:
    """Whether no user roll-up row is older than `since` (then the user totals are whole)."""
    return not DailyUserTotals.objects.filter(day__lt=since).exists()


def _days_from(since: date, zone: Any, upto: int) -> Iterable[tuple[date, datetime, datetime]]:
    """Each local day from `since` to the newest log's (ids up to `upto`)."""
    newest = LLMRequestLog.objects.filter(id__lte=upto).order_by("-timestamp").values_list("timestamp", flat=True)
    last = newest.first()
    if last is None:
        return
    day = since
    final = rollup_math.local_date(last, zone)
    while day <= final:
        following = day + timedelta(days=1)
        yield day, rollup_math.day_start(day, zone), rollup_math.day_start(following, zone)
        day = following
