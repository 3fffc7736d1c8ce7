"""Spend of a scope of calls over a period, and the projected spend at the period's end.

Periods are a day, a week (from Monday) or a calendar month in TIME_ZONE (`period_bounds`).

The forecast (`project`) follows the rhythm of the same hours of previous weeks, not a straight
line from the period's start. With the period [start, end), now t, and c(h) the cost of the UTC
hour starting at h:

- the hours of the period are split at t: each hour h counts with the part of it that lies in
  [start, t) (elapsed) and the part that lies in [t, end) (remaining), so the hour t falls in is
  partly both;
- scenario j (j = 1..HISTORY_WEEKS) replays, for every hour, its j-th most recent occurrence of the
  same hour of the week that is already over: an elapsed hour h reads c(h - j weeks); a remaining
  hour h reads c(h - k weeks) with k = j - 1 + the smallest k0 >= 1 for which h + 1 h - k0 weeks <= t
  (a month's last days read last week's, and older, hours, never hours still to come);
- the scale is how this period compares with the weeks before it: over the scenarios, the cost of
  the elapsed hours whose hour j weeks back lies before the period's start, divided by what those
  hours j weeks back cost (1 when that is 0). For a day or a week that is every elapsed hour;
  in a month, the later hours are compared with hours of the same month, already at its level,
  so they are left out;
- each scenario projects spent_so_far + scale x (the remaining hours it reads from before the
  period's start) + (those it reads from within the period, already at its level), each hour
  weighted by the part of it that remains; the forecast is the mean of the projections, `low` and
  `high` the smallest and largest: "the rest of the period goes as it went in week j, scaled".

Only scenarios whose oldest hour is not before the scope's first call are used (a new install, a
new model or user has fewer weeks of history; a week before any traffic would read as zero). The
hours are read from one week further back than the oldest scenario, so a scope with calls in that
extra week has all of its scenarios. With none, the
forecast is the straight line spent_so_far x period length / elapsed time (`method` "linear"),
with `low` = spent_so_far. A repeating week is forecast exactly (up to float rounding); a week
that repeats at twice the cost so far is forecast at twice the cost. Weeks are 168 hours: in the
week of a daylight saving change the local hours shift by one.

Hourly costs are read from the roll-ups (llm/rollups.py) for scopes the roll-ups break down by
(all calls, one model): the days the scenarios read whole from the daily roll-ups, the others by
hour (see "Reading the history by days" below); and from the calls themselves otherwise (a user, an API key: an
index on (field, timestamp); a tag: the period's calls, no index).
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
from django.db import connection
from django.db.models import CharField, F, Q, QuerySet, Sum, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, TruncHour
from django.utils import timezone

from llm import metrics, plain_sql, rollup_math, rollups
from llm.models import DailyLatency, DailyUserTotals, HourlyLatency, HourlyUserTotals, LLMRequestLog

HOUR = timedelta(hours=1)
WEEK = timedelta(days=7)
HISTORY_WEEKS = 4
PERIODS = ("day", "week", "month")
METHOD_RHYTHM = "hour_of_week"
METHOD_LINEAR = "linear"


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The current day, week (Monday to Monday) or calendar month around `now`, in TIME_ZONE."""
    zone = timezone.get_current_timezone()
    today = now.astimezone(zone).date()
    if period == "day":
        first, after = today, today + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"period is one of {', '.join(PERIODS)}")
    return _local_midnight(first, zone), _local_midnight(after, zone)


def _local_midnight(day: date, zone) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), zone).astimezone(UTC)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# Reading costs


@dataclass(frozen=True)
class Scope:
    """Which calls: all, one model, one user, one tag (`key:value`) or one API key (its name)."""

    kind: str = "all"
    value: str = ""


# Calls of these scopes are found through a column with a (column, timestamp) index.
RAW_COLUMNS = {"user": "user_id", "api_key": "api_key_name"}

# {scope: {UTC hour (None when not by hour): cost in COST_PLACES units}}
ScopeCosts = dict[Scope, dict[datetime | None, int]]


def costs(scopes: Iterable[Scope], start: datetime, end: datetime, *, by_hour: bool = False) -> ScopeCosts:
    """The cost of each scope's calls in [start, end), in total or per UTC hour.

    A few queries whatever the number of scopes: one reading of the roll-ups per model for every
    `all` and `model` scope, one grouped query per raw column, one per tag key."""
    wanted = set(scopes)
    found: ScopeCosts = {scope: defaultdict(int) for scope in wanted}
    _add_model_scopes(found, start, end, by_hour)
    window = LLMRequestLog.objects.in_window(start, end).order_by()
    for kind, column in RAW_COLUMNS.items():
        values = {scope.value for scope in wanted if scope.kind == kind}
        if values:
            rows = window.filter(**{f"{column}__in": values}).annotate(group_value=F(column))
            _add_grouped(found, kind, rows, by_hour)
    tags: dict[str, set[str]] = defaultdict(set)
    for scope in wanted:
        if scope.kind == "tag":
            key, _, value = scope.value.partition(":")
            tags[key].add(value)
    for key, values in tags.items():
        # As text (Cast): a JSON key's own `__in` compares JSON values, and SQLite would parse "chat" as JSON.
        tag_value = Cast(KeyTextTransform(key, "tags"), CharField())
        rows = _likely_tagged(window, key, values).annotate(group_value=tag_value).filter(group_value__in=values)
        _add_grouped(found, "tag", rows, by_hour, prefix=f"{key}:")
    return found


def _likely_tagged(rows: QuerySet, key: str, values: set[str]) -> QuerySet:
    """`rows` narrowed cheaply to those that may carry the tag, before each row's JSON is read
    (no index answers a tag: the period's calls are scanned). PostgreSQL: containment (@>);
    SQLite: the stored JSON text holds the value as Django writes it (json.dumps, ASCII), a string
    search several times faster than extracting the key. A value that is not plain ASCII is not
    narrowed (a row written by other means could spell it differently)."""
    if connection.vendor == "postgresql":
        condition = Q()
        for value in values:
            condition |= Q(tags__contains={key: value})
        return rows.filter(condition)
    written = [json.dumps(value) for value in sorted(values)]
    if any(text != json.dumps(json.loads(text), ensure_ascii=False) for text in written):
        return rows
    condition = Q()
    for text in written:
        condition |= Q(tags_text__contains=text)
    return rows.annotate(tags_text=Cast("tags", TextField())).filter(condition)


def _add_model_scopes(found: ScopeCosts, start: datetime, end: datetime, by_hour: bool) -> None:
    """Add the cost of each `all` and `model` scope of `found`, from one reading (per model only
    when a model scope asks for it: summed over models by the database, the reading of 9 weeks of
    hours is ~1,500 rows rather than ~11,000)."""
    scopes = [scope for scope in found if scope.kind in ("all", "model")]
    if not scopes:
        return
    per_model = any(scope.kind == "model" for scope in scopes)
    for (hour, model_name), units in _model_costs(start, end, by_hour, per_model).items():
        for scope in scopes:
            if scope.kind == "all" or scope.value == model_name:
                found[scope][hour] += units


def _add_grouped(found: ScopeCosts, kind: str, rows: QuerySet, by_hour: bool, prefix: str = "") -> None:
    for (hour, value), units in _grouped_costs(rows, by_hour).items():
        found[Scope(kind, prefix + value)][hour] += units


def _grouped_costs(rows: QuerySet, by_hour: bool) -> dict[tuple[datetime | None, str], int]:
    """{(UTC hour or None, group_value): cost units} of annotated rows, summed by the database."""
    names = ["group_value"]
    if by_hour:
        rows = rows.annotate(hour=TruncHour("timestamp", tzinfo=UTC))
        names.append("hour")
    answer: dict[tuple[datetime | None, str], int] = {}
    for row in rows.values(*names).annotate(units=rollups.cost_units_sum()).order_by():
        hour = floor_hour(row["hour"]) if by_hour else None
        answer[(hour, row["group_value"])] = rollups.as_units(row["units"])
    return answer


# The model key of costs summed over every model (`per_model` False).
EVERY_MODEL = ""

ModelCosts = dict[tuple[datetime | None, str], int]


def _model_costs(start: datetime, end: datetime, by_hour: bool, per_model: bool = True) -> ModelCosts:
    """{(UTC hour or None, model or EVERY_MODEL): cost units}: the roll-ups for the whole hours and
    days of the window, the calls for its edges and for what is not rolled up yet (llm.metrics'
    plan, at a watermark that holds still); the calls alone when the roll-ups cannot answer. Only
    the cost, summed per hour (and model) by the database."""
    logs = LLMRequestLog.objects.in_window(start, end)
    the_plan = metrics.plan(metrics.Selection(logs, start, end, rollups_apply=True), "hour" if by_hour else None)
    found = None
    if the_plan is not None:
        found = metrics.consistent(lambda watermark: _model_costs_at(the_plan, watermark, by_hour, per_model), the_plan)
    if found is None:
        found = _grouped_costs(logs.order_by().annotate(group_value=F("model_name")), by_hour)
    return found if per_model else _summed_over_models(found)


def _summed_over_models(found: ModelCosts) -> ModelCosts:
    answer: ModelCosts = defaultdict(int)
    for (hour, _model_name), units in found.items():
        answer[(hour, EVERY_MODEL)] += units
    return answer


def _model_costs_at(the_plan: metrics.Plan, watermark: int, by_hour: bool, per_model: bool) -> ModelCosts:
    answer: ModelCosts = defaultdict(int)
    daily_table, hourly_table = metrics.period_model_tables(the_plan)
    if the_plan.split.days:  # never by hour: plan() answers days only for totals
        rows = daily_table.objects.filter(the_plan.daily()).values("model_name")
        for row in rows.annotate(units=Sum("cost_units")).order_by():
            answer[(None, row["model_name"])] += int(row["units"] or 0)
    if the_plan.split.hours:
        # Hours as epoch seconds: psycopg parses a timestamptz in Python (~10 µs a row).
        hourly = hourly_table.objects.filter(the_plan.hourly()).annotate(hour_epoch=metrics.EpochSeconds("hour"))
        names = (["hour_epoch"] if by_hour else []) + (["model_name"] if per_model else [])
        if names:
            rows = hourly.values(*names).annotate(units=Sum("cost_units")).order_by()
        else:
            rows = [hourly.aggregate(units=Sum("cost_units"))]
        for row in rows:
            hour = metrics.hour_at(row["hour_epoch"]) if by_hour else None
            answer[(hour, row.get("model_name", EVERY_MODEL))] += int(row["units"] or 0)
    for rows in the_plan.raw_rows(watermark):
        for key, units in _grouped_costs(rows.annotate(group_value=F("model_name")), by_hour).items():
            answer[key] += units
    return answer


# Projecting


@dataclass(frozen=True)
class Forecast:
    period: str
    start: datetime
    end: datetime
    spent_so_far: float
    forecast: float
    low: float
    high: float
    method: str
    weeks: int  # scenarios used (previous weeks of history); 0 with the linear method
    scale: float | None  # this period so far over the same hours before; None with the linear method


HOUR_S = 3600
WEEK_S = 7 * 24 * HOUR_S

# What a scenario reads: the UTC hours (epoch seconds) of each sum and the part of each that
# counts, as two NumPy arrays: made and walked as arrays (a list of tuples per hour cost ~3 ms a page).
Terms = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Terms:
    now: Terms  # elapsed hours whose hour j weeks back is before the period: their cost now
    then: Terms  # ... and those hours j weeks back
    before: Terms  # the remaining hours read from hours before the period (to be scaled)
    within: Terms  # ... read from hours of this period (already at its level)
    oldest: float  # the oldest hour it reads, epoch seconds

    def sums(self) -> tuple[Terms, Terms, Terms, Terms]:
        return (self.now, self.then, self.before, self.within)


def _terms(start: float, end: float, now: float, j: int) -> _Terms:
    """Scenario j of the module's docstring as the hours it reads. In epoch seconds (integer
    hours), over all the period's hours at once in NumPy: a month of hours x 4 scenarios took
    ~5 ms a page hour by hour in Python. The same IEEE operations as hour by hour (an integer hour
    is exact as a float), so the same parts."""
    first_hour = int(start // HOUR_S) * HOUR_S
    oldest: float = first_hour - j * WEEK_S if first_hour < end else now
    hours = np.arange(first_hour, math.ceil(end / HOUR_S) * HOUR_S, HOUR_S, dtype=np.int64)
    elapsed = (np.minimum(hours + HOUR_S, now) - np.maximum(hours, start)) / HOUR_S
    back = hours - j * WEEK_S
    past = (elapsed > 0) & (back < start)
    now_parts = elapsed[past]
    remaining = (np.minimum(hours + HOUR_S, end) - np.maximum(hours, now)) / HOUR_S
    ahead = remaining > 0
    # The first week back whose same hour is over at `now`, then j - 1 weeks further.
    weeks_back = np.maximum(1, np.ceil((hours[ahead] + HOUR_S - now) / WEEK_S).astype(np.int64)) + j - 1
    sources = hours[ahead] - weeks_back * WEEK_S
    if len(sources):
        oldest = min(oldest, int(sources.min()))
    earlier = sources < start
    parts = remaining[ahead]
    return _Terms(
        (hours[past], now_parts),
        (back[past], now_parts),
        (sources[earlier], parts[earlier]),
        (sources[~earlier], parts[~earlier]),
        oldest,
    )


def _all_terms(start: datetime, end: datetime, now: datetime, weeks: int) -> list[_Terms]:
    return _terms_of(start.timestamp(), end.timestamp(), now.timestamp(), weeks)


@functools.lru_cache(maxsize=32)
def _terms_of(start: float, end: float, now: float, weeks: int) -> list[_Terms]:
    """The scenarios' terms, made once per period and instant: which days a reading needs by hour
    (detail_days) and the projections (project) walk the same ones. Never changed by a reader."""
    return [_terms(start, end, now, j) for j in range(1, weeks + 1)]


class _HourlyCosts:
    """USD per UTC hour (epoch seconds) as two sorted arrays: each sum looks its hours up with one
    searchsorted rather than a dict lookup per hour (16 sums over a month's ~744 hours a page)."""

    def __init__(self, hourly: Mapping[int, float]) -> None:
        self.hours = np.array(sorted(hourly), dtype=np.int64)
        self.costs = np.array([hourly[hour] for hour in self.hours.tolist()], dtype=float)

    def at(self, hours: np.ndarray) -> np.ndarray:
        """The cost of each of `hours` (0 for an hour without one): the values a dict lookup gives."""
        if not len(self.hours):
            return np.zeros(len(hours))
        places = np.minimum(np.searchsorted(self.hours, hours), len(self.hours) - 1)
        return np.where(self.hours[places] == hours, self.costs[places], 0.0)


def _total(hourly: _HourlyCosts, terms: Terms) -> float:
    # Each product as hour by hour, summed left to right by Python as before: the same figure.
    hours, parts = terms
    return sum((parts * hourly.at(hours)).tolist())


def project(
    hourly: Mapping[datetime, float],
    spent: float,
    period: str,
    start: datetime,
    end: datetime,
    now: datetime,
    earliest: datetime | None,
    weeks: int = HISTORY_WEEKS,
) -> Forecast:
    """The forecast of the module's docstring. `hourly`: USD per UTC hour over at least
    [start - `weeks` weeks, now); `spent`: the exact spend of [start, now)."""
    first = (floor_hour(earliest) if earliest is not None else now).timestamp()
    by_second = _HourlyCosts({int(hour.timestamp()): usd for hour, usd in hourly.items()})
    scenarios = [terms for terms in _all_terms(start, end, now, weeks) if terms.oldest >= first]
    if not scenarios:
        elapsed = (now - start).total_seconds()
        linear = spent * (end - start).total_seconds() / elapsed if elapsed > 0 else spent
        return Forecast(period, start, end, spent, linear, spent, linear, METHOD_LINEAR, 0, None)
    then_cost = sum(_total(by_second, terms.then) for terms in scenarios)
    scale = sum(_total(by_second, terms.now) for terms in scenarios) / then_cost if then_cost > 0 else 1.0
    projections = [
        spent + scale * _total(by_second, terms.before) + _total(by_second, terms.within) for terms in scenarios
    ]
    return Forecast(
        period,
        start,
        end,
        spent,
        statistics.fmean(projections),
        min(projections),
        max(projections),
        METHOD_RHYTHM,
        len(scenarios),
        scale,
    )


# Below 2^53 an integer and the scale are exact floats, so their quotient is the correctly rounded
# USD amount: the float of the exact Decimal (rollups.usd), without a Decimal per hour.
EXACT_UNITS = 2**53


def as_usd(units_by_hour: Mapping[datetime | None, int]) -> dict[datetime | None, float]:
    return {
        hour: units / rollups.COST_SCALE if -EXACT_UNITS < units < EXACT_UNITS else float(rollups.usd(units))
        for hour, units in units_by_hour.items()
    }


@dataclass(frozen=True)
class Reading:
    """Hourly costs of some scopes over the periods asked for, read once (see `read`)."""

    now: datetime
    bounds: dict[str, tuple[datetime, datetime]]  # period -> (start, end)
    history: ScopeCosts
    spent_apart: dict[str, ScopeCosts]  # periods that do not start on the hour: their spend, read apart

    def spent_units(self, scope: Scope, period: str) -> int:
        """The scope's spend in the current `period` (exact): a call stamped this very instant, or
        a little ahead by another machine's clock, is spent too."""
        if period in self.spent_apart:
            return sum(self.spent_apart[period][scope].values())
        start, end = self.bounds[period]
        return sum(units for hour, units in self.history[scope].items() if start <= hour < end)

    def forecast(self, scope: Scope, period: str) -> Forecast:
        start, end = self.bounds[period]
        spent = float(rollups.usd(self.spent_units(scope, period)))
        hourly = self.history[scope]
        # The first hour with a call of the scope (an hour of calls costing nothing counts too).
        earliest = min(hourly, default=None)
        return project(as_usd(hourly), spent, period, start, end, self.now, earliest)


def read(
    scopes: Iterable[Scope],
    periods: Iterable[str],
    now: datetime,
    *,
    history: bool = True,
    recent: metrics.RecentRows | None = None,
) -> Reading:
    """One reading of hourly costs for all `scopes` and the current `periods`: from one week more
    than HISTORY_WEEKS before the earliest period's start (a call in that extra week says the
    history goes back far enough) to the latest period's end; without `history`, only the periods.
    `recent`: the calls above the roll-ups' watermark, summed (metrics.RecentRows), when the page
    has them."""
    wanted = set(scopes)
    bounds = {period: period_bounds(period, now) for period in set(periods)}
    if not bounds:
        return Reading(now, {}, {}, {})
    first = min(floor_hour(start) for start, _ in bounds.values())
    if history:
        first -= (HISTORY_WEEKS + 1) * WEEK
    last = max(end for _, end in bounds.values())
    if history:
        hourly = _history_costs(wanted, bounds, now, first, last, recent)
    else:
        hourly = costs(wanted, first, last, by_hour=True)
    apart = {period: costs(wanted, start, end) for period, (start, end) in bounds.items() if floor_hour(start) != start}
    return Reading(now, bounds, hourly, apart)


def forecasts(scopes: Iterable[Scope], period: str, now: datetime) -> dict[Scope, Forecast]:
    """The forecast of each scope for the current `period`, from one reading."""
    wanted = list(dict.fromkeys(scopes))
    reading = read(wanted, [period], now)
    return {scope: reading.forecast(scope, period) for scope in wanted}


def everything(model_name: str = "") -> Scope:
    return Scope("model", model_name) if model_name else Scope("all")


# Reading the history by days.
#
# The forecasts read 9 weeks of hourly costs (~25,000 hourly roll-up rows at 1,000,000 calls: 50
# ms of PostgreSQL alone). Most of those hours are read whole days at a time with one weight (a
# scenario reads each hour of a day once, or none of it), and then only the day's total matters.
# So a day read that way is read from the daily roll-ups, its total placed on its first hour; only
# the days some sum reads in part (today, the same weekday in the weeks before, the hour of a
# scenario's oldest reading, which decides whether it has history) are read by hour. The sums,
# the spend of each period (whole days too) and the first hour with calls stay exact.


def _history_costs(
    wanted: set[Scope],
    bounds: dict[str, tuple[datetime, datetime]],
    now: datetime,
    first: datetime,
    last: datetime,
    recent: metrics.RecentRows | None = None,
) -> ScopeCosts:
    """costs(wanted, first, last, by_hour=True), but with the days the forecasts of `bounds` read
    whole summed on their first hour, for the scopes the roll-ups answer (see above)."""
    rolled = {scope for scope in wanted if scope.kind in ("all", "model")}
    # The days read by hour, found once for every scope's reading (~1 ms each), when one needs them.
    detail = functools.cache(lambda: detail_days(bounds, now, timezone.get_current_timezone()))
    found = _day_placed_costs(rolled, detail, first, last, recent) if rolled else {}
    if found is None:
        return costs(wanted, first, last, by_hour=True)
    for scope in wanted:
        units = None
        if scope.kind == "tag":
            units = _day_placed_tag_costs(scope, detail, first, last)
        elif scope.kind == "user" and scope.value:
            units = _day_placed_user_costs(scope.value, detail, first, last, recent)
        if units is not None:
            found[scope] = units
    rest = wanted - set(found)
    return found | costs(rest, first, last, by_hour=True) if rest else found


def detail_days(bounds: dict[str, tuple[datetime, datetime]], now: datetime, zone: Any) -> set[date]:
    """The local dates some forecast of `bounds` reads in part, or with weights that differ from
    hour to hour, and those of each scenario's oldest hour: the days read by hour."""
    scenarios = [terms for start, end in bounds.values() for terms in _all_terms(start, end, now, HISTORY_WEEKS)]
    sums = [found for terms in scenarios for found in terms.sums()]
    oldest = [terms.oldest for terms in scenarios]
    moments = [*oldest, *(float(hours.min()) for hours, _ in sums if len(hours))]
    moments += [float(hours.max()) for hours, _ in sums if len(hours)]
    first = datetime.fromtimestamp(min(moments), zone).date() - timedelta(days=1)
    days = [
        first + timedelta(days=index)
        for index in range((datetime.fromtimestamp(max(moments), zone).date() - first).days + 3)
    ]
    starts = np.array([rollup_math.day_start(day, zone).timestamp() for day in days])
    wanted = {days[int(index)] for index in np.searchsorted(starts, oldest, side="right") - 1}
    for found in sums:
        wanted |= {days[int(index)] for index in _uneven_days(found, starts)}
    return wanted


def _uneven_days(terms: Terms, starts: np.ndarray) -> np.ndarray:
    """The positions in `starts` (local day starts, epoch seconds) of the days whose hours `terms`
    does not read all with one weight (an hour read twice weighs the sum)."""
    if not len(terms[0]):
        return np.empty(0, dtype=int)
    hours, inverse = np.unique(terms[0], return_inverse=True)
    weights = np.bincount(inverse, weights=terms[1])
    day = np.searchsorted(starts, hours, side="right") - 1
    count = np.bincount(day, minlength=len(starts) - 1)[: len(starts) - 1]
    lowest = np.full(len(starts) - 1, np.inf)
    highest = np.full(len(starts) - 1, -np.inf)
    np.minimum.at(lowest, day, weights)
    np.maximum.at(highest, day, weights)
    hours_in_day = np.round(np.diff(starts) / HOUR_S)
    return np.flatnonzero((count > 0) & ((count != hours_in_day) | (lowest != highest)))


# The local days some forecast reads by hour (detail_days), computed when first asked.
DetailDays = Callable[[], set[date]]


def _day_placed_costs(
    rolled: set[Scope],
    detail: DetailDays,
    first: datetime,
    last: datetime,
    recent: metrics.RecentRows | None = None,
) -> ScopeCosts | None:
    """The `all` and `model` scopes' hourly costs over [first, last), days placed (see above);
    None when the daily roll-ups do not answer (then every hour is read)."""
    # No queryset of the window's rows: the plan's readings below never use the Selection's `logs`.
    state = recent.state if recent is not None else None
    chosen = metrics.Selection(LLMRequestLog.objects.none(), first, last, rollups_apply=True)
    per_model = any(scope.kind == "model" for scope in rolled)
    units = _day_placed_units(metrics.plan(chosen, "day", state=state), detail, per_model, recent)
    if units is None:
        return None
    found: ScopeCosts = {scope: defaultdict(int) for scope in rolled}
    every = [found[scope] for scope in rolled if scope.kind == "all"]
    of_model: dict[str, list[dict]] = defaultdict(list)
    for scope in rolled:
        if scope.kind == "model":
            of_model[scope.value].append(found[scope])
    for (hour, model_name), cost in units.items():
        for hourly in (*every, *of_model.get(model_name, ())):
            hourly[hour] += cost
    return found


def _day_placed_tag_costs(
    scope: Scope, detail: DetailDays, first: datetime, last: datetime
) -> dict[datetime | None, int] | None:
    """A tag scope's hourly costs over [first, last), days placed, from the breakdown roll-ups
    (llm/rollups.py) when they hold its key (ROLLUP_TAG_KEYS) in full over the history; None
    otherwise (then its calls are read: 9 weeks of calls, no index, 0.23 s at 1,000,000 calls). A
    roll-up's group is the tag's value, "" for calls without it: an empty value is read raw."""
    key, _, value = scope.value.partition(":")
    if not value:
        return None
    chosen = metrics.Selection(
        LLMRequestLog.objects.none(), first, last, narrowed_to=(f"{metrics.TAG_BREAKDOWN_PREFIX}{key}", value)
    )
    units = _day_placed_units(metrics.breakdown_plan(chosen, period="day"), detail, False, None)
    return None if units is None else _all_models(units)


def _day_placed_user_costs(
    user: str,
    detail: DetailDays,
    first: datetime,
    last: datetime,
    recent: metrics.RecentRows | None,
) -> dict[datetime | None, int] | None:
    """A user scope's hourly costs over [first, last), days placed, from the user totals
    (DailyUserTotals by local day, HourlyUserTotals by UTC hour: the same plan as all calls'), the
    raw edges and the calls above the watermark of that user; None when the roll-ups do not answer
    (then its calls are read: 9 weeks of a busy user's calls are tens of thousands of index rows)."""
    state = recent.state if recent is not None else None
    chosen = metrics.Selection(LLMRequestLog.objects.none(), first, last, rollups_apply=True)
    units = _day_placed_units(metrics.plan(chosen, "day", state=state), detail, False, None, user)
    return None if units is None else _all_models(units)


def _all_models(units: ModelCosts) -> dict[datetime | None, int]:
    """Costs by (hour, model) summed over the models: by hour."""
    found: dict[datetime | None, int] = defaultdict(int)
    for (hour, _model_name), cost in units.items():
        found[hour] += cost
    return found


def _day_placed_units(
    the_plan: metrics.Plan | None,
    detail: DetailDays,
    per_model: bool,
    recent: metrics.RecentRows | None,
    user: str = "",
) -> ModelCosts | None:
    """_day_placed_at at a watermark that holds still; None when the daily roll-ups do not answer."""
    if the_plan is None or not the_plan.split.days:
        return None
    zone = the_plan.zone
    day_starts = [rollup_math.day_start(day, zone) for day in the_plan.split.days]
    if not rollup_math.whole_hour_offsets(zone, *day_starts):
        return None  # a local day that does not start on a UTC hour: its first hour is no hour
    days = detail()
    return metrics.consistent(
        lambda watermark: _day_placed_at(the_plan, watermark, days, per_model, recent, user), the_plan
    )


def _day_placed_at(
    the_plan: metrics.Plan,
    watermark: int,
    detail: set[date],
    per_model: bool,
    recent: metrics.RecentRows | None = None,
    user: str = "",
) -> ModelCosts:
    """{(UTC hour, model or EVERY_MODEL): cost units}: whole days not in `detail` from the daily
    roll-ups on their first hour, the others' hours and the window's edge hours from the hourly
    roll-ups, the calls of the raw edges and above the watermark by hour (those above it from
    `recent` when it was read at this watermark and answers). `user`: that user's calls only (the
    user totals; never per model)."""
    zone = the_plan.zone
    answer: ModelCosts = defaultdict(int)
    detail_spans = [
        (rollup_math.day_start(day, zone), rollup_math.day_start(day + timedelta(days=1), zone))
        for day in the_plan.split.days
        if day in detail
    ]
    for day, model_name, units in _daily_costs(the_plan, detail, per_model, user):
        answer[(rollup_math.day_start(day, zone), model_name)] += units
    spans = [*the_plan.split.hours, *detail_spans]
    for hour, model_name, units in _hourly_costs(the_plan, spans, per_model, user):
        answer[(hour, model_name)] += units
    for found in _raw_costs(the_plan, watermark, None if user else recent, user):
        for (hour, model_name), units in found.items():
            answer[(hour, model_name if per_model else EVERY_MODEL)] += units
    return answer


# The two readings of _day_placed_at, in plain SQL (llm/plain_sql.py): a plan of all calls (no model
# or status filter) reads DailyLatency and HourlyLatency (metrics.period_model_tables); a plan of
# one breakdown group (a tag's value) the breakdown roll-ups' rows of that group; a user's, the
# user totals' rows of that user.


def _tables_of(the_plan: metrics.Plan, user: str = "") -> tuple[str, str, str, list[str]]:
    """(daily table, hourly table, the group's condition, its parameters) the plan reads."""
    if user:
        return plain_sql.table(DailyUserTotals), plain_sql.table(HourlyUserTotals), " AND user_id = %s", [user]
    if the_plan.breakdown:
        daily, hourly = the_plan.tables()
        return (
            plain_sql.table(daily),
            plain_sql.table(hourly),
            f" AND {plain_sql.quoted('by')} = %s AND {plain_sql.quoted('key')} = %s",
            [
                the_plan.breakdown,
                the_plan.group,
            ],
        )
    return plain_sql.table(DailyLatency), plain_sql.table(HourlyLatency), "", []


def _daily_costs(
    the_plan: metrics.Plan, detail: set[date], per_model: bool, user: str = ""
) -> list[tuple[date, str, int]]:
    """(local day, model or EVERY_MODEL, cost units) of the plan's days not in `detail`. The range
    of days is read and the few detail days (read by hour) dropped here: a range is one index scan."""
    days = the_plan.split.days
    if not days or all(day in detail for day in days):
        return []
    model, group = ("model_name", ", model_name") if per_model else ("''", "")
    daily, _hourly, of_group, group_params = _tables_of(the_plan, user)
    sql = (
        f"SELECT day, {model}, SUM(cost_units) FROM {daily}"  # noqa: S608 - our own names
        f" WHERE day >= %s AND day <= %s{of_group} GROUP BY day{group}"
    )
    rows = plain_sql.fetch(sql, [plain_sql.day_value(days[0]), plain_sql.day_value(days[-1]), *group_params])
    found = [(plain_sql.as_date(day), model_name, int(units or 0)) for day, model_name, units in rows]
    return [row for row in found if row[0] not in detail]


def _hourly_costs(
    the_plan: metrics.Plan, spans: list[tuple[datetime, datetime]], per_model: bool, user: str = ""
) -> list[tuple[datetime, str, int]]:
    """(UTC hour, model or EVERY_MODEL, cost units) of the plan's hours within `spans`."""
    if not spans:
        return []
    model, group = ("model_name", ", model_name") if per_model else ("''", "")
    _daily, hourly, of_group, group_params = _tables_of(the_plan, user)
    condition, params = plain_sql.within("hour", spans)
    sql = (
        f"SELECT {plain_sql.epoch_seconds('hour')}, {model}, SUM(cost_units)"  # noqa: S608 - our own names
        f" FROM {hourly} WHERE {condition}{of_group} GROUP BY 1{group}"
    )
    rows = plain_sql.fetch(sql, [*params, *group_params])
    return [(metrics.hour_at(hour), model_name, int(units or 0)) for hour, model_name, units in rows]


def _raw_costs(
    the_plan: metrics.Plan, watermark: int, recent: metrics.RecentRows | None, user: str = ""
) -> list[dict[tuple[datetime | None, str], int]]:
    """The cost per (UTC hour, model) of the calls the roll-ups do not hold: the raw edges', and
    those above the watermark within the plan's rolled-up spans, from `recent` when it answers
    (read at this watermark, and no hour with calls only partly within the spans)."""
    summed = None
    if recent is not None and recent.watermark == watermark:
        summed = recent.costs(the_plan.split.rolled_up_spans(the_plan.zone))
    # Nothing left to read when `recent` answers and no edge is raw: no querysets built then.
    parts = [] if summed is not None and not the_plan.split.raw else the_plan.raw_rows(watermark)
    if summed is not None and parts:
        parts = parts[:-1]  # the last part is the rows above the watermark (Plan.raw_rows)
    if user:
        parts = [rows.filter(user_id=user) for rows in parts]
    read = [_grouped_costs(rows.annotate(group_value=F("model_name")), True) for rows in parts]
    return [summed or {}, *read]
